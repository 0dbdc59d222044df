"""Helpers for tests and benchmarks of the ROS side: tiny models, synthetic frames, DDS set-up, collectors.

Real rclpy over DDS between processes; everything waits on matched counts or received messages with a
deadline (`wait_for`), never on a bare sleep.

Why this test harness ships in the product package: the benchmarks (`benchmarks/soak.py`,
`benchmarks/node_latency.py`) drive an installed `register_node` with it, from a checkout or from an
installed package on the robot, where `test/` is not on the path. Nothing in the product imports it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmr.domain import DEFAULT_TOPICS
from nmr.resources import share_path

FASTDDS_PROFILE = share_path('config', 'fastdds_large_images.xml')
#: The harness publishes on the node's default input topics.
INPUT_TOPICS: dict[str, str] = DEFAULT_TOPICS
#: `nmr train --set` overrides for a seconds-long run on a tiny network (the robustness tests' trainer runs).
TINY_TRAIN: list[str] = [
    'model.registration={arch: fast, encoder_channels: [8, 16, 16], stem_channels: [8]}',
    'model.translation_ngf=8', 'model.translation_blocks=1', 'model.discriminator_ndf=8',
    'model.discriminator_layers=2', 'optim.epochs=1', 'optim.batch_size=1', 'data.net_hw=[32,48]',
    'data.workers=0', 'data.val_fraction=0', 'run.keep_every=0',
]


def ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Set (in os.environ, for this process and its children) a private DDS domain and the image profile."""
    domain = domain_id if domain_id is not None else random.randint(1, 232)
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ['ROS_LOCALHOST_ONLY'] = '1'
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(FASTDDS_PROFILE)
    os.environ['PYTHONUNBUFFERED'] = '1'
    return dict(os.environ)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """Poll `predicate` until truthy; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout_s} s waiting for {what}')
        time.sleep(poll_s)


def make_tiny_model(path: Path, pair: str, net_hw: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """A freshly initialised `fast` RegistrationNet at a tiny size, saved as an nmr checkpoint.

    Parameters are re-drawn from a seeded normal so that the flow is non-zero (a zero-initialised flow
    head would make "live flow equals offline flow" trivially true).
    """
    import torch

    from nmr.models.checkpoint import ModelMetadata, save_checkpoint
    from nmr.models.registration import RegistrationConfig, RegistrationNet

    torch.manual_seed(seed)
    config = RegistrationConfig(arch='fast', encoder_channels=[8, 8], output_blocks=0, stem_channels=[8])
    net = RegistrationNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    meta = ModelMetadata(pair=pair, registration=config.to_dict(), normalisation={}, net_hw=net_hw,
                         train_data={'note': 'random test model'})
    save_checkpoint(path, {'registration': net.state_dict()}, meta)
    return path


@dataclass
class FrameSet:
    """One synthetic rig capture: RGB (moving) and the two fixed images, at their own sizes."""

    rgb: np.ndarray      # HxWx3 uint8
    lwir: np.ndarray     # HxW uint16 (mono16)
    depth: np.ndarray    # HxW uint16 (16UC1, mm)


def make_frames(index: int, rgb_hw: tuple[int, int] = (48, 64), lwir_hw: tuple[int, int] = (40, 48),
                depth_hw: tuple[int, int] = (36, 48)) -> FrameSet:
    """Deterministic textured frames that change with `index` (so flows differ frame to frame)."""
    import cv2

    rng = np.random.default_rng(index)
    base = cv2.GaussianBlur(rng.random((64, 80), dtype=np.float32), (0, 0), 3)
    base = (base - base.min()) / max(float(np.ptp(base)), 1e-6)
    rgb = cv2.resize(base, rgb_hw[::-1])
    rgb = np.stack([rgb, 1 - rgb, rgb * rgb], -1)
    lwir = (cv2.resize(base, lwir_hw[::-1]) * 20000 + 10000).astype(np.uint16)
    depth = (cv2.resize(base, depth_hw[::-1]) * 8000 + 500).astype(np.uint16)
    depth[:2] = 0  # some pixels without depth
    return FrameSet((rgb * 255).astype(np.uint8), lwir, depth)


class RosHarness:
    """An rclpy node in the test process: publishers for the inputs, subscribers that store messages.

    Single-threaded on purpose: messages are taken while `wait` (or `spin`) runs in the caller's thread,
    so rclpy is never used from two threads at once.
    """

    def __init__(self, name: str = 'nmr_test_harness') -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(name)
        self.messages: dict[str, list[Any]] = defaultdict(list)
        self.lock = threading.Lock()
        self.pubs: dict[str, Any] = {}
        self.subs: dict[str, Any] = {}
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)

    def spin(self, duration_s: float = 0.0) -> None:
        """Handle incoming messages for `duration_s` (at least one pass)."""
        deadline = time.monotonic() + duration_s
        while True:
            self._executor.spin_once(timeout_sec=min(0.01, duration_s))
            if time.monotonic() >= deadline:
                return

    def wait(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Spin until `predicate` is truthy; AssertionError naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout_s} s waiting for {what}')
            self._executor.spin_once(timeout_sec=0.02)

    def resend_until(self, send: Callable[[], None], predicate: Callable[[], Any], timeout_s: float, what: str,
                     every_s: float = 3.0) -> Any:
        """Call `send` now and again every `every_s` until `predicate` is truthy.

        Why: inputs go out best effort, as camera drivers publish them, and one message can be lost on a
        loaded machine; a test that sends once and waits would then fail on the loss, not on the node."""
        deadline = time.monotonic() + timeout_s
        while True:
            send()
            try:
                return self.wait(predicate, min(every_s, max(0.0, deadline - time.monotonic())), what)
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise AssertionError(f'timed out after {timeout_s} s waiting for {what}') from None

    def publisher(self, topic: str, msg_type: Any = None, reliable: bool = False) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        if topic not in self.pubs:
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            self.pubs[topic] = self.node.create_publisher(msg_type or Image, topic, qos)
        return self.pubs[topic]

    def subscribe(self, topics: Iterable[str], msg_type: Any = None) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        for topic in topics:
            if topic in self.subs:
                continue
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

            def store(msg: Any, topic: str = topic) -> None:
                with self.lock:
                    self.messages[topic].append(msg)

            self.subs[topic] = self.node.create_subscription(msg_type or Image, topic, store, qos)

    def unsubscribe(self, topics: Iterable[str]) -> None:
        for topic in topics:
            sub = self.subs.pop(topic, None)
            if sub is not None:
                self.node.destroy_subscription(sub)

    def received(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.messages[topic])

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def wait_matched(self, timeout_s: float = 15.0) -> None:
        """Every publisher has a subscriber and every subscription a publisher (DDS discovery done)."""
        self.wait(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                 and all(s.get_publisher_count() > 0 for s in self.subs.values()), timeout_s,
                 'publishers and subscriptions to match: '
                 + ', '.join([t for t, p in self.pubs.items() if p.get_subscription_count() == 0]
                             + [t for t, s in self.subs.items() if s.get_publisher_count() == 0]))

    def publish_image(self, topic: str, arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                      width_override: int | None = None) -> None:
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from nmr.ros.convert import time_from_ns, to_image_msg

        header = Header(stamp=time_from_ns(stamp_ns), frame_id=frame_id)
        if arr.size == 0:
            msg = Image(header=header, height=0, width=0, encoding=encoding, step=0)
        else:
            msg = to_image_msg(arr, encoding, header)
        self.publisher(topic).publish(msg)

    def publish_set(self, frames: FrameSet, stamp_ns: int, streams: Sequence[str] = ('rgb', 'lwir', 'depth'),
                    topics: dict[str, str] | None = None) -> None:
        topics = topics or INPUT_TOPICS
        if 'rgb' in streams:
            self.publish_image(topics['rgb'], frames.rgb, 'rgb8', stamp_ns, 'camera_color_optical_frame')
        if 'lwir' in streams:
            self.publish_image(topics['lwir'], frames.lwir, 'mono16', stamp_ns + 1_000_000, 'flir_boson')
        if 'depth' in streams:
            self.publish_image(topics['depth'], frames.depth, '16UC1', stamp_ns - 1_000_000,
                               'camera_depth_optical_frame')

    def close(self) -> None:
        self._executor.shutdown()
        self.node.destroy_node()


@contextmanager
def in_process_node(folder: Path, **params: Any) -> Iterator[Any]:
    """A RegisterNode in this process, in its own context, worker stopped: only its callbacks' logic runs.

    Tests call its callbacks directly, in chosen arrival orders, without DDS timing. The model files
    (in `folder`) do not exist, so nothing is registered. `params`: parameter overrides by name.
    """
    import rclpy
    from rclpy.parameter import Parameter

    from nmr.ros.node import RegisterNode

    ros_env()
    context = rclpy.Context()
    rclpy.init(context=context)
    values = {'models.rgb_lwir': str(folder / 'a.pt'), 'models.rgb_depth': str(folder / 'b.pt'), **params}
    node = RegisterNode(context=context, start_parameter_services=False, enable_rosout=False,
                        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    node.stop()
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def start_node(params: dict[str, Any], log_path: Path, extra_args: Sequence[str] = (),
               new_session: bool = False) -> subprocess.Popen:
    """register_node as a subprocess (console script of this environment) with `-p name:=value` params.

    `new_session`: its own process group, as `ros2 launch` and its children form one in a terminal.
    """
    exe = Path(sys.executable).with_name('register_node')
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ['-m', 'nmr.ros.node'])]
    cmd += ['--ros-args', *extra_args]
    for name, value in params.items():
        if isinstance(value, (list, tuple)):
            text = '[' + ','.join(str(v) for v in value) + ']'
        elif isinstance(value, bool):
            text = 'true' if value else 'false'
        else:
            text = str(value)
        cmd += ['-p', f'{name}:={text}']
    log = open(log_path, 'w')  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            start_new_session=new_session)


def stop_node(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGINT (as Ctrl-C), then wait; kill only if it hangs. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def end_node_fixture(proc: subprocess.Popen, harness: RosHarness, log_path: Path) -> None:
    """The teardown of a live-node test fixture: close the harness and rclpy, stop the node (SIGINT), and
    fail unless it exited 0 without a traceback in its log."""
    import rclpy

    harness.close()
    rclpy.try_shutdown()
    code = stop_node(proc)
    text = log_path.read_text()
    assert 'Traceback' not in text, text[-3000:]
    assert code == 0, text[-2000:]


def diagnostic_values(msg: Any) -> dict[str, dict[str, str]]:
    """DiagnosticArray -> {status name suffix: {key: value, 'level': .., 'message': ..}}."""
    out: dict[str, dict[str, str]] = {}
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        level = status.level
        values['level'] = str(level[0] if isinstance(level, (bytes, bytearray)) else int(level))
        values['message'] = status.message
        values['hardware_id'] = status.hardware_id
        out[status.name.split(': ')[-1]] = values
    return out


FULL_SIZE = {'rgb': ((480, 640, 3), 'rgb8'), 'lwir': ((512, 640), 'mono16'), 'depth': ((480, 848), '16UC1')}
"""A real rig's frame sizes: RealSense colour 640x480, Boson 640x512, RealSense depth 848x480."""


def plain_driver(count: int, rate_hz: float = 10.0, streams: Sequence[str] = tuple(FULL_SIZE),
                 match_timeout_s: float = 60.0) -> int:
    """Publish full-size frames of `streams` at `rate_hz` the way ordinary camera drivers do (one process
    per camera driver: realsense-ros publishes RGB and depth, flir_boson_usb LWIR).

    Default QoS (reliable, keep last 10); the Fast DDS profile is whatever FASTDDS_DEFAULT_PROFILES_FILE
    in this process's environment names (an ordinary driver has none). Stamps are the wall clock.

    Protocol on stdin/stdout, so that the caller measures the steady state and not discovery (a writer can
    match a reader before the reader matches it; a volatile reader never gets what was sent before): warm-up
    sets until a line arrives on stdin, then every warm-up set acknowledged and `warm` printed; on the next
    line `count` sets, acknowledged, then `published ...`.
    """
    import select

    import rclpy
    from rclpy.duration import Duration
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from nmr.ros.convert import time_from_ns, to_image_msg

    rclpy.init()
    node = rclpy.create_node('plain_camera_driver_' + '_'.join(streams))
    pubs = {s: node.create_publisher(Image, INPUT_TOPICS[s], 10) for s in streams}
    rng = np.random.default_rng(0)
    msgs = {}
    for stream in streams:
        shape, encoding = FULL_SIZE[stream]
        arr = rng.integers(0, 255 if encoding == 'rgb8' else 4000, shape).astype(
            np.uint8 if encoding == 'rgb8' else np.uint16)
        msgs[stream] = to_image_msg(arr, encoding, Header(frame_id=stream))
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), match_timeout_s,
             'register_node to subscribe to every camera topic')

    def publish_set() -> None:
        for stream, msg in msgs.items():
            msg.header.stamp = time_from_ns(time.time_ns())
            pubs[stream].publish(msg)

    def acked() -> bool:
        return all(p.wait_for_all_acked(Duration(seconds=20)) for p in pubs.values())

    period = 1.0 / rate_hz
    while not select.select([sys.stdin], [], [], period)[0]:  # the camera's frame rate
        publish_set()
    sys.stdin.readline()
    print(f'warm; acknowledged: {acked()}', flush=True)
    sys.stdin.readline()
    next_t = time.monotonic()
    for _ in range(count):
        publish_set()
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))  # the camera's frame rate
    print(f'published {count} sets; acknowledged: {acked()}', flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':  # python -m nmr.ros.testing driver COUNT [RATE_HZ [STREAM,STREAM]]
    if len(sys.argv) >= 3 and sys.argv[1] == 'driver':
        sys.exit(plain_driver(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 10.0,
                              sys.argv[4].split(',') if len(sys.argv) > 4 else tuple(FULL_SIZE)))
    sys.exit('usage: python -m nmr.ros.testing driver COUNT [RATE_HZ [STREAM,STREAM]]')
