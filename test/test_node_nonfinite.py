"""register_node over real DDS with a model whose flow overflows to NaN/inf (finite weights, so the model
file passes its checks): no set of that pair may be published, /diagnostics counts them and says why, the
log says it once per throttle period, and the node keeps running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

NS = '/nmr_nonfinite'
SECOND = 1_000_000_000
BASE_NS = 1_720_000_000 * SECOND
OUTPUTS = ('flow', 'registered', 'overlay', 'flow_viz')


def _overflowing_model(path: Path) -> Path:
    """A tiny model whose weights are finite but ~1e19: its activations overflow float32."""
    from nmr.models.checkpoint import load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(make_tiny_model(path.with_name('seed.pt'), 'rgb_lwir'))
    big = {k: v * 1e19 if v.is_floating_point() else v for k, v in state['registration'].items()}
    save_checkpoint(path, {'registration': big}, meta)
    return path


@pytest.fixture(scope='module')
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, RosHarness, Path]]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    if rclpy.ok():  # an earlier module's context may be in another DDS domain than the one chosen here
        rclpy.shutdown()
    ros_env()
    folder = tmp_path_factory.mktemp('nonfinite')
    model = _overflowing_model(folder / 'rgb_lwir.pt')
    log = folder / 'node.log'
    params = {'models.rgb_lwir': str(model), 'pairs': ['rgb_lwir'], 'backend': 'torch', 'device': 'cpu',
              'sync.slop_s': 0.005, 'log_throttle_s': 600.0, 'diagnostics_period_s': 0.2}
    proc = start_node(params, log, extra_args=['-r', f'__ns:={NS}'])
    harness = RosHarness('nmr_nonfinite_harness')
    for topic in (INPUT_TOPICS['rgb'], INPUT_TOPICS['lwir']):
        harness.publisher(topic)
    harness.subscribe(['/diagnostics'], DiagnosticArray)
    harness.subscribe([f'{NS}/rgb_lwir/{name}' for name in OUTPUTS])
    try:
        harness.wait_matched(30.0)
        yield proc, harness, log
    finally:
        end_node_fixture(proc, harness, log)


def _pair_values(harness: RosHarness) -> dict[str, str]:
    for msg in reversed(harness.received('/diagnostics')):
        values = diagnostic_values(msg)
        if 'rgb_lwir' in values and 'nonfinite_flows' in values['rgb_lwir']:
            return values['rgb_lwir']
    return {}


def test_non_finite_flows_are_never_published_counted_and_logged_once(node: Any) -> None:
    proc, harness, log = node
    harness.wait(lambda: 'loaded' in log.read_text(), 60.0, 'the model')
    frames = make_frames(0)
    for i in range(4):
        stamp = BASE_NS + i * SECOND
        harness.publish_image(INPUT_TOPICS['rgb'], frames.rgb, 'rgb8', stamp, 'camera_color_optical_frame')
        harness.publish_image(INPUT_TOPICS['lwir'], frames.lwir, 'mono16', stamp + 1_000_000, 'flir_boson')
        harness.wait(lambda i=i: int(_pair_values(harness).get('nonfinite_flows', -1)) >= i + 1, 30.0,
                     f'set {i} to be counted as non-finite')
    values = _pair_values(harness)
    assert int(values['processed_sets']) == 0, values
    assert 'non-finite' in values['message'], values
    assert int(values['level']) >= 1, values  # WARN (or worse), so rqt_runtime_monitor shows it
    for name in OUTPUTS:
        assert not harness.received(f'{NS}/rgb_lwir/{name}'), f'{name} was published from a non-finite flow'
    lines = [line for line in log.read_text().splitlines() if 'non-finite' in line or 'infinite' in line]
    assert len(lines) == 1, lines  # throttled: one line for the burst, naming what to check
    assert 'model' in lines[0]
    assert proc.poll() is None
