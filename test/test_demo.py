"""`nmr demo` (the main job) end to end, offline, on a tiny rig with tiny untrained models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from nmr.cli.main import main
from nmr.errors import ModelFileError
from nmr.ros.testing import make_tiny_model


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('models')
    return {p: make_tiny_model(folder / f'{p}.pt', p, net_hw=(128, 128)) for p in ('rgb_lwir', 'rgb_depth')}


def test_demo_offline_writes_bag_sheets_and_summary(tmp_path: Path, tiny_models: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'demo'
    code = main(['demo', '--out', str(out), '--mode', 'offline', '--duration', '0.2', '--size-scale', '0.25',
                 '--model-rgb-lwir', str(tiny_models['rgb_lwir']),
                 '--model-rgb-depth', str(tiny_models['rgb_depth']), '--sheets', '2'])
    assert code == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert (out / 'registered' / 'metadata.yaml').is_file()
    assert summary['outputs']['mcap'] and all(Path(p).is_file() for p in summary['outputs']['mcap'])
    for pair in ('rgb_lwir', 'rgb_depth'):
        score = summary['alignment'][pair]
        assert score['frames'] > 0
        assert score['epe_before_px'] > 0 and score['epe_after_px'] > 0
        sheet = cv2.imread(str(out / f'contact_{pair}.png'))
        assert sheet is not None and sheet.shape[0] >= 2 * 200  # two frames of 200-px rows
        ok, gif = cv2.imreadanimation(str(out / f'flicker_{pair}.gif'))
        assert ok and len(gif.frames) == 2
        frames = summary['frames'][pair]
        assert frames['offered'] > 0 and frames['offered_rgb'] > 0
        assert frames['processed'] == frames['synchronised'] == score['frames']  # offline: nothing is stale
        assert frames['dropped_stale'] == 0
        assert frames['offered'] - frames['synchronised'] <= frames['dropped_unmatched']
    printed = capsys.readouterr().out
    assert 'nmr demo summary' in printed and 'EPE' in printed and str(out) in printed
    assert f'rgb_lwir: {summary["frames"]["rgb_lwir"]["offered"]} LWIR + ' in printed
    # by default the rig the drivers publish (RGB + depth camera_info, /tf_static): depth through the rig,
    # LWIR by its network, compared with the networks alone
    assert summary['rig_cameras'] == ['rgb', 'depth'] and (out / 'rig_drivers.yaml').is_file()
    assert 'registered through the rig (geometry only)' in printed.split('rgb_depth: ', 2)[-1]
    assert 'registered by the network (the rig has no lwir camera)' in printed
    assert set(summary['alignment_network_only']) == {'rgb_lwir', 'rgb_depth'}
    assert summary['alignment']['rgb_depth']['epe_percent_of_unregistered'] < 10  # exact up to depth holes
    from nmr.data.bag_reader import list_topics

    topics = list_topics(out / 'registered')  # the same topics as nmr register-bag writes, fused included
    assert {'/nmr/fused/rgb', '/nmr/fused/lwir', '/nmr/fused/depth', '/nmr/rgb_lwir/flow'} <= set(topics)


def test_demo_with_rig_none_runs_the_networks_alone_and_points_to_the_rig(
        tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'demo'
    code = main(['demo', '--out', str(out), '--mode', 'offline', '--duration', '0.2', '--size-scale', '0.25',
                 '--rig', 'none', '--model-rgb-lwir', str(tiny_models['rgb_lwir']),
                 '--model-rgb-depth', str(tiny_models['rgb_depth']), '--sheets', '1'])
    assert code == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert 'rig' not in summary and not (out / 'registered_network').exists()
    assert 'nmr demo --rig drivers' in capsys.readouterr().out


def test_demo_without_models_names_the_missing_file(tmp_path: Path) -> None:
    from argparse import Namespace

    from nmr.demo import default_models

    missing = tmp_path / 'nope.onnx'
    with pytest.raises(ModelFileError, match=r'nope\.onnx'):
        default_models(Namespace(model_rgb_lwir=missing, model_rgb_depth=missing))


def test_demo_names_a_given_model_path_as_given_not_as_the_default(tmp_path: Path) -> None:
    from argparse import Namespace

    from nmr.demo import default_models

    with pytest.raises(ModelFileError) as err:
        default_models(Namespace(model_rgb_lwir=tmp_path / 'typo.pt', model_rgb_depth=None))
    assert '--model-rgb-lwir' in str(err.value) and 'default' not in str(err.value).split(';')[0]


def test_demo_refuses_a_corrupt_model_before_rendering(tmp_path: Path, tiny_models: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'not a checkpoint' * 100)
    out = tmp_path / 'demo'
    code = main(['demo', '--out', str(out), '--mode', 'offline', '--model-rgb-lwir', str(corrupt),
                 '--model-rgb-depth', str(tiny_models['rgb_depth'])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'corrupt.pt' in err[0]
    assert not (out / 'input_rig').exists()  # nothing rendered


def test_the_summary_says_in_words_when_the_model_made_alignment_worse() -> None:
    """Issue 23 (10): '117.6 % of unregistered' was printed without saying that this is worse."""
    from nmr.demo import verdict

    assert verdict(117.6).startswith('WORSE than no registration')
    assert verdict(9.7) == 'registration removed 90 % of the misalignment'
    assert 'did not help' in verdict(100.4)


def test_frames_line_says_what_was_dropped_and_why() -> None:
    from nmr.demo import DROP_REASONS, frames_line

    line = frames_line('rgb_lwir', {'offered': 60, 'offered_rgb': 60, 'synchronised': 59, 'processed': 10,
                                    'dropped_stale': 49, 'dropped_unmatched': 2, 'errors': 0})
    assert line == ('rgb_lwir: 60 LWIR + 60 RGB frames -> 59 synchronised sets -> 10 registered; dropped: 49 '
                    'stale, 2 unmatched')
    assert 'newest set' in DROP_REASONS['dropped_stale']


def test_live_demo_reads_the_nodes_counters_from_its_diagnostics() -> None:
    pytest.importorskip('diagnostic_msgs')
    from nmr.ros.demo_live import pair_counts
    from nmr.ros.diagnostics import PairStats, pair_status

    stats = PairStats(stale_dropped=49, errors=1)
    for _ in range(10):
        stats.processed.tick()
    for _ in range(59):
        stats.synced.tick()
    status = pair_status('/nmr/register_node', 'rgb_lwir', stats, 'onnxruntime', 'cpu', 'm.onnx', [1, 2])
    assert pair_counts(status) == ('rgb_lwir', {'synchronised': 59, 'processed': 10, 'dropped_stale': 49,
                                                'dropped_unmatched': 3, 'errors': 1, 'lazy_skipped': 0})


def test_demo_refuses_a_non_empty_output_and_deletes_nothing(tmp_path: Path, tiny_models: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (1): the demo used to delete `registered/` (and what a user kept there) in any --out."""
    out = tmp_path / 'demo'
    (out / 'registered').mkdir(parents=True)
    (out / 'registered' / 'important.txt').write_text('keep me')
    code = main(['demo', '--out', str(out), '--mode', 'offline', '--duration', '0.2', '--size-scale', '0.25',
                 '--model-rgb-lwir', str(tiny_models['rgb_lwir']),
                 '--model-rgb-depth', str(tiny_models['rgb_depth'])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(out) in err[0] and '--overwrite' in err[0], err
    assert (out / 'registered' / 'important.txt').read_text() == 'keep me'
    assert not (out / 'input_rig').exists()


def test_demo_overwrite_replaces_only_its_own_outputs(tmp_path: Path) -> None:
    from nmr.demo import prepare_output

    out = tmp_path / 'demo'
    (out / 'registered').mkdir(parents=True)
    (out / 'registered' / 'x.mcap').write_text('old run')
    (out / 'contact_rgb_lwir.png').write_text('old run')
    (out / 'notes.txt').write_text('mine')
    prepare_output(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']


def test_demo_refuses_rate_in_offline_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (8): `--mode offline --rate 2` used to ignore --rate without a word."""
    code = main(['demo', '--out', str(tmp_path / 'demo'), '--mode', 'offline', '--rate', '2'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and '--rate' in err[0] and 'offline' in err[0], err
    assert not (tmp_path / 'demo').exists()


@pytest.mark.ros
def test_live_demo_records_camera_info_from_play_through_the_node(
        tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (4): `nmr play` published images only, and the node's camera_info subscription, made reliable
    before the best-effort player existed, never followed it: the live demo's bag had no camera_info."""
    pytest.importorskip('rclpy')
    from collections import defaultdict

    from rosbags.highlevel import AnyReader

    from nmr.data.encodings import stamp_ns
    from nmr.ros.testing import ros_env

    ros_env()
    out = tmp_path / 'live'
    code = main(['demo', '--out', str(out), '--mode', 'live', '--duration', '0.3', '--size-scale', '0.25',
                 '--model-rgb-lwir', str(tiny_models['rgb_lwir']), '--backend', 'torch',
                 '--model-rgb-depth', str(tiny_models['rgb_depth']), '--sheets', '1'])
    assert code == 0, capsys.readouterr().err
    stamps: dict[str, list[int]] = defaultdict(list)
    with AnyReader([out / 'registered']) as reader:
        for conn, _t, raw in reader.messages():
            if conn.topic.endswith(('/camera_info', '/flow', '/fused/lwir')):
                stamps[conn.topic].append(stamp_ns(reader.deserialize(raw, conn.msgtype).header))
    for pair in ('rgb_lwir', 'rgb_depth'):
        infos, flows = stamps[f'/nmr/{pair}/camera_info'], set(stamps[f'/nmr/{pair}/flow'])
        assert infos and set(infos) <= flows and len(infos) >= len(flows) - 1, (pair, infos, flows)
    assert stamps['/nmr/fused/camera_info'] and set(stamps['/nmr/fused/camera_info']) <= set(stamps['/nmr/fused/lwir'])
