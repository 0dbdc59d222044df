"""The demo's live run: `nmr play` -> `register_node` -> a recorder, three processes over DDS.

The recorder runs in this process (a plain rclpy node) and writes every output message it receives into
an mcap bag. Node and recorder use sim time from the player's /clock, so "latency" is the node's real
stamp-to-publish delay at playback rate 1. Raises RuntimeError when DDS does not come up, so that
`nmr demo --mode auto` can fall back to `nmr register-bag`.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from nmr.domain import DEFAULT_TOPICS, PAIR_FIXED_KIND, PAIRS
from nmr.pipeline.fused import FUSED_TOPICS
from nmr.pipeline.settings import PAIR_OUTPUTS, camera_info_topic
from nmr.resources import share_path

DISCOVERY_TIMEOUT_S = 20.0
DRAIN_S = 2.0  # after the player ends: stop once no output arrived for this long
FINAL_DIAGNOSTICS_S = 5.0  # after draining: wait this long (wall) for the node's final counters
# register_node's per-pair diagnostics keys -> the demo summary's names
DIAGNOSTIC_COUNTS = {'synced_sets': 'synchronised', 'processed_sets': 'processed',
                     'stale_dropped': 'dropped_stale', 'unmatched_dropped': 'dropped_unmatched',
                     'errors': 'errors', 'lazy_skipped': 'lazy_skipped'}


def pair_counts(status: Any) -> tuple[str, dict[str, int]] | None:
    """(pair, counts) from one of register_node's per-pair DiagnosticStatus, None for other statuses."""
    pair = status.name.rsplit(': ', 1)[-1]
    if pair not in PAIRS:
        return None
    values = {kv.key: kv.value for kv in status.values}
    return pair, {name: int(values[key]) for key, name in DIAGNOSTIC_COUNTS.items() if key in values}


def played_topics(bag: Path) -> list[str]:
    """The cameras' image topics and, where the bag has them, the fixed cameras' camera_info (the node
    re-publishes it as `<pair>/camera_info`, which the recorder writes as register-bag does)."""
    from nmr.data.bag_reader import list_topics

    available = list_topics(bag)
    infos = [camera_info_topic(DEFAULT_TOPICS[PAIR_FIXED_KIND[p]]) for p in PAIRS]
    return [*DEFAULT_TOPICS.values(), *(t for t in infos if t in available)]


def _shipped_profile() -> Path | None:
    profile = share_path('config', 'fastdds_large_images.xml')
    return profile if profile.is_file() else None


def _dds_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(100, 200)))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    profile = _shipped_profile()
    if profile is not None:
        env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(profile))
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _console_script(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, '-m', module]


class _Recorder:
    """Subscribes to the node's outputs and writes each message to a bag, with its sim-time latency."""

    def __init__(self, out_bag: Path, namespace: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.parameter import Parameter
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image

        from nmr.data.bag_writer import BagWriter

        self.node = rclpy.create_node('nmr_demo_recorder',
                                      parameter_overrides=[Parameter('use_sim_time', value=True)])
        self.writer = BagWriter(out_bag)
        self.writer.__enter__()
        self.lock = threading.Lock()
        self.count = 0
        self.flows = 0  # /flow messages: one per processed set, whether or not sim time was known
        self.flows_per_pair: dict[str, int] = {}
        self.last_arrival = time.monotonic()
        self.latency_ms: list[float] = []
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        # the same topics as `nmr register-bag` writes: every pair output and the fused output
        self.topics = [f'{namespace}/{p}/{o}' for p in PAIRS for o in PAIR_OUTPUTS]
        self.topics += [f'{namespace}/{o}' for o in FUSED_TOPICS]
        self.subs = [self.node.create_subscription(Image, t, lambda m, t=t: self._store(t, m), qos)
                     for t in self.topics]
        # and each output set's calibration (`<pair>/camera_info`, `fused/camera_info`), as register-bag writes
        self.info_topics = [f'{namespace}/{p}/camera_info' for p in PAIRS] + [f'{namespace}/fused/camera_info']
        self.info_subs = [self.node.create_subscription(CameraInfo, t, lambda m, t=t: self._store_info(t, m), qos)
                          for t in self.info_topics]
        self.counts: dict[str, dict[str, int]] = {}  # pair -> the node's counters (last /diagnostics)
        self.diagnostics_received = 0
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics, 10)
        self.clock_pub = self.node.create_publisher(Clock, '/clock', 10)

    def _store(self, topic: str, msg: Any) -> None:
        from nmr.data.encodings import image_to_numpy

        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        now = self.node.get_clock().now().nanoseconds
        with self.lock:
            self.writer.write_image(topic, stamp, msg.header.frame_id, image_to_numpy(msg, topic), msg.encoding)
            self.count += 1
            self.last_arrival = time.monotonic()
            if topic.endswith('/flow'):
                self.flows += 1
                pair = topic.split('/')[-2]
                self.flows_per_pair[pair] = self.flows_per_pair.get(pair, 0) + 1
                if now > 0:  # 0: this node has not received /clock (yet); no latency for this set
                    self.latency_ms.append((now - stamp) / 1e6)

    def _store_info(self, topic: str, msg: Any) -> None:
        from rclpy.serialization import serialize_message

        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.writer.write_raw(topic, 'sensor_msgs/msg/CameraInfo', stamp, serialize_message(msg))
            self.count += 1
            self.last_arrival = time.monotonic()

    def _diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            found = pair_counts(status)
            if found is not None:
                self.counts[found[0]] = found[1]
        self.diagnostics_received += 1

    def final_counts(self, executor: Any) -> None:
        """Have the node publish its counters once more after the last frame.

        Its diagnostics timer runs on sim time, which stopped with the player's /clock: keep that clock
        going (0.1 s of sim time per 50 ms) until one more /diagnostics arrives.
        """
        from rosgraph_msgs.msg import Clock

        from nmr.ros.convert import time_from_ns

        seen, sim_ns = self.diagnostics_received, self.node.get_clock().now().nanoseconds
        deadline = time.monotonic() + FINAL_DIAGNOSTICS_S
        while self.diagnostics_received == seen and time.monotonic() < deadline and sim_ns > 0:
            sim_ns += 100_000_000
            self.clock_pub.publish(Clock(clock=time_from_ns(sim_ns)))
            executor.spin_once(timeout_sec=0.05)

    def matched(self) -> bool:
        """Every pair output has a publisher (the fused ones exist only where the node has them on)."""
        return all(s.get_publisher_count() > 0 for s, t in zip(self.subs, self.topics) if '/fused/' not in t)

    def close(self) -> None:
        with self.lock:
            self.writer.__exit__(None, None, None)
        self.node.destroy_node()


def run_live_pipeline(bag: Path, models: dict[str, Path], out_bag: Path, namespace: str, backend: str,
                      rate: float, params: dict[str, str] | None = None) -> dict[str, Any]:
    """Play `bag` into register_node and record its outputs into `out_bag`; returns run facts.

    `params`: more node parameters (name -> value as `-p name:=value` text), e.g. the rig."""
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
    except ImportError as err:
        raise RuntimeError(f'rclpy is not importable: {err}') from err

    env = _dds_env()
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE') if k in env})
    log_dir = out_bag.parent
    node_log = open(log_dir / 'register_node.log', 'w')  # noqa: SIM115 - closed in finally
    node_cmd = [*_console_script('register_node', 'nmr.ros.node'), '--ros-args', '-r', f'__ns:={namespace}',
                '-p', 'use_sim_time:=true', '-p', f'backend:={backend}',
                '-p', f'models.rgb_lwir:={models["rgb_lwir"]}', '-p', f'models.rgb_depth:={models["rgb_depth"]}']
    for name, value in (params or {}).items():
        node_cmd += ['-p', f'{name}:={value}']
    node = subprocess.Popen(node_cmd, stdout=node_log, stderr=subprocess.STDOUT, env=env)
    rclpy.init()
    executor = SingleThreadedExecutor()
    recorder = _Recorder(out_bag, namespace)
    executor.add_node(recorder.node)
    try:
        deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
        while not recorder.matched():
            if node.poll() is not None:
                raise RuntimeError(f'register_node exited with code {node.returncode} '
                                   f'(see {log_dir / "register_node.log"})')
            if time.monotonic() > deadline:
                raise RuntimeError(f'register_node outputs not discovered within {DISCOVERY_TIMEOUT_S:.0f} s')
            executor.spin_once(timeout_sec=0.05)
        play_cmd = [*_console_script('nmr', 'nmr.cli.main'), 'play', str(bag), '--clock', '--rate', str(rate),
                    '--wait-for-subscribers', '15', '--quiet', '--topics', *played_topics(bag)]
        player = subprocess.Popen(play_cmd, env=env)
        start = time.monotonic()
        while player.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        if player.returncode != 0:
            raise RuntimeError(f'nmr play exited with code {player.returncode}')
        while time.monotonic() - recorder.last_arrival < DRAIN_S:
            executor.spin_once(timeout_sec=0.05)
        wall = time.monotonic() - start
        recorder.final_counts(executor)
    finally:
        recorder.close()
        executor.shutdown()
        rclpy.shutdown()
        if node.poll() is None:
            node.send_signal(2)
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
        node_log.close()
    if recorder.count == 0:
        raise RuntimeError('register_node published nothing (see register_node.log)')
    lat = np.array(recorder.latency_ms)
    chosen = sorted({m.group(1).strip() for m in re.finditer(r'backend \S+ chosen: ([^(]+)',
                                                               (log_dir / 'register_node.log').read_text())})
    return {'mode': 'live (nmr play -> register_node over DDS)', 'wall_s': round(wall, 2),
            'frames_processed': recorder.flows, 'latency_samples': len(lat), 'node_counts': recorder.counts,
            'processed_per_pair': recorder.flows_per_pair,
            'messages_recorded': recorder.count,
            'latency_ms_median': round(float(np.median(lat)), 1) if len(lat) else None,
            'latency_ms_p99': round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            'backend': ', '.join(chosen) or 'see register_node.log',
            'node_log': str(log_dir / 'register_node.log')}

