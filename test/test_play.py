"""`nmr play` as a subprocess over real DDS: what it publishes, /clock, pacing, topic selection, errors.

The bag is a small `nmr synth` recording made here; what arrives is compared with the same bag read by
nmr.data.bag_reader. Every wait is on received messages or the player's exit, with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytestmark = pytest.mark.ros

from nmr.ros.testing import INPUT_TOPICS, RosHarness, ros_env  # noqa: E402 - after the importorskip

FRAMES = 10          # 1/3 s of 30 Hz rig
SECOND = 1_000_000_000


def _nmr(*args: str) -> list[str]:
    """The `nmr` console script of this environment (or `python -m nmr.cli.main`)."""
    exe = Path(sys.executable).with_name('nmr')
    return [str(exe), *args] if exe.exists() else [sys.executable, '-m', 'nmr.cli.main', *args]


@pytest.fixture(scope='module')
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('play') / 'rig'
    subprocess.run(_nmr('synth', '--out', str(out), '--frames', str(FRAMES), '--size-scale', '0.25',
                        '--workers', '1'), check=True, capture_output=True, timeout=180)
    return out


@pytest.fixture(scope='module')
def recorded(bag: Path) -> dict[str, list[tuple[int, int, str, str, np.ndarray]]]:
    """topic -> [(record ns, stamp ns, frame_id, encoding, array)] for every Image topic, in bag order."""
    from nmr.data.bag_reader import iter_images, list_topics
    from nmr.data.encodings import stamp_ns

    topics = [t for t, kind in list_topics(bag).items() if kind == 'sensor_msgs/msg/Image']
    out: dict[str, list[tuple[int, int, str, str, np.ndarray]]] = defaultdict(list)
    for topic, record_ns, arr, encoding, header in iter_images(bag, topics):
        out[topic].append((record_ns, stamp_ns(header), header.frame_id, encoding, arr))
    return dict(out)


@pytest.fixture(scope='module')
def ros() -> Iterator[None]:
    """A private DDS domain for this module; rclpy (re)initialised in it."""
    import rclpy

    if rclpy.ok():  # an earlier module's context may be in another domain
        rclpy.shutdown()
    ros_env()
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture()
def harness(ros: None, request: pytest.FixtureRequest) -> Iterator[RosHarness]:
    h = RosHarness('nmr_test_play_' + request.node.name.split('[')[0][-20:])
    yield h
    h.close()


def _play(bag: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(_nmr('play', str(bag), '--wait-for-subscribers', '30', '--quiet', *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _finish(harness: RosHarness, proc: subprocess.Popen, done: Any, what: str) -> str:
    """Spin until the player exited and `done()` holds; the player's stdout (it must exit 0)."""
    try:
        harness.wait(lambda: proc.poll() is not None and done(), 90.0, what)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert 'Traceback' not in err, err
    return out


def _stamp(msg: Any) -> int:
    return msg.header.stamp.sec * SECOND + msg.header.stamp.nanosec


def test_every_image_topic_arrives_unchanged(bag: Path, recorded: dict[str, list[Any]],
                                             harness: RosHarness) -> None:
    from sensor_msgs.msg import CameraInfo

    from nmr.data.bag_reader import count_messages, list_topics
    from nmr.data.encodings import image_to_numpy

    assert set(INPUT_TOPICS.values()) <= set(recorded) and len(recorded) >= 5  # cameras + ground truth
    infos = [t for t, kind in list_topics(bag).items() if kind == 'sensor_msgs/msg/CameraInfo']
    assert len(infos) == 3  # one per camera: played too (issue 23: the node re-publishes them with its outputs)
    harness.subscribe(recorded)
    harness.subscribe(infos, CameraInfo)
    expected = {**{t: len(v) for t, v in recorded.items()}, **{t: count_messages(bag, [t]) for t in infos}}
    proc = _play(bag, '--reliable')
    out = _finish(harness, proc, lambda: all(len(harness.received(t)) >= n for t, n in expected.items()),
                  'every recorded message')
    assert f'published {sum(expected.values())} messages on {len(expected)} topics' in out
    for topic in infos:
        assert [_stamp(m) for m in harness.received(topic)] == sorted(_stamp(m) for m in harness.received(topic))
    for topic, expected in recorded.items():
        got = harness.received(topic)
        assert len(got) == len(expected), topic
        for msg, (_rec, stamp, frame_id, encoding, arr) in zip(got, expected):
            assert (_stamp(msg), msg.header.frame_id, msg.encoding) == (stamp, frame_id, encoding), topic
            assert (msg.height, msg.width) == arr.shape[:2], topic
            np.testing.assert_array_equal(image_to_numpy(msg, topic), arr)  # NaN == NaN here


def test_clock_follows_the_bag_time_and_topics_selects(bag: Path, recorded: dict[str, list[Any]],
                                                       harness: RosHarness) -> None:
    from rosgraph_msgs.msg import Clock

    rgb, lwir = INPUT_TOPICS['rgb'], INPUT_TOPICS['lwir']
    harness.subscribe([rgb, lwir])
    harness.subscribe(['/clock'], Clock)
    proc = _play(bag, '--reliable', '--clock', '--topics', rgb)
    out = _finish(harness, proc, lambda: len(harness.received(rgb)) >= FRAMES, 'the RGB frames')
    assert f'published {FRAMES} messages on 1 topics' in out
    clock = [c.clock.sec * SECOND + c.clock.nanosec for c in harness.received('/clock')]
    record = [r[0] for r in recorded[rgb]]
    assert clock, 'no /clock message'
    assert clock == sorted(clock), 'bag time went backwards on /clock'
    assert record[0] <= clock[0] and clock[-1] == record[-1]
    # /clock is the recording's time, not the header stamps rewritten, nor wall time
    assert [_stamp(m) for m in harness.received(rgb)] == [r[1] for r in recorded[rgb]]
    harness.spin(0.5)  # anything the player published on the other topic would have arrived by now
    assert harness.received(lwir) == []


def test_rate_scales_the_recorded_timing(bag: Path, recorded: dict[str, list[Any]],
                                         harness: RosHarness) -> None:
    from sensor_msgs.msg import Image

    rgb = INPUT_TOPICS['rgb']
    arrivals: list[float] = []
    harness.node.create_subscription(Image, rgb, lambda _m: arrivals.append(time.monotonic()), 10)
    rate = 0.2
    proc = _play(bag, '--reliable', '--topics', rgb, '--rate', str(rate))
    _finish(harness, proc, lambda: len(arrivals) >= FRAMES, 'the RGB frames')
    record = [r[0] for r in recorded[rgb]]
    expected = (record[-1] - record[0]) / SECOND / rate  # 1.5 s for 1/3 s of bag at 0.2
    span = arrivals[-1] - arrivals[0]
    # generous: the machine is loaded; unpaced, the 10 frames would arrive within a few ms
    assert 0.6 * expected <= span <= expected + 3.0, (span, expected)


@pytest.mark.parametrize('case', ['missing', 'junk', 'truncated', 'topic', 'rate'])
def test_bad_input_is_one_line_and_non_zero(bag: Path, tmp_path: Path, case: str) -> None:
    args: list[str]
    if case == 'missing':
        args = [str(tmp_path / 'no_such_bag')]
    elif case == 'junk':
        junk = tmp_path / 'junk.mcap'
        junk.write_bytes(np.random.default_rng(0).bytes(4096))
        args = [str(junk)]
    elif case == 'truncated':
        mcap = next(bag.glob('*.mcap'))
        cut = tmp_path / 'cut.mcap'
        cut.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
        args = [str(cut)]
    elif case == 'topic':
        args = [str(bag), '--topics', '/no/such/topic']
    else:
        args = [str(bag), '--rate', '0']
    result = subprocess.run(_nmr('play', *args), capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('nmr play: error:'), result.stderr
    assert 'Traceback' not in result.stderr
    if case == 'topic':
        assert INPUT_TOPICS['rgb'] in lines[0]  # the message lists what the bag has
