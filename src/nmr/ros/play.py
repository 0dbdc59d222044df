"""`nmr play BAG...`: publish a bag's image and camera_info topics with the recorded timing (without rosbag2).

Messages are published as the bag's serialized CDR bytes (rosbags and rclpy share the wire format), so
headers (stamps, frame_ids) and pixels arrive exactly as recorded, without a decode/encode per frame.
`--restamp` is the exception: it sets header.stamp to the current ROS time (live-camera emulation, e.g.
to measure end-to-end latency), which needs one deserialisation per message.
Pacing follows the bag's receive (log) times scaled by `--rate`; `--clock` also publishes /clock with the
bag time so that nodes run with use_sim_time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nmr.data.bag_reader import open_bag
from nmr.errors import BagError, ConfigError

IMAGE_TYPE = 'sensor_msgs/msg/Image'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
#: What is played without --topics: the cameras as a driver publishes them (images and their calibration).
DEFAULT_TYPES = (IMAGE_TYPE, CAMERA_INFO_TYPE)
CLOCK_HZ = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='+', type=Path, metavar='BAG',
                        help='rosbag2 bag(s): folder or .mcap/.db3')
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed factor (default 1.0)')
    parser.add_argument('--loop', action='store_true', help='play again from the start when the bag ends')
    parser.add_argument('--clock', action='store_true',
                        help='publish /clock with the bag time (use_sim_time)')
    parser.add_argument('--topics', nargs='+', default=None, metavar='TOPIC',
                        help='topics to publish (default: every sensor_msgs/Image and CameraInfo topic)')
    parser.add_argument('--restamp', action='store_true',
                        help='replace header.stamp with the current time (live-camera emulation)')
    parser.add_argument('--reliable', action='store_true', help='publish reliable (default: best effort)')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SECONDS',
                        help='before playing, wait up to this long until every topic has a subscriber')
    parser.add_argument('--max-messages', type=int, default=0, metavar='N', help='stop after N messages')
    parser.add_argument('--quiet', action='store_true', help='no progress line')


def _message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy class (None-safe: ConfigError when the package is missing)."""
    package, _kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError):
        raise ConfigError(f'message type {msgtype} is not installed for rclpy; leave that topic out '
                          '(--topics)') from None


def open_reader(paths: Sequence[Path]) -> Any:
    """An opened rosbags AnyReader, or BagError naming the bag (and `nmr recover-bag` for a cut one)."""
    for path in paths:
        if not path.exists():
            raise BagError(f'bag {path} does not exist')
    return open_bag(list(paths))


def select_connections(reader: Any, topics: Sequence[str] | None) -> list[Any]:
    """The connections to play: the named topics, or every Image and CameraInfo topic."""
    available = {c.topic: c.msgtype for c in reader.connections}
    if topics:
        missing = [t for t in topics if t not in available]
        if missing:
            raise BagError(f'topic {missing[0]} is not in the bag; it has: {", ".join(sorted(available))}')
        return [c for c in reader.connections if c.topic in topics]
    chosen = [c for c in reader.connections if c.msgtype in DEFAULT_TYPES]
    if all(c.msgtype == CAMERA_INFO_TYPE for c in chosen):
        chosen = []
    if not chosen:
        raise BagError(f'the bag has no {IMAGE_TYPE} topics (it has {", ".join(sorted(available))})')
    return chosen


def _progress(done: int, total: int, bag_s: float) -> None:
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f'\r[{"#" * fill}{"." * (width - fill)}] {done}/{total} msgs  bag t={bag_s:7.2f} s')
    sys.stderr.flush()


class Player:
    """Publishes a bag's messages with recorded timing; one instance per rclpy node."""

    def __init__(self, node: Any, reader: Any, connections: list[Any], args: argparse.Namespace) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.node, self.reader, self.connections, self.args = node, reader, connections, args
        reliability = ReliabilityPolicy.RELIABLE if args.reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=10, reliability=reliability)
        self.types = {c.topic: _message_class(c.msgtype) for c in connections}
        self.pubs = {t: node.create_publisher(cls, t, qos) for t, cls in self.types.items()}
        self.clock_pub = node.create_publisher(Clock, '/clock', 10) if args.clock else None
        self.total = sum(c.msgcount for c in connections)
        self.published = 0
        self.unreadable: dict[str, int] = {}   # --restamp: messages that could not be deserialised

    def _all_publishers(self) -> list[Any]:
        return [*self.pubs.values(), *([self.clock_pub] if self.clock_pub is not None else [])]

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Until every topic (and /clock with --clock) has a subscriber: use_sim_time nodes need /clock too."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self._all_publishers()):
                return True
            time.sleep(0.02)
        return False

    def wait_for_acks(self, timeout_s: float = 5.0) -> bool:
        """Before exiting: let reliable readers that matched late fetch what they missed.

        A writer that is destroyed right after its last publish takes its unacknowledged samples with
        it; a reader that discovered the player late would then never see the end of the bag.
        """
        from rclpy.duration import Duration

        if not self.args.reliable:
            return True
        return all(p.wait_for_all_acked(Duration(seconds=timeout_s)) for p in self.pubs.values())

    def _publish_clock(self, bag_ns: int) -> None:
        if self.clock_pub is not None:
            from rosgraph_msgs.msg import Clock

            from nmr.ros.convert import time_from_ns

            self.clock_pub.publish(Clock(clock=time_from_ns(bag_ns)))

    def _wait_until(self, wall_target: float, bag_at: Any) -> None:
        """Sleep until `wall_target`, publishing /clock at CLOCK_HZ meanwhile (bag_at: wall -> bag ns)."""
        while True:
            now = time.monotonic()
            if now >= wall_target:
                return
            if self.clock_pub is not None:
                self._publish_clock(bag_at(now))
                time.sleep(min(1.0 / CLOCK_HZ, wall_target - now))
            else:
                time.sleep(wall_target - now)

    def _messages(self) -> Iterator[tuple[Any, int, bytes]]:
        """The bag's messages; damage found mid-way (a bad chunk) ends playback with BagError."""
        messages = self.reader.messages(connections=self.connections)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except Exception as err:
                bags = ', '.join(str(p) for p in getattr(self.reader, 'paths', [])) or 'the bag'
                raise BagError(f'{bags} is damaged after {self.published} messages ({err}); copy its '
                               f'readable messages into a valid bag with `nmr recover-bag`') from None
            yield item

    def play_once(self) -> bool:
        """One pass over the bag; False when --max-messages was reached."""
        from rclpy.serialization import deserialize_message

        rate = self.args.rate
        start_wall: float | None = None
        first_ns = 0
        for conn, bag_ns, raw in self._messages():
            if start_wall is None:
                start_wall, first_ns = time.monotonic(), bag_ns
            wall_target = start_wall + (bag_ns - first_ns) / 1e9 / rate
            self._wait_until(wall_target, lambda w, s=start_wall, f=first_ns: f + int((w - s) * rate * 1e9))
            self._publish_clock(bag_ns)
            data: Any = bytes(raw)
            if self.args.restamp:
                try:
                    msg: Any = deserialize_message(data, self.types[conn.topic])
                except Exception:  # corrupt bytes: cannot restamp them; count, skip, report at the end
                    self.unreadable[conn.topic] = self.unreadable.get(conn.topic, 0) + 1
                    continue
                if hasattr(msg, 'header'):
                    msg.header.stamp = self.node.get_clock().now().to_msg()
                data = msg
            self.pubs[conn.topic].publish(data)
            self.published += 1
            if not self.args.quiet and (self.published % 10 == 0 or self.published == self.total):
                _progress(self.published % self.total or self.total, self.total, (bag_ns - first_ns) / 1e9)
            if self.args.max_messages and self.published >= self.args.max_messages:
                return False
        return True


def run(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        raise ConfigError(f'--rate {args.rate}: must be > 0')
    reader = open_reader(args.bags)
    try:
        connections = select_connections(reader, args.topics)
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # keep Ctrl-C a KeyboardInterrupt
        node = rclpy.create_node('nmr_play')
        try:
            player = Player(node, reader, connections, args)
            if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(args.wait_for_subscribers):
                print(f'nmr play: warning: not every topic has a subscriber after '
                      f'{args.wait_for_subscribers} s; playing anyway', file=sys.stderr)
            while player.play_once() and args.loop:
                pass
            if not player.wait_for_acks():
                print('nmr play: warning: not every reliable subscriber acknowledged the last messages',
                      file=sys.stderr)
            if not args.quiet:
                sys.stderr.write('\n')
            skipped = sum(player.unreadable.values())
            lost = (f'; {skipped} unreadable messages skipped ('
                    + ', '.join(f'{t}: {n}' for t, n in sorted(player.unreadable.items())) + ')') if skipped else ''
            print(f'nmr play: published {player.published} messages on {len(player.pubs)} topics{lost}')
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    finally:
        reader.close()
    return 0
