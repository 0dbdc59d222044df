"""register_node over real DDS fed malformed sensor_msgs/Image fields (issue 15, point 1, live part).

Each malformed message must be counted in /diagnostics (`lwir.bad_messages`), the whole burst must be
logged once per throttle period (the throttle is longer than the test here: exactly one line), and the
next good set must be processed. Padded rows and big-endian mono16 are valid and must register exactly
like the packed little-endian message of the same pixels.
"""

from __future__ import annotations

import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytestmark = pytest.mark.ros

from nmr.ros.testing import (  # noqa: E402 - after the importorskip
    INPUT_TOPICS,
    RosHarness,
    diagnostic_values,
    end_node_fixture,
    make_frames,
    make_tiny_model,
    ros_env,
    start_node,
)

NS = '/nmr_malformed'
SECOND = 1_000_000_000
BASE_NS = 1_710_000_000 * SECOND
LWIR_OFFSET_NS = 1_000_000
THROTTLE_S = 600.0
UINT32_MAX = 2**32 - 1


def _lwir_msg(stamp_ns: int, **fields: Any) -> Any:
    """An rclpy Image on the LWIR topic: a valid 40x48 mono16 frame with `fields` overriding it."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from nmr.ros.convert import time_from_ns

    lwir = make_frames(0).lwir
    values: dict[str, Any] = {'height': lwir.shape[0], 'width': lwir.shape[1], 'encoding': 'mono16',
                              'is_bigendian': 0, 'step': lwir.shape[1] * 2, 'data': lwir.tobytes()}
    values.update(fields)
    data = array.array('B')
    data.frombytes(values.pop('data'))
    return Image(header=Header(stamp=time_from_ns(stamp_ns), frame_id='flir_boson'), data=data, **values)


def _padded_big_endian(lwir: np.ndarray, pad: int) -> dict[str, Any]:
    rows = lwir.astype('>u2').view(np.uint8).reshape(lwir.shape[0], -1)
    data = np.concatenate([rows, np.full((lwir.shape[0], pad), 0xEE, np.uint8)], axis=1)
    return {'is_bigendian': 1, 'step': data.shape[1], 'data': data.tobytes()}


MALFORMED: dict[str, dict[str, Any]] = {
    'step shorter than a row': {'step': 95},
    'data shorter than step*height': {'data': bytes(40 * 96 - 1)},
    'data longer than step*height': {'data': bytes(40 * 96 + 7)},
    'gigabyte claim': {'height': 100_000, 'width': 100_000, 'step': 200_000},
    'wrapped-around sizes': {'height': UINT32_MAX, 'width': UINT32_MAX, 'step': UINT32_MAX},
    'zero size': {'height': 0, 'width': 0, 'step': 0, 'data': b''},
    'upper-case encoding': {'encoding': 'MONO16'},
    'whitespace in encoding': {'encoding': ' mono16'},
    # valid, but larger than the input's max_pixels (set to MAX_PIXELS below): refused before any use
    'over max_pixels': {'height': 80, 'width': 96, 'step': 192, 'data': bytes(80 * 192)},
}
MAX_PIXELS = 4096  # the valid frames are 40x48 = 1920 px


@pytest.fixture(scope='module')
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, RosHarness, Path]]:
    import rclpy

    if rclpy.ok():  # an earlier module's context may be in another DDS domain than the one chosen here
        rclpy.shutdown()
    ros_env()
    folder = tmp_path_factory.mktemp('malformed')
    model = make_tiny_model(folder / 'rgb_lwir.pt', 'rgb_lwir')
    log = folder / 'node.log'
    params = {'models.rgb_lwir': str(model), 'pairs': ['rgb_lwir'], 'backend': 'torch', 'device': 'cpu',
              'sync.slop_s': 0.005, 'log_throttle_s': THROTTLE_S, 'diagnostics_period_s': 0.2,
              'max_pixels.lwir': MAX_PIXELS}
    proc = start_node(params, log, extra_args=['-r', f'__ns:={NS}'])
    harness = RosHarness('nmr_malformed_harness')
    from diagnostic_msgs.msg import DiagnosticArray

    for topic in (INPUT_TOPICS['rgb'], INPUT_TOPICS['lwir']):
        harness.publisher(topic)
    harness.subscribe(['/diagnostics'], DiagnosticArray)
    harness.subscribe([f'{NS}/rgb_lwir/flow'])
    try:
        harness.wait_matched(30.0)
        yield proc, harness, log
    finally:
        end_node_fixture(proc, harness, log)


def _inputs(harness: RosHarness) -> dict[str, str]:
    for msg in reversed(harness.received('/diagnostics')):
        if msg.status and msg.status[0].name.startswith(f'{NS}/register_node:'):
            return diagnostic_values(msg).get('inputs', {})
    return {}


def _count(harness: RosHarness, key: str) -> int:
    return int(_inputs(harness).get(key, -1))


def _publish_counted(harness: RosHarness, msg: Any, before: int) -> None:
    """Publish until the node has received it (best effort may drop one); waits on its counter."""
    harness.resend_until(lambda: harness.pubs[INPUT_TOPICS['lwir']].publish(msg),
                         lambda: _count(harness, 'lwir.received') > before, 10.0, 'the node to receive it', 2.0)


def _flow_at(harness: RosHarness, stamp_ns: int) -> np.ndarray:
    from nmr.data.encodings import image_to_numpy

    def find() -> Any:
        for m in harness.received(f'{NS}/rgb_lwir/flow'):
            if m.header.stamp.sec * SECOND + m.header.stamp.nanosec == stamp_ns:
                return m
        return None

    return np.array(image_to_numpy(harness.wait(find, 30.0, f'flow at {stamp_ns}')))


def _publish_set(harness: RosHarness, stamp_ns: int, lwir_msg: Any) -> None:
    frames = make_frames(0)
    harness.publish_image(INPUT_TOPICS['rgb'], frames.rgb, 'rgb8', stamp_ns, 'camera_color_optical_frame')
    harness.pubs[INPUT_TOPICS['lwir']].publish(lwir_msg)


def test_malformed_images_are_counted_logged_once_and_the_next_set_is_processed(node: Any) -> None:
    proc, harness, log = node
    harness.wait(lambda: 'model' in log.read_text() and 'loaded' in log.read_text(), 60.0, 'the model')
    harness.wait(lambda: _count(harness, 'lwir.received') >= 0, 10.0, 'diagnostics')
    bad0 = _count(harness, 'lwir.bad_messages')
    for i, (case, fields) in enumerate(MALFORMED.items()):
        received = _count(harness, 'lwir.received')
        _publish_counted(harness, _lwir_msg(BASE_NS + i * SECOND, **fields), received)
        harness.wait(lambda i=i: _count(harness, 'lwir.bad_messages') == bad0 + i + 1, 5.0,
                     f'bad_messages to count {case!r}')
    lines = [line for line in log.read_text().splitlines() if 'bad messages so far' in line]
    assert len(lines) == 1, lines  # one line per throttle period (longer than this test), not per message
    assert INPUT_TOPICS['lwir'] in lines[0]

    # the next good sets are processed; padded big-endian rows register exactly like packed little-endian
    lwir = make_frames(0).lwir
    t_plain, t_padded = BASE_NS + 100 * SECOND, BASE_NS + 101 * SECOND
    _publish_set(harness, t_plain, _lwir_msg(t_plain + LWIR_OFFSET_NS))
    plain = _flow_at(harness, t_plain + LWIR_OFFSET_NS)
    _publish_set(harness, t_padded, _lwir_msg(t_padded + LWIR_OFFSET_NS, **_padded_big_endian(lwir, 6)))
    padded = _flow_at(harness, t_padded + LWIR_OFFSET_NS)
    np.testing.assert_array_equal(padded, plain)
    assert _count(harness, 'lwir.bad_messages') == bad0 + len(MALFORMED)
    assert proc.poll() is None
