"""register_node as a separate process over real DDS: outputs, equality with offline, drops, robustness.

One node runs for the main module fixture (both pairs, tiny random models, torch on CPU); a second one
checks model-file recovery; parameter validation starts the executable and expects a one-line refusal.
"""

from __future__ import annotations

import re
import subprocess
import sys
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
    in_process_node,
    make_frames,
    make_tiny_model,
    ros_env,
    start_node,
    stop_node,
)

PAIR_OUTPUTS = ('registered', 'flow', 'flow_viz', 'overlay')
FUSED = ('fused/rgb', 'fused/lwir', 'fused/depth')
NS = '/nmr_test'
SECOND = 1_000_000_000
BASE_NS = 1_700_000_000 * SECOND


def _node_params(models: dict[str, Path], **extra: Any) -> dict[str, Any]:
    params = {'models.rgb_lwir': str(models['rgb_lwir']), 'models.rgb_depth': str(models['rgb_depth']),
              'backend': 'torch', 'device': 'cpu', 'sync.slop_s': 0.005, 'input_timeout_s': 1.0,
              'model_retry_s': 0.5, 'log_throttle_s': 0.2, 'diagnostics_period_s': 0.25}
    params.update(extra)
    return params


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ros_env()
    folder = tmp_path_factory.mktemp('models')
    pairs = ('rgb_lwir', 'rgb_depth')
    return {p: make_tiny_model(folder / f'{p}.pt', p, seed=i) for i, p in enumerate(pairs)}


def _running_node(models: dict[str, Path], folder: Path, name: str) -> Any:
    log = folder / 'node.log'
    proc = start_node(_node_params(models), log, extra_args=['-r', f'__ns:={NS}'])
    harness = RosHarness(name)
    for topic in INPUT_TOPICS.values():
        harness.publisher(topic)
    from diagnostic_msgs.msg import DiagnosticArray

    harness.subscribe(['/diagnostics'], DiagnosticArray)
    try:
        harness.wait_matched(30.0)
        yield proc, harness, log
    finally:
        harness.close()
        code = stop_node(proc)
        text = log.read_text()
        assert 'Traceback' not in text, text[-3000:]
        assert code == 0, text[-2000:]


@pytest.fixture(scope='module')
def live(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The node for the output / lazy / drop tests."""
    yield from _running_node(models, tmp_path_factory.mktemp('node'), 'nmr_test_node')


def _diag(harness: RosHarness, node: str = f'{NS}/register_node') -> dict[str, dict[str, str]]:
    """The newest diagnostics of `node` (other nodes may publish on /diagnostics too)."""
    for msg in reversed(harness.received('/diagnostics')):
        if msg.status and msg.status[0].name.startswith(node + ':'):
            return diagnostic_values(msg)
    return {}


def _wait(harness: RosHarness, predicate: Any, timeout_s: float, what: str) -> Any:
    """`harness.wait`, with the node's newest diagnostics in the failure message (what it received,
    synchronised, processed, dropped), so that a timeout says where the frames went."""
    try:
        return harness.wait(predicate, timeout_s, what)
    except AssertionError as err:
        diag = _diag(harness)
        counters = {f'{part}.{k}': v for part, values in diag.items() for k, v in values.items()
                    if k.endswith(('received', 'backwards', 'bad_messages', '_sets', 'dropped', 'skipped',
                                   'errors'))}
        raise AssertionError(f'{err}; node diagnostics: {counters}') from None


def _publish_paced(harness: RosHarness, indices: range, wait_topic: str | None = None,
                   **kw: Any) -> list[int]:
    """Publish sets one by one; with `wait_topic`, wait for that output of each set before the next."""
    stamps = []
    for i in indices:
        stamp = BASE_NS + i * SECOND // 10
        harness.publish_set(make_frames(i), stamp, **kw)
        stamps.append(stamp)
        if wait_topic:
            fixed_stamp = stamp + (1_000_000 if 'rgb_lwir' in wait_topic else -1_000_000)
            _wait(harness, lambda s=fixed_stamp: any(_stamp(m) == s for m in harness.received(wait_topic)),
                  20.0, f'{wait_topic} for set {i}')
    return stamps


def _stamp(msg: Any) -> int:
    return msg.header.stamp.sec * SECOND + msg.header.stamp.nanosec


def _array(msg: Any) -> np.ndarray:
    from nmr.data.encodings import image_to_numpy

    return image_to_numpy(msg)


def test_lazy_pairs_are_not_computed_without_subscribers(live: Any) -> None:
    _proc, harness, log = live
    harness.wait(lambda: len(re.findall(r'model .* loaded', log.read_text())) == 2, 60.0,
                 'both models to load')
    _publish_paced(harness, range(0, 4))
    diag = harness.wait(lambda: (d := _diag(harness)) and int(d['rgb_depth'].get('lazy_skipped', 0)) >= 1
                        and int(d['rgb_lwir'].get('lazy_skipped', 0)) >= 1
                        and int(d['rgb_lwir']['synced_sets']) >= 4 and d, 10.0, 'lazy_skipped in diagnostics')
    assert diag['rgb_lwir']['processed_sets'] == '0' and diag['rgb_depth']['processed_sets'] == '0'
    assert all(status['hardware_id'] == f'{NS}/register_node' for status in diag.values())


def test_bad_inputs_are_logged_and_the_node_recovers(live: Any) -> None:
    proc, harness, log = live
    harness.subscribe([f'{NS}/rgb_lwir/flow', f'{NS}/rgb_depth/flow'])
    harness.wait_matched(20.0)
    t0 = BASE_NS + 300 * SECOND
    good = make_frames(1)
    lwir, depth, rgb = INPUT_TOPICS['lwir'], INPUT_TOPICS['depth'], INPUT_TOPICS['rgb']
    harness.publish_image(lwir, good.rgb, 'bgr8', t0, 'flir_boson')                     # wrong encoding
    harness.publish_image(depth, np.zeros((0, 0), np.uint16), '16UC1', t0, 'depth')      # empty image
    bad_depth = good.depth.astype(np.float32) / 1000
    bad_depth[5:10] = np.nan
    bad_depth[10:12] = np.inf
    harness.publish_image(rgb, good.rgb, 'rgb8', t0 + SECOND, 'camera_color_optical_frame')
    harness.publish_image(depth, bad_depth, '32FC1', t0 + SECOND, 'camera_depth_optical_frame')  # NaN/inf
    big = make_frames(2, rgb_hw=(56, 72))
    harness.publish_set(big, t0 + 2 * SECOND)                                             # size change
    harness.publish_set(good, t0 - 100 * SECOND)                                          # stamps backwards
    words = ("'bgr8'", 'empty', 'size changed', 'went backwards')
    harness.wait(lambda: all(w in log.read_text() for w in words), 10.0, 'log lines for each bad input')
    harness.clear()
    stamps = _publish_paced(harness, range(400, 403), wait_topic=f'{NS}/rgb_lwir/flow')
    assert proc.poll() is None
    nan_stamp = t0 + SECOND - 1_000_000
    assert all(np.isfinite(_array(m)).all() for m in harness.received(f'{NS}/rgb_depth/flow')
               if _stamp(m) == nan_stamp)
    assert len(stamps) == 3
    diag = harness.wait(lambda: _diag(harness), 5.0, 'diagnostics')
    assert int(diag['inputs']['lwir.bad_messages']) >= 1
    assert all(int(diag['inputs'][f'{s}.stamps_backwards']) >= 1 for s in ('rgb', 'lwir', 'depth')), diag['inputs']


def test_a_stopped_modality_leaves_the_other_pair_running(live: Any) -> None:
    proc, harness, log = live
    harness.subscribe([f'{NS}/rgb_lwir/flow'])
    harness.wait_matched(20.0)
    harness.clear()
    _publish_paced(harness, range(500, 512), wait_topic=f'{NS}/rgb_lwir/flow', streams=('rgb', 'lwir'))
    diag = harness.wait(lambda: (d := _diag(harness)) and 'no depth messages' in d['rgb_depth']['message']
                        and d, 10.0, 'rgb_depth waiting in diagnostics')
    assert 'depth' in diag['inputs']['message'] and diag['rgb_depth']['level'] == '1'
    assert 'no depth messages' in log.read_text()
    assert proc.poll() is None


def test_every_output_arrives_on_the_fixed_grid_and_equals_the_offline_result(
        live: Any, models: dict[str, Path]) -> None:
    _proc, harness, _log = live
    topics = [f'{NS}/{p}/{o}' for p in ('rgb_lwir', 'rgb_depth') for o in PAIR_OUTPUTS]
    topics += [f'{NS}/{t}' for t in FUSED]
    harness.subscribe(topics)
    harness.wait_matched(20.0)
    stamps = _publish_paced(harness, range(10, 14), wait_topic=f'{NS}/rgb_depth/flow')
    frames = make_frames(13)
    expect = {'rgb_lwir': (frames.lwir.shape, stamps[-1] + 1_000_000, 'flir_boson'),
              'rgb_depth': (frames.depth.shape, stamps[-1] - 1_000_000, 'camera_depth_optical_frame')}
    last = {t: expect['rgb_depth' if 'rgb_depth' in t else 'rgb_lwir'][1] for t in topics}
    harness.wait(lambda: all(any(_stamp(m) == last[t] for m in harness.received(t)) for t in topics), 20.0,
                 'every output topic for the last set')
    encodings = {'registered': 'rgb8', 'flow': '32FC2', 'flow_viz': 'rgb8', 'overlay': 'rgb8'}
    from nmr.pipeline.settings import create_registrar, validate

    settings = validate({'backend': 'torch', 'device': 'cpu'})
    for pair, (hw, stamp, frame_id) in expect.items():
        for out, enc in encodings.items():
            msgs = [m for m in harness.received(f'{NS}/{pair}/{out}') if _stamp(m) == stamp]
            assert msgs, f'{pair}/{out} for the last set'
            m = msgs[-1]
            assert (m.encoding, m.height, m.width, m.header.frame_id) == (enc, hw[0], hw[1], frame_id)
        live_flow = _array([m for m in harness.received(f'{NS}/{pair}/flow') if _stamp(m) == stamp][-1])
        registrar = create_registrar(models[pair], settings, pair, log=lambda _t: None)  # the node's (tiles for depth)
        fixed = frames.lwir if pair == 'rgb_lwir' else frames.depth
        offline = registrar.register(frames.rgb, fixed, 'mono16' if pair == 'rgb_lwir' else '16UC1')
        assert np.abs(offline.flow).max() > 0.1  # the random model moves pixels
        np.testing.assert_allclose(live_flow, offline.flow, atol=1e-4)
        registered = _array([m for m in harness.received(f'{NS}/{pair}/registered')
                             if _stamp(m) == stamp][-1])
        assert np.abs(registered.astype(int) - offline.registered.astype(int)).max() <= 1
    for topic, enc in zip(FUSED, ('rgb8', 'mono16', '32FC1')):
        m = harness.received(f'{NS}/{topic}')[-1]
        assert m.encoding == enc and (m.height, m.width) == frames.lwir.shape
        assert m.header.frame_id == 'flir_boson' and _stamp(m) in {s + 1_000_000 for s in stamps}
    harness.unsubscribe(topics)


def test_drops_are_counted_when_input_outruns_inference(live: Any) -> None:
    _proc, harness, _log = live
    flow = f'{NS}/rgb_lwir/flow'
    harness.subscribe([flow])  # without a subscriber the pair is lazy: sets are skipped, never queued up
    harness.wait_matched(20.0)
    _publish_paced(harness, range(590, 591), wait_topic=flow)  # the node has seen the subscriber
    before = _diag(harness)['rgb_lwir']
    for i in range(600, 660):  # no pacing: 60 sets far faster than the node can register them
        harness.publish_set(make_frames(i % 4), BASE_NS + i * SECOND // 10)
        harness.spin()  # keep taking the node's (reliable) outputs meanwhile
    diag = _wait(harness, lambda: (d := _diag(harness))
                 and int(d['rgb_lwir']['stale_dropped']) > int(before['stale_dropped']) and d,
                 10.0, 'stale drops in diagnostics')
    assert int(diag['rgb_lwir']['processed_sets']) > int(before['processed_sets'])
    # the test's stamps are from 2023, not the node clock: no latency percentiles of years, a reason instead
    assert 'latency_ms.p50' not in diag['rgb_lwir']
    assert diag['rgb_lwir']['latency_ms'].startswith('n/a: header stamps are') and 'behind' in \
        diag['rgb_lwir']['latency_ms'] and 'use_sim_time' in diag['rgb_lwir']['latency_ms']
    assert diag['rgb_lwir']['backend'] == 'torch'


def test_model_files_that_appear_later_or_are_broken_are_reported_and_picked_up(
        models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / 'later.pt'
    log = tmp_path / 'node.log'
    proc = start_node(_node_params({'rgb_lwir': models['rgb_lwir'], 'rgb_depth': target},
                                   pairs=['rgb_depth'], outputs=['flow']), log)
    harness = RosHarness('nmr_test_recovery')
    try:
        harness.publisher(INPUT_TOPICS['rgb'])
        harness.publisher(INPUT_TOPICS['depth'])
        harness.subscribe(['/rgb_depth/flow'])
        harness.wait_matched(30.0)
        harness.wait(lambda: 'does not exist' in log.read_text(), 30.0, 'missing-model log line')
        target.write_bytes(b'not a checkpoint')
        harness.wait(lambda: re.search(r'rgb_depth: .*(corrupt|cannot|not an nmr)', log.read_text()), 30.0,
                 'corrupt-model log line')
        target.write_bytes(models['rgb_lwir'].read_bytes())  # wrong pair
        harness.wait(lambda: re.search(r"rgb_depth: .*pair '?rgb_lwir", log.read_text()), 30.0,
                     'wrong-pair log line')
        target.write_bytes(models['rgb_depth'].read_bytes())
        harness.wait(lambda: 'loaded' in log.read_text(), 60.0, 'the model to load once it is valid')
        for i in range(3):
            harness.publish_set(make_frames(i), BASE_NS + i * SECOND, streams=('rgb', 'depth'))
        harness.wait(lambda: harness.received('/rgb_depth/flow'), 30.0, 'rgb_depth/flow after recovery')
        assert proc.poll() is None
    finally:
        harness.close()
        code = stop_node(proc)
    text = log.read_text()
    assert code == 0 and 'Traceback' not in text, text[-3000:]


@pytest.mark.parametrize(('args', 'words'), [
    (['-p', 'backend:=cuda'], "'backend'"),
    (['-p', 'sync.slop_s:=fast'], "'sync.slop_s'"),
    (['-p', 'pairs:=[rgb_thermal]'], 'rgb_thermal'),
    (['-p', 'overlay_alpha:=2.0'], "'overlay_alpha'"),
    (['-p', 'sync.slopp_s:=0.1'], "'sync.slopp_s'"),
])
def test_invalid_parameters_refuse_to_start_with_one_line(args: list[str], words: str) -> None:
    ros_env()
    exe = Path(sys.executable).with_name('register_node')
    proc = subprocess.run([str(exe), '--ros-args', *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if 'error' in line]
    assert len(lines) == 1 and words in lines[0], proc.stderr


# -- in-process: the node's callback logic fed directly, in chosen arrival orders (no DDS timing) --------


@pytest.fixture
def quiet_node(tmp_path: Path) -> Iterator[Any]:
    """A RegisterNode in this process whose worker is stopped: completed sets stay in its core."""
    with in_process_node(tmp_path, **{'sync.slop_s': 0.005}) as node:
        yield node


def _interleavings(seqs: list[list[Any]]) -> list[list[Any]]:
    """Every merge of the lists that keeps each list's own order (each topic is delivered in order)."""
    if not any(seqs):
        return [[]]
    out = []
    for i, seq in enumerate(seqs):
        if seq:
            rest = [s[1:] if j == i else s for j, s in enumerate(seqs)]
            out += [[seq[0], *tail] for tail in _interleavings(rest)]
    return out


def test_a_time_jump_loses_no_set_whatever_order_the_topics_deliver_it(quiet_node: Any) -> None:
    """A bag loop reaches the node one topic after the other, in any interleaving (independent topics).

    Regression: every stream's jump used to reset every pair and forget all streams' last stamps, so the
    stream that jumped last wiped sets the others had already formed; in the DDS tests that looked like
    a node that stopped receiving (it had received everything, the sets were gone).
    """
    from std_msgs.msg import Header

    from nmr.pipeline.core import FrameSetCore
    from nmr.ros.convert import time_from_ns, to_image_msg

    node = quiet_node
    shapes = {'rgb': ((6, 8, 3), np.uint8, 'rgb8', 0), 'lwir': ((6, 8), np.uint16, 'mono16', 1_000_000),
              'depth': ((6, 8), np.uint16, '16UC1', -1_000_000)}
    messages = {}
    old, new, newer = BASE_NS + 302 * SECOND, BASE_NS + 200 * SECOND, BASE_NS + 40 * SECOND
    for stream, (shape, dtype, encoding, offset) in shapes.items():
        for t in (old, new, newer):
            header = Header(stamp=time_from_ns(t + offset), frame_id=stream)
            messages[stream, t] = to_image_msg(np.zeros(shape, dtype), encoding, header)
    streams = list(shapes)
    lost = []
    for first in _interleavings([[(s, old), (s, new)] for s in streams]):
        for second in _interleavings([[(s, newer)] for s in streams]):
            node.core = FrameSetCore(node.core.pairs, node.settings.sync_slop_ns, node.settings.sync_queue_size,
                                     keep='newest')
            formed: dict[str, set[int]] = {p: set() for p in node.pairs}
            for key in first + second:
                node._on_image(key[0], messages[key])
                for pset in node.core.take():
                    formed[pset.pair].add(pset.rgb.stamp_ns)
            # the set after the jump always forms; with no old frame arriving late, every set forms
            want = {old, new, newer} if [t for _s, t in first].index(new) == len(streams) else {newer}
            if not all(want <= f for f in formed.values()):
                lost.append(([(s, (t - BASE_NS) // SECOND) for s, t in first + second], formed))
    assert not lost, f'{len(lost)} arrival orders lose a set, e.g. {lost[0]}'


def test_warnings_and_errors_can_share_the_throttled_log_helper(quiet_node: Any) -> None:
    """rclpy refuses a log call site that changes severity (ValueError): that would kill a callback."""
    quiet_node._warn('first', 'an error', error=True)
    quiet_node._warn('second', 'a warning')
    quiet_node._warn('third', 'an error again', error=True)


def test_input_reliability_follows_the_publisher_by_default_and_best_effort_stays_selectable(
        quiet_node: Any) -> None:
    from rclpy.qos import ReliabilityPolicy

    from nmr.pipeline.settings import InputSettings
    from nmr.ros.qos import input_qos

    assert input_qos(InputSettings('/t')).reliability == ReliabilityPolicy.BEST_AVAILABLE
    assert input_qos(InputSettings('/t', 'best_effort')).reliability == ReliabilityPolicy.BEST_EFFORT
    assert input_qos(InputSettings('/t', 'reliable')).reliability == ReliabilityPolicy.RELIABLE
    assert quiet_node._sub_reliability == {'rgb': 'best_available', 'lwir': 'best_available',
                                           'depth': 'best_available'}
