"""`nmr topics [TOPIC]`: the topics on the ROS 2 graph, or one topic's rate and bandwidth.

Why: the README's set-up installs rclpy from PyPI without the ROS 2 command line (no `ros2 topic list`,
`ros2 topic hz`, `ros2 topic bw`), so a user on such a machine had no way to see which topics exist or
whether a camera is publishing. Without TOPIC this lists every topic with its type(s) and publisher /
subscriber counts (`ros2 topic list -t` with `ros2 topic info`); with TOPIC it subscribes and prints, once
a second, the message rate and the bandwidth (`ros2 topic hz` + `ros2 topic bw`), until `--duration` or
Ctrl-C. rclpy is imported only when the verb runs, so the other verbs work where ROS 2 is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections import deque
from typing import Any

import numpy as np

from nmr.errors import ConfigError, NmrUserError

NODE_NAME = 'nmr_topics'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('topic', nargs='?', default=None, metavar='TOPIC',
                        help='measure this topic (rate and bandwidth); without it: list every topic')
    parser.add_argument('--duration', type=float, default=0.0, metavar='S',
                        help='with TOPIC: stop after S seconds (default: until Ctrl-C)')
    parser.add_argument('--window', type=int, default=100, metavar='N',
                        help='with TOPIC: messages in the rate / bandwidth window (default 100)')
    parser.add_argument('--wait', type=float, default=5.0, metavar='S',
                        help='wait up to S seconds for discovery: for the topic to have a publisher, or for '
                             'the list to settle (default 5)')


def _start(name: str) -> tuple[Any, Any]:
    """rclpy initialised (Ctrl-C stays a KeyboardInterrupt) and a node with an executor."""
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
    except ImportError as err:
        raise ConfigError(f'rclpy is not importable ({err}): run scripts/setup.sh, or source a ROS 2 '
                          'installation') from None
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(name, start_parameter_services=False, enable_rosout=False)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    return node, executor


def _stop(node: Any, executor: Any) -> None:
    import rclpy

    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


def graph_topics(node: Any) -> dict[str, list[str]]:
    """topic -> types, for topics with a publisher or subscriber other than this tool's own node."""
    me = (node.get_name(), node.get_namespace())

    def others(infos: list[Any]) -> bool:
        return any((i.node_name, i.node_namespace) != me for i in infos)

    return {t: types for t, types in node.get_topic_names_and_types()
            if others(node.get_publishers_info_by_topic(t)) or others(node.get_subscriptions_info_by_topic(t))}


def list_topics(node: Any, executor: Any, wait_s: float) -> list[str]:
    """Lines `TOPIC  TYPE  (N publishers, M subscribers)` once discovery settled, or after `wait_s`.

    Settled: something was found and nothing changed for a second (discovery takes 0.1-3 s).
    """
    start = time.monotonic()
    seen: dict[str, list[str]] = {}
    changed = start
    while time.monotonic() - start < wait_s:
        executor.spin_once(timeout_sec=0.05)
        now = graph_topics(node)
        if now != seen:
            seen, changed = now, time.monotonic()
        elif seen and time.monotonic() - changed > 1.0:
            break
    width = max((len(t) for t in seen), default=0)
    return [f'{t:<{width}}  {", ".join(types)}  ({node.count_publishers(t)} publishers, '
            f'{node.count_subscribers(t)} subscribers)' for t, types in sorted(seen.items())]


def _message_class(type_name: str) -> type:
    package, _kind, name = type_name.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError):
        raise ConfigError(f'message type {type_name} is not installed for rclpy') from None


def _qos_matching(node: Any, topic: str) -> Any:
    """Best effort if any publisher is (a reliable subscription would not match it), else reliable."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    infos = node.get_publishers_info_by_topic(topic)
    best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                      else ReliabilityPolicy.RELIABLE)


class RateMeter:
    """Arrival times and sizes of the last `window` messages: rate, period spread and bandwidth."""

    def __init__(self, window: int) -> None:
        self.times: deque[float] = deque(maxlen=window)
        self.sizes: deque[int] = deque(maxlen=window)
        self.count = 0

    def add(self, size: int, now: float | None = None) -> None:
        self.times.append(time.monotonic() if now is None else now)
        self.sizes.append(size)
        self.count += 1

    def line(self) -> str:
        """'average rate: 9.98 Hz (min 0.098 s, max 0.102 s, std dev 0.001 s, window 50) | 9.2 MB/s ...'."""
        if len(self.times) < 2:
            return f'{self.count} messages so far (a rate needs two)'
        periods = np.diff(np.array(self.times))
        span = self.times[-1] - self.times[0]
        rate = (len(self.times) - 1) / span if span > 0 else float('inf')
        bandwidth = sum(list(self.sizes)[1:]) / span if span > 0 else float('inf')
        return (f'average rate: {rate:.2f} Hz (min {periods.min():.3f} s, max {periods.max():.3f} s, std dev '
                f'{periods.std():.3f} s, window {len(self.times)}) | bandwidth {_bytes(bandwidth)}/s, '
                f'mean {_bytes(float(np.mean(self.sizes)))} per message')


def _bytes(n: float) -> str:
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('KB', 1e3)):
        if n >= size:
            return f'{n / size:.2f} {unit}'
    return f'{n:.0f} B'


def measure(node: Any, executor: Any, topic: str, args: argparse.Namespace) -> int:
    """Subscribe to `topic` (serialized: no decoding cost) and print its rate and bandwidth each second."""
    topic = topic if topic.startswith('/') else '/' + topic
    deadline = time.monotonic() + args.wait
    while True:
        types = dict(node.get_topic_names_and_types()).get(topic)
        if types and node.count_publishers(topic) > 0:
            break
        if time.monotonic() > deadline:
            have = ', '.join(sorted(graph_topics(node))) or 'none'
            raise NmrUserError(f'topic {topic} has no publisher after {args.wait:g} s (topics on the graph: '
                               f'{have}); check the name, or raise --wait')
        executor.spin_once(timeout_sec=0.05)
    meter = RateMeter(max(args.window, 2))
    node.create_subscription(_message_class(types[0]), topic, lambda raw: meter.add(len(raw)),
                             _qos_matching(node, topic), raw=True)
    print(f'subscribed to {topic} [{types[0]}]', flush=True)
    start = next_print = time.monotonic()
    try:
        while not args.duration or time.monotonic() - start < args.duration:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() >= next_print + 1.0:
                next_print = time.monotonic()
                print(meter.line(), flush=True)
    except KeyboardInterrupt:  # the usual way to stop it, as `ros2 topic hz`
        pass
    if meter.count == 0:
        raise NmrUserError(f'no message on {topic} in {time.monotonic() - start:.1f} s (it has '
                           f'{node.count_publishers(topic)} publishers): is the publisher sending?')
    print(f'{meter.count} messages; ' + meter.line(), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.duration < 0 or args.wait < 0:
        raise ConfigError('--duration and --wait must be >= 0')
    node, executor = _start(NODE_NAME)
    try:
        if args.topic is None:
            lines = list_topics(node, executor, args.wait)
            print('\n'.join(lines) if lines else f'no topics found within {args.wait:g} s (same ROS_DOMAIN_ID?)')
            return 0
        return measure(node, executor, args.topic, args)
    finally:
        _stop(node, executor)
