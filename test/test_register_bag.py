"""`nmr register-bag` on a small `nmr synth` bag with tiny random models: topics, headers, arrays, errors,
and equality with what register_node publishes live when the same bag is played into it.

The flow is checked against `Registrar.register` on the bag's synchronised frames (bag_reader), so the
offline tool is tied to the library, and the live node is tied to the offline tool stamp by stamp.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nmr.domain import PAIR_FIXED_KIND
from nmr.ros.testing import INPUT_TOPICS, make_tiny_model

FRAMES = 8
NS = '/nmr'
PAIRS = PAIR_FIXED_KIND
PAIR_OUTPUTS = {'registered': 'rgb8', 'flow': '32FC2', 'flow_viz': 'rgb8', 'overlay': 'rgb8'}
SLOP_NS = 20_000_000  # the default sync.slop_s
SECOND = 1_000_000_000


def _nmr(*args: str) -> list[str]:
    """The `nmr` console script of this environment (or `python -m nmr.cli.main`)."""
    exe = Path(sys.executable).with_name('nmr')
    return [str(exe), *args] if exe.exists() else [sys.executable, '-m', 'nmr.cli.main', *args]


@pytest.fixture(scope='module')
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('register_bag')


@pytest.fixture(scope='module')
def bag(folder: Path) -> Path:
    out = folder / 'rig'
    subprocess.run(_nmr('synth', '--out', str(out), '--frames', str(FRAMES), '--size-scale', '0.25',
                        '--workers', '1'), check=True, capture_output=True, timeout=180)
    return out


@pytest.fixture(scope='module')
def models(folder: Path) -> dict[str, Path]:
    return {p: make_tiny_model(folder / f'{p}.pt', p, seed=i) for i, p in enumerate(PAIRS)}


def _image_topics(bag: Path) -> list[str]:
    from nmr.data.bag_reader import list_topics

    return [t for t, msgtype in list_topics(bag).items() if msgtype.endswith('Image')]


def _register_bag(bag: Path, out: Path, models: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_nmr('register-bag', str(bag), '--out', str(out), '--model-rgb-lwir',
                               str(models['rgb_lwir']), '--model-rgb-depth', str(models['rgb_depth']),
                               '--backend', 'torch', '--device', 'cpu', '--quiet', *extra),
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


@pytest.fixture(scope='module')
def offline(bag: Path, models: dict[str, Path], folder: Path) -> dict[str, list[tuple[int, str, str, Any]]]:
    """register-bag's output bag: topic -> [(stamp ns, frame_id, encoding, array)]."""
    from nmr.data.bag_reader import iter_images
    from nmr.data.encodings import stamp_ns

    result = _register_bag(bag, folder / 'registered.mcap', models)
    out = folder / 'registered'  # a .mcap suffix names the storage file: folder registered/, registered.mcap
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    messages: dict[str, list[tuple[int, str, str, Any]]] = defaultdict(list)
    for topic, _rec, arr, encoding, header in iter_images(out, _image_topics(out)):
        messages[topic].append((stamp_ns(header), header.frame_id, encoding, arr))
    return dict(messages)


@pytest.fixture(scope='module')
def synced(bag: Path) -> dict[str, list[Any]]:
    """pair -> the bag's synchronised (RGB, fixed) frames, as bag_reader pairs them."""
    from nmr.data.bag_reader import synchronized_pairs

    return {p: list(synchronized_pairs(bag, INPUT_TOPICS['rgb'], INPUT_TOPICS[k], SLOP_NS))
            for p, k in PAIRS.items()}


def test_every_output_topic_is_on_the_fixed_grid_with_the_fixed_header(
        offline: dict[str, list[Any]], synced: dict[str, list[Any]]) -> None:
    for pair, pairs in synced.items():
        assert len(pairs) == FRAMES  # the synth rig is synchronous: one set per frame
        fixed = {p.fixed_stamp_ns: p for p in pairs}
        for name, encoding in PAIR_OUTPUTS.items():
            msgs = offline[f'{NS}/{pair}/{name}']
            stamps = sorted(m[0] for m in msgs)
            if name in ('flow_viz', 'overlay'):  # at most viz_max_rate_hz (default 10) per pair, by stamp
                assert stamps and set(stamps) <= set(fixed), (pair, name)
                assert all(b - a >= 0.09e9 for a, b in itertools.pairwise(stamps)), (pair, name, stamps)
            else:
                assert stamps == sorted(fixed), (pair, name)
            for stamp, frame_id, enc, arr in msgs:
                ref = fixed[stamp]
                assert frame_id == ref.fixed_header.frame_id and enc == encoding, (pair, name)
                assert arr.shape[:2] == ref.fixed.shape[:2], (pair, name)
    lwir = {p.fixed_stamp_ns: p for p in synced['rgb_lwir']}
    fused_encodings = {'rgb': 'rgb8', 'lwir': synced['rgb_lwir'][0].fixed_encoding, 'depth': '32FC1'}
    for name, encoding in fused_encodings.items():
        msgs = offline[f'{NS}/fused/{name}']
        assert msgs, f'fused/{name}'
        for stamp, frame_id, enc, arr in msgs:
            assert stamp in lwir and frame_id == lwir[stamp].fixed_header.frame_id
            assert enc == encoding and arr.shape[:2] == lwir[stamp].fixed.shape[:2]
    expected = {f'{NS}/{p}/{o}' for p in PAIRS for o in PAIR_OUTPUTS} | {f'{NS}/fused/{n}'
                                                                       for n in fused_encodings}
    assert set(offline) == expected  # and nothing else (no --copy-inputs)


def test_camera_info_of_the_fixed_camera_accompanies_every_output_set(
        bag: Path, offline: dict[str, list[Any]], folder: Path) -> None:
    """As the node publishes it: the fixed camera's calibration, with the outputs' stamp and frame."""
    from rosbags.highlevel import AnyReader

    from nmr.data.encodings import stamp_ns

    infos: dict[str, list[Any]] = defaultdict(list)
    with AnyReader([folder / 'registered', bag]) as reader:
        for conn, _t, raw in reader.messages():
            if conn.msgtype == 'sensor_msgs/msg/CameraInfo':
                infos[conn.topic].append(reader.deserialize(raw, conn.msgtype))
    for pair, stream in PAIRS.items():
        flows = offline[f'{NS}/{pair}/flow']
        out = infos[f'{NS}/{pair}/camera_info']
        source = infos[INPUT_TOPICS[stream].rsplit('/', 1)[0] + '/camera_info']
        assert source and sorted(stamp_ns(m.header) for m in out) == sorted(f[0] for f in flows)
        assert {m.header.frame_id for m in out} == {f[1] for f in flows}
        assert all(list(m.k) == list(source[0].k) and (m.width, m.height) == (source[0].width, source[0].height)
                   for m in out)
    # fused/camera_info (docs/ros.md lists it; issue 23): the LWIR calibration with every fused set
    fused, lwir = infos[f'{NS}/fused/camera_info'], infos[INPUT_TOPICS['lwir'].rsplit('/', 1)[0] + '/camera_info']
    assert fused and sorted(stamp_ns(m.header) for m in fused) == sorted(f[0] for f in offline[f'{NS}/fused/lwir'])
    assert all(list(m.k) == list(lwir[0].k) for m in fused)


def test_flow_equals_the_registrar_on_the_synchronised_frames(
        offline: dict[str, list[Any]], synced: dict[str, list[Any]], models: dict[str, Path]) -> None:
    """The registrar the node's settings make (rgb_depth refined on tiles by default, nmr.inference.tiles)."""
    from nmr.inference.tiles import TileRefinedRegistrar
    from nmr.pipeline.settings import create_registrar, validate

    settings = validate({'backend': 'torch', 'device': 'cpu'})
    for pair, pairs in synced.items():
        registrar = create_registrar(models[pair], settings, pair, log=lambda _t: None)
        assert isinstance(registrar, TileRefinedRegistrar) == (pair == 'rgb_depth')
        flows = {stamp: arr for stamp, _f, _e, arr in offline[f'{NS}/{pair}/flow']}
        for p in pairs:
            expected = registrar.register(p.moving, p.fixed, p.fixed_encoding).flow
            assert np.abs(expected).max() > 0.1  # the random model moves pixels
            np.testing.assert_allclose(flows[p.fixed_stamp_ns], expected, atol=1e-4)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('nmr register-bag: error:'), result.stderr
    return lines[0]


def test_missing_input_topic_lists_the_bags_topics(bag: Path, models: dict[str, Path], tmp_path: Path) -> None:
    line = _one_line_error(_register_bag(bag, tmp_path / 'o.mcap', models, '--set', 'topics.lwir=/no/lwir'))
    assert '/no/lwir' in line and INPUT_TOPICS['lwir'] in line and INPUT_TOPICS['depth'] in line
    assert not (tmp_path / 'o').exists() and not (tmp_path / 'o.mcap').exists()


def test_existing_output_is_refused(bag: Path, models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'exists'
    out.mkdir()
    (out / 'keep').write_bytes(b'keep me')
    line = _one_line_error(_register_bag(bag, out, models))
    assert str(out) in line and (out / 'keep').read_bytes() == b'keep me'


def test_missing_model_is_refused(bag: Path, models: dict[str, Path], tmp_path: Path) -> None:
    missing = {**models, 'rgb_lwir': tmp_path / 'nothing.pt'}
    line = _one_line_error(_register_bag(bag, tmp_path / 'o.mcap', missing))
    assert 'nothing.pt' in line and '--model-rgb-lwir' in line
    assert not (tmp_path / 'o').exists() and not (tmp_path / 'o.mcap').exists()


TRANSPORTS = {'rgb': 'compressed', 'lwir': 'compressed', 'depth': 'compressedDepth'}


@pytest.fixture(scope='module')
def compressed_bag(bag: Path, folder: Path) -> Path:
    """The rig bag's inputs as image_transport records them: CompressedImage on <topic>/<transport>."""
    from nmr.data.bag_reader import iter_images
    from nmr.data.bag_writer import BagWriter
    from nmr.data.encodings import stamp_ns

    out = folder / 'compressed'
    stream_of = {topic: stream for stream, topic in INPUT_TOPICS.items()}
    with BagWriter(out) as writer:
        for topic, rec, arr, encoding, header in iter_images(bag, list(INPUT_TOPICS.values())):
            transport = TRANSPORTS[stream_of[topic]]
            writer.write_compressed_image(f'{topic}/{transport}', stamp_ns(header), header.frame_id, arr, encoding,
                                          transport, record_ns=rec)
    return out


def test_compressed_inputs_give_the_same_sets_and_lossless_depth(
        compressed_bag: Path, offline: dict[str, list[tuple[int, str, str, Any]]], models: dict[str, Path],
        tmp_path: Path) -> None:
    from nmr.data.bag_reader import iter_images
    from nmr.data.encodings import stamp_ns

    hint = _one_line_error(_register_bag(compressed_bag, tmp_path / 'o.mcap', models))
    assert f"{INPUT_TOPICS['rgb']}/compressed" in hint and 'transport.rgb=compressed' in hint
    out = tmp_path / 'from_compressed'
    sets = [arg for s, t in TRANSPORTS.items() for arg in ('--set', f'transport.{s}={t}')]
    result = _register_bag(compressed_bag, out, models, *sets)
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    got: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for topic, _rec, _arr, encoding, header in iter_images(out, _image_topics(out)):
        got[topic].append((stamp_ns(header), header.frame_id, encoding))
    assert set(got) == set(offline)  # same outputs, same sets, same headers as from raw images
    for topic, messages in offline.items():
        assert got[topic] == [(stamp, frame, enc) for stamp, frame, enc, _a in messages], topic


def test_training_reads_compressed_bags(bag: Path, compressed_bag: Path) -> None:
    """`nmr train --bag` (BagPairDataset) on image_transport topics: same pairs, depth decoded exactly."""
    from nmr.data.bag_reader import BagPairDataset

    raw = BagPairDataset(bag, 'rgb_depth', {'rgb': INPUT_TOPICS['rgb'], 'depth': INPUT_TOPICS['depth']}, split='all')
    packed = BagPairDataset(compressed_bag, 'rgb_depth', {'rgb': f"{INPUT_TOPICS['rgb']}/compressed",
                                                          'depth': f"{INPUT_TOPICS['depth']}/compressedDepth"},
                            split='all')
    assert len(packed) == len(raw) > 0
    a, b = raw[0], packed[0]
    assert b.fixed_encoding == a.fixed_encoding == '16UC1' and np.array_equal(a.fixed, b.fixed)
    assert b.moving.shape == a.moving.shape and np.abs(b.moving.astype(int) - a.moving.astype(int)).mean() < 4


def test_a_bad_compressed_payload_is_skipped_and_counted(bag: Path, models: dict[str, Path], tmp_path: Path) -> None:
    """A payload that is not a JPEG/PNG is one unreadable message: skipped, counted in the last line (issue 15's
    policy for offline runs), never a traceback."""
    from nmr.data.bag_writer import BagWriter

    broken = tmp_path / 'broken'
    with BagWriter(broken) as writer:
        writer.write('/camera/camera/color/image_raw/compressed', 'sensor_msgs/msg/CompressedImage', SECOND,
                     {'header': {'stamp': {'sec': 1, 'nanosec': 0}, 'frame_id': 'c'}, 'format': 'rgb8; jpeg',
                      'data': np.frombuffer(b'garbage', np.uint8)})
        writer.write_image(INPUT_TOPICS['lwir'], SECOND, 'l', np.zeros((4, 4), np.uint16), 'mono16')
        writer.write_image(INPUT_TOPICS['depth'], SECOND, 'd', np.zeros((4, 4), np.uint16), '16UC1')
    result = _register_bag(broken, tmp_path / 'o.mcap', models, '--set', 'transport.rgb=compressed')
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    assert '1 unreadable input messages skipped (/camera/camera/color/image_raw/compressed: 1)' in result.stdout


@pytest.fixture()
def ros() -> Iterator[None]:
    """A private DDS domain; rclpy (re)initialised in it (an earlier module may use another domain)."""
    rclpy = pytest.importorskip('rclpy')
    from nmr.ros.testing import ros_env

    if rclpy.ok():
        rclpy.shutdown()
    ros_env()
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.mark.ros
def test_register_bag_output_equals_the_live_node_output(
        ros: None, bag: Path, models: dict[str, Path], offline: dict[str, list[Any]], tmp_path: Path) -> None:
    """Play the bag into register_node; every flow the node published equals register-bag's for that stamp."""
    from nmr.data.encodings import image_to_numpy
    from nmr.ros.testing import RosHarness, start_node, stop_node

    log = tmp_path / 'node.log'
    params = {'models.rgb_lwir': str(models['rgb_lwir']), 'models.rgb_depth': str(models['rgb_depth']),
              'backend': 'torch', 'device': 'cpu'}
    node = start_node(params, log, extra_args=['-r', f'__ns:={NS}'])
    harness = RosHarness('nmr_test_register_bag')
    topics = [f'{NS}/{p}/flow' for p in PAIRS]
    player = None
    try:
        harness.subscribe(topics)
        harness.wait_matched(60.0)
        harness.wait(lambda: node.poll() is not None or len(re.findall(r'model .* loaded', log.read_text())) == 2,
                     120.0, 'both models to load')
        assert node.poll() is None, log.read_text()[-2000:]
        # slow playback so that the tiny model keeps up on a loaded CPU (the node drops stale sets otherwise)
        player = subprocess.Popen(_nmr('play', str(bag), '--rate', '0.25', '--wait-for-subscribers', '30',
                                       '--quiet', '--topics', *INPUT_TOPICS.values()),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        harness.wait(lambda: player.poll() is not None, 120.0, 'nmr play to finish')
        assert player.returncode == 0, player.communicate()[1]
        # drain: the last set may still be in inference; stop once nothing arrived for 2 s (deadline 60 s)
        deadline = time.monotonic() + 60.0
        count, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0 and time.monotonic() < deadline:
            now = sum(len(harness.received(t)) for t in topics)
            if now != count:
                count, quiet_since = now, time.monotonic()
            harness.spin(0.1)
        for pair in PAIRS:
            topic = f'{NS}/{pair}/flow'
            reference = {stamp: arr for stamp, _f, _e, arr in offline[topic]}
            received = harness.received(topic)
            print(f'{topic}: {len(received)} of {len(reference)} sets published live')
            # not all: best-effort input and stale drops may lose some; enough that equality means something
            assert len(received) >= 2, f'register_node published {len(received)} on {topic} (see {log})'
            for msg in received:
                stamp = msg.header.stamp.sec * SECOND + msg.header.stamp.nanosec
                assert stamp in reference, f'{topic}: stamp {stamp} is not one register-bag wrote'
                np.testing.assert_allclose(image_to_numpy(msg, topic), reference[stamp], atol=1e-4)
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        harness.close()
        code = stop_node(node)
    text = log.read_text()
    assert 'Traceback' not in text and code == 0, text[-2000:]


def test_one_backend_line_unless_verbose(bag: Path, models: dict[str, Path], tmp_path: Path) -> None:
    def backend_lines(*extra: str) -> list[str]:
        result = subprocess.run(_nmr('register-bag', str(bag), '--out', str(tmp_path / extra[-1]), '--pairs',
                                     'rgb_lwir', '--model-rgb-lwir', str(models['rgb_lwir']), '--quiet',
                                     *extra[:-1]), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stderr.splitlines() if 'backend' in line]

    quiet = backend_lines('a')
    assert len(quiet) == 1 and re.match(r'nmr register-bag: backend \S+ for rgb_lwir \(-v', quiet[0]), quiet
    verbose = backend_lines('-v', 'b')
    assert any(' skipped: ' in line for line in verbose) and any(' chosen: ' in line for line in verbose)
    assert not any('nmr: ' in line for line in quiet + verbose)  # one prefix, not 'nmr register-bag: nmr:'


@pytest.mark.parametrize('argv', [['--pairs', 'rgb_lwir', '--set', 'pairs=[rgb_depth]'],
                                  ['--backend', 'torch', '--set', 'backend=onnxruntime'],
                                  ['--model-rgb-lwir', 'a.pt', '--set', 'models.rgb_lwir=b.pt']])
def test_an_option_and_a_set_that_disagree_are_refused(argv: list[str]) -> None:
    """Issue 23 (8): `--pairs rgb_lwir --set pairs=[rgb_depth]` used to run rgb_lwir without a word."""
    import argparse

    from nmr.errors import ConfigError
    from nmr.pipeline.register_bag import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ConfigError, match='disagree') as err:
        settings_from_args(parser.parse_args(['in', '--out', 'o', *argv]))
    assert argv[0] in str(err.value) and argv[-1] in str(err.value)
    same = parser.parse_args(['in', '--out', 'o', '--pairs', 'rgb_lwir', '--set', 'pairs=[rgb_lwir]'])
    assert settings_from_args(same).pairs == ('rgb_lwir',)  # agreeing twice is fine


def test_a_failure_before_the_first_set_leaves_no_output(bag: Path, models: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (6): an output bag with zero sets was kept (marked partial) and blocked the rerun."""
    from nmr.cli.main import main
    from nmr.errors import BagError
    from nmr.pipeline import register_bag

    def damaged(*_args: Any) -> Iterator[Any]:
        raise BagError('the first message is damaged')
        yield  # a generator, as the real one

    monkeypatch.setattr(register_bag, 'bag_frames', damaged)
    out = tmp_path / 'o'
    code = main(['register-bag', str(bag), '--out', str(out), '--model-rgb-lwir', str(models['rgb_lwir']),
                 '--model-rgb-depth', str(models['rgb_depth']), '--backend', 'torch', '--quiet'])
    err = [ln for ln in capsys.readouterr().err.splitlines() if 'error' in ln]
    assert code == 2 and len(err) == 1 and 'first message is damaged' in err[0] and 'no output' in err[0], err
    assert not out.exists()
