"""register_node's workers (issue 21): one thread per pair, newest set wins, clean shutdown while busy.

In process: a stand-in registrar that blocks until released shows what happens to sets that arrive while
the worker is busy. As a process: SIGINT while a slow set is being registered ends with 0, no traceback.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytestmark = pytest.mark.ros

from nmr.ros.testing import (  # noqa: E402 - after the importorskip
    FULL_SIZE,
    INPUT_TOPICS,
    RosHarness,
    in_process_node,
    make_frames,
    make_tiny_model,
    ros_env,
    start_node,
    stop_node,
)

SECOND = 1_000_000_000
BASE_NS = 1_700_000_000 * SECOND


class BlockingRegistrar:
    """Registers with a constant flow, but only when released: the worker is busy until then."""

    pair = 'rgb_lwir'
    backend = 'blocking'
    device = 'cpu'

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fixed_sums: list[int] = []

    def register(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str) -> Any:
        from nmr import flow as nmr_flow
        from nmr.inference.protocol import Registration

        self.fixed_sums.append(int(fixed_raw.sum()))
        self.entered.release()
        assert self.release.acquire(timeout=20.0), 'never released'
        flow = np.zeros((*fixed_raw.shape, 2), np.float32)
        registered, valid = nmr_flow.warp(moving_rgb, flow)
        return Registration(flow=flow, registered=registered, valid=valid)

    def describe(self) -> str:
        return 'blocking'


def _offer(node: Any, index: int) -> None:
    """One RGB + LWIR set through the node's own callback (as the executor would deliver it)."""
    from std_msgs.msg import Header

    from nmr.ros.convert import time_from_ns, to_image_msg

    frames = make_frames(index)
    stamp = BASE_NS + index * SECOND // 10
    node._on_image('rgb', to_image_msg(frames.rgb, 'rgb8', Header(stamp=time_from_ns(stamp), frame_id='c')))
    node._on_image('lwir', to_image_msg(frames.lwir, 'mono16',
                                        Header(stamp=time_from_ns(stamp + 1_000_000), frame_id='t')))


def test_a_set_arriving_while_the_worker_is_busy_replaces_the_waiting_one(tmp_path: Path) -> None:
    from nmr.pipeline.outputs import PairProcessor

    with in_process_node(tmp_path, pairs=['rgb_lwir'], model_retry_s=1000.0, **{'sync.slop_s': 0.005}) as node:
        registrar = BlockingRegistrar()
        pair = node.pairs['rgb_lwir']
        pair.processor = PairProcessor(registrar, 'rgb_lwir')
        node._wanted = lambda _pair: (['flow'], False)  # as if `flow` had a subscriber
        node.start_workers()
        try:
            _offer(node, 1)
            assert registrar.entered.acquire(timeout=20.0)  # the worker is busy with set 1
            _offer(node, 2)  # waits
            _offer(node, 3)  # replaces set 2, which is dropped as stale
            assert pair.stats.stale_dropped == 1 and node.core.counts('rgb_lwir').stale == 1
            registrar.release.release()
            assert registrar.entered.acquire(timeout=20.0)  # the worker took the newest set
            registrar.release.release()
            deadline = time.monotonic() + 20.0
            while node.core.counts('rgb_lwir').registered < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            registrar.release.release()
            node.stop()
        expected = [int(make_frames(i).lwir.sum()) for i in (1, 3)]
        assert registrar.fixed_sums == expected, 'set 1, then set 3; set 2 was never registered'
        assert node.core.counts('rgb_lwir').registered == 2 and pair.stats.stale_dropped == 1
        assert not node.core.has_pending()


def test_both_pairs_are_registered_at_the_same_time(tmp_path: Path) -> None:
    """One worker per pair: while rgb_lwir's worker is blocked, rgb_depth's registers."""
    from nmr.pipeline.outputs import PairProcessor

    with in_process_node(tmp_path, model_retry_s=1000.0, **{'sync.slop_s': 0.005}) as node:
        blocking = {p: BlockingRegistrar() for p in node.pairs}
        for name, pair in node.pairs.items():
            blocking[name].pair = name
            pair.processor = PairProcessor(blocking[name], name)
        node._wanted = lambda _pair: (['flow'], False)
        node.start_workers()
        try:
            from std_msgs.msg import Header

            from nmr.ros.convert import time_from_ns, to_image_msg

            frames = make_frames(0)
            for stream, arr, enc in (('rgb', frames.rgb, 'rgb8'), ('lwir', frames.lwir, 'mono16'),
                                     ('depth', frames.depth, '16UC1')):
                node._on_image(stream, to_image_msg(arr, enc, Header(stamp=time_from_ns(BASE_NS), frame_id=stream)))
            # both registrars are entered before either is released: the pairs run concurrently
            assert all(b.entered.acquire(timeout=20.0) for b in blocking.values())
        finally:
            for b in blocking.values():
                b.release.release()
            node.stop()


def test_shutdown_while_the_worker_is_busy_exits_0_without_traceback(tmp_path: Path) -> None:
    """SIGINT while full-size sets are being registered by a slow network: exit 0, no traceback."""
    import rclpy

    rclpy.try_shutdown()  # a context an earlier module left behind would keep its own DDS domain
    ros_env()
    model = make_tiny_model(tmp_path / 'lwir.pt', 'rgb_lwir')
    log = tmp_path / 'node.log'
    # a tiny network at 1024x1280: each set takes a long time, so the worker is busy when the signal comes
    params = {'models.rgb_lwir': str(model), 'pairs': ['rgb_lwir'], 'backend': 'torch', 'device': 'cpu',
              'net_height': 1024, 'net_width': 1280, 'sync.slop_s': 0.005, 'outputs': ['flow']}
    proc = start_node(params, log)
    harness = RosHarness('nmr_test_busy_shutdown')
    try:
        harness.publisher(INPUT_TOPICS['rgb'])
        harness.publisher(INPUT_TOPICS['lwir'])
        harness.subscribe(['/rgb_lwir/flow'])
        harness.wait_matched(30.0)
        rng = np.random.default_rng(0)
        frames = make_frames(0, FULL_SIZE['rgb'][0][:2], FULL_SIZE['lwir'][0], (8, 8))
        frames.rgb[:] = rng.integers(0, 255, frames.rgb.shape, dtype=np.uint8)
        i = 0

        def publish() -> None:
            nonlocal i
            harness.publish_set(frames, BASE_NS + i * SECOND // 10, streams=('rgb', 'lwir'))
            i += 1

        deadline = time.monotonic() + 60.0
        while not harness.received('/rgb_lwir/flow') and time.monotonic() < deadline:
            publish()
            harness.spin(0.1)
        assert harness.received('/rgb_lwir/flow'), log.read_text()[-2000:]
        publish()  # the next set: the worker is registering it when the signal arrives
        harness.spin(0.05)
    finally:
        harness.close()
        rclpy.try_shutdown()
        code = stop_node(proc, timeout_s=30.0)
    text = log.read_text()
    assert code == 0 and 'Traceback' not in text, text[-3000:]
