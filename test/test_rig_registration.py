"""Registration through the rig (issue 20): the geometric stage end to end (register-bag, evaluate, the node),
depth as an auxiliary input of the frame-set core, the plane fallback, and the residual's composition.

The scene is the synthetic rig's, rendered at one instant for all three cameras (exact depth in metres, 32FC1),
so the synth's ground truth is pure geometry: the stage must reproduce it. The rig file is the synth's true rig
at FULL size while the images are at a quarter: the stage scales the intrinsics (and says so once).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from nmr.geometry import flow_through_depth
from nmr.geometry.registration import GeometricStage, compensate_motion, extend_ground, fill_holes
from nmr.geometry.rig import Rig
from nmr.inference.protocol import Registration
from nmr.pipeline.core import Frame, FrameSetCore
from nmr.pipeline.outputs import PairProcessor
from nmr.synth.cameras import default_rig
from nmr.synth.groundtruth import gt_flow
from nmr.synth.render import render_geometry
from nmr.synth.scene import generate_scene

SECOND = 1_000_000_000
MS = 1_000_000
BASE_NS = 1_700_000_000 * SECOND
TOPICS = {'rgb': '/camera/camera/color/image_raw', 'lwir': '/flir_boson/image_raw',
          'depth': '/camera/camera/depth/image_rect_raw'}
FRAME_IDS = {'rgb': 'camera_color_optical_frame', 'lwir': 'flir_boson_optical_frame',
             'depth': 'camera_depth_optical_frame'}


class Scene:
    """One instant of the synthetic rig: images, exact depth and the ground truth of both pairs."""

    def __init__(self) -> None:
        scene = generate_scene(5, 1.0)
        rig = default_rig(0.25)
        self.geom = {n: render_geometry(scene, getattr(rig, n), 0.5) for n in ('rgb', 'lwir', 'depth')}
        rng = np.random.default_rng(3)
        self.rgb = rng.integers(1, 256, (*self.geom['rgb'].depth.shape, 3), dtype=np.uint8)  # never 0
        self.lwir = rng.integers(1000, 30000, self.geom['lwir'].depth.shape, dtype=np.uint16)
        d = self.geom['depth']
        self.depth = np.where(d.surface, d.depth, 0.0).astype(np.float32)
        self.gt = {f'rgb_{n}': gt_flow(scene, self.geom[n], self.geom['rgb']) for n in ('lwir', 'depth')}


@pytest.fixture(scope='module')
def scene() -> Scene:
    return Scene()


@pytest.fixture(scope='module')
def rig_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synth's true rig at full size (the images are a quarter of it)."""
    path = tmp_path_factory.mktemp('rig') / 'rig.yaml'
    Rig.from_synth(default_rig(1.0)).save(path)
    return path


def _check_against_truth(scene: Scene, pair: str, flow: np.ndarray, valid: np.ndarray) -> None:
    gt, gt_valid = scene.gt[pair]
    both = valid & gt_valid
    assert both.mean() > 0.5, both.mean()
    err = np.linalg.norm(flow - gt, axis=-1)[both]
    if pair == 'rgb_depth':  # flow through its own depth: exact
        assert err.max() <= 0.05, err.max()
    else:  # through depth reprojected into the LWIR camera (nearest-pixel z-buffer): exact up to resampling
        assert err.mean() <= 0.02 and np.percentile(err, 99) <= 0.05, (err.mean(), np.percentile(err, 99))
    # occluded / no-depth pixels are marked invalid: almost nothing the truth calls invalid is called valid
    # (the two occlusion rules differ only in pixel-wide seams at silhouettes, test_geometry.py)
    assert (valid & ~gt_valid).mean() < 0.05, (valid & ~gt_valid).mean()
    assert np.isfinite(flow).all()


def _write_bag(folder: Path, scene: Scene, streams: tuple[str, ...] = ('rgb', 'lwir', 'depth')) -> Path:
    from nmr.data.bag_writer import BagWriter

    images = {'rgb': (scene.rgb, 'rgb8'), 'lwir': (scene.lwir, 'mono16'), 'depth': (scene.depth, '32FC1')}
    offsets = {'rgb': 0, 'lwir': 2 * MS, 'depth': -1 * MS}
    with BagWriter(folder) as writer:
        for i in range(2):
            for s in streams:
                arr, enc = images[s]
                writer.write_image(TOPICS[s], BASE_NS + i * SECOND // 10 + offsets[s], FRAME_IDS[s], arr, enc)
    return folder


def _register(bag: Path, out: Path, *extra: str) -> dict[str, Any]:
    from nmr.pipeline.register_bag import add_arguments, register_bag

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    result = register_bag(parser.parse_args([str(bag), '--out', str(out), '--quiet', *extra]))
    assert not result['interrupted']
    return result


def _outputs(out: Path, pair: str) -> dict[str, list[np.ndarray]]:
    from nmr.data.bag_reader import iter_images

    got: dict[str, list[np.ndarray]] = {}
    for topic, _r, arr, _enc, _h in iter_images(out, [f'/nmr/{pair}/{o}' for o in ('flow', 'valid', 'registered')]):
        got.setdefault(topic.rsplit('/', 1)[1], []).append(np.array(arr))
    return got


def test_register_bag_through_the_rig_equals_the_synthetic_ground_truth(scene: Scene, rig_file: Path,
                                                                        tmp_path: Path, capsys: Any) -> None:
    """End to end: a bag of the rig at one instant -> register-bag --rig (geometry only) -> flow, valid and
    registered outputs; the flow is the ground truth where valid, invalid pixels are 0 in `registered`."""
    bag = _write_bag(tmp_path / 'in', scene)
    result = _register(bag, tmp_path / 'out', '--rig', str(rig_file), '--residual', 'off')
    assert result['geometric'] == {'rgb_depth depth': 2, 'rgb_lwir depth': 2}
    err = capsys.readouterr().err
    for cam in ('rgb', 'lwir', 'depth'):  # the rig file is 4x the images' size: scaled, said once per camera
        assert err.count(f'rig: {cam} images are') == 1, err
    assert 'plane' not in err
    for pair in ('rgb_depth', 'rgb_lwir'):
        got = _outputs(tmp_path / 'out', pair)
        assert len(got['flow']) == len(got['valid']) == len(got['registered']) == 2
        valid_u8 = got['valid'][0]
        assert valid_u8.dtype == np.uint8 and set(np.unique(valid_u8)) <= {0, 255}
        valid = valid_u8 > 0
        _check_against_truth(scene, pair, got['flow'][0], valid)
        registered = got['registered'][0]
        assert not registered[~valid].any()  # invalid pixels are published as 0 (and flagged in P/valid)
        assert (registered[valid] > 0).mean() > 0.99  # the RGB image has no 0 and valid pixels sample inside it


def test_a_bag_without_depth_falls_back_to_the_plane_model_and_says_so(scene: Scene, rig_file: Path,
                                                                       tmp_path: Path, capsys: Any) -> None:
    bag = _write_bag(tmp_path / 'in', scene, ('rgb', 'lwir'))
    result = _register(bag, tmp_path / 'out', '--rig', str(rig_file), '--pairs', 'rgb_lwir', '--set',
                       'rig_plane_distance_m=7.5')
    assert result['geometric'] == {'rgb_lwir plane': 2}
    err = capsys.readouterr().err
    assert err.count('plane-at-distance model (7.5 m)') == 1, err  # once, not per set
    rig = Rig.load(rig_file)
    lwir, rgb = rig.camera('lwir').resized(160, 128), rig.camera('rgb').resized(160, 120)
    expected, inside = flow_through_depth(lwir, rgb, rig.moving_from_fixed('lwir'),
                                          np.full(lwir.hw, 7.5, np.float32))
    got = _outputs(tmp_path / 'out', 'rgb_lwir')
    assert np.array_equal(got['valid'][0] > 0, inside)
    np.testing.assert_allclose(got['flow'][0][inside], expected[inside], atol=1e-4)
    assert np.isfinite(got['flow'][0]).all() and np.abs(got['flow'][0][~inside]).max() > 0  # kept, not zeroed


def test_a_rig_without_the_lwir_camera_registers_depth_through_it_and_lwir_with_the_network(
        scene: Scene, rig_file: Path, tmp_path: Path, capsys: Any) -> None:
    """A rig file with RGB and depth only (what the RealSense's camera_info and /tf_static give, with no
    calibration): rgb_depth goes through the rig, rgb_lwir through its model, exactly as without a rig."""
    from nmr.ros.testing import make_tiny_model

    rig = Rig.load(rig_file)
    del rig.cameras['lwir']
    depth_rig = tmp_path / 'depth_only.yaml'
    rig.save(depth_rig)
    model = make_tiny_model(tmp_path / 'rgb_lwir.pt', 'rgb_lwir')
    bag = _write_bag(tmp_path / 'in', scene)
    result = _register(bag, tmp_path / 'out', '--rig', str(depth_rig), '--residual', 'off',
                       '--model-rgb-lwir', str(model), '--backend', 'torch', '--device', 'cpu')
    assert result['geometric'] == {'rgb_depth depth': 2}
    err = capsys.readouterr().err
    assert err.count('has no lwir camera: rgb_lwir is registered by its network') == 1, err
    depth = _outputs(tmp_path / 'out', 'rgb_depth')
    _check_against_truth(scene, 'rgb_depth', depth['flow'][0], depth['valid'][0] > 0)
    _register(bag, tmp_path / 'plain', '--pairs', 'rgb_lwir', '--model-rgb-lwir', str(model), '--backend', 'torch',
              '--device', 'cpu')
    from nmr.data.bag_reader import iter_images

    def flows(out: Path) -> list[np.ndarray]:
        return [np.array(arr) for _t, _r, arr, _e, _h in iter_images(out, ['/nmr/rgb_lwir/flow'])]

    through_network = flows(tmp_path / 'out')
    assert len(through_network) == 2
    for got, plain in zip(through_network, flows(tmp_path / 'plain'), strict=True):
        np.testing.assert_array_equal(got, plain)


def test_a_rig_with_no_configured_pairs_camera_is_refused(rig_file: Path, tmp_path: Path) -> None:
    from nmr.errors import ConfigError
    from nmr.pipeline.settings import load_geometry, validate

    rig = Rig.load(rig_file)
    del rig.cameras['lwir']
    depth_rig = tmp_path / 'depth_only.yaml'
    rig.save(depth_rig)
    settings = validate({'pairs': ['rgb_lwir'], 'rig': str(depth_rig)})
    with pytest.raises(ConfigError, match='has no lwir camera but pair rgb_lwir is configured'):
        load_geometry(settings, log=print)


def test_the_stage_says_when_depth_stops_and_comes_back(scene: Scene, rig_file: Path) -> None:
    said: list[str] = []
    stage = GeometricStage(Rig.load(rig_file), log=said.append)
    hw = {n: scene.geom[n].depth.shape for n in ('rgb', 'lwir')}
    for depth in (scene.depth, None, None, scene.depth, scene.depth):
        stage.flow('rgb_lwir', hw['rgb'], hw['lwir'], depth, '32FC1')
    fallback = [t for t in said if 'plane-at-distance' in t or 'depth frames arrived' in t]
    assert len(fallback) == 2 and 'plane' in fallback[0] and 'arrived' in fallback[1], said


def test_fill_holes_keeps_valid_values_and_interpolates_holes() -> None:
    yy, xx = np.mgrid[0:40, 0:60].astype(np.float32)
    truth = np.stack([0.1 * xx, 0.05 * yy], -1)
    valid = np.ones((40, 60), bool)
    valid[10:20, 20:35] = False
    flow = np.where(valid[..., None], truth, 0.0).astype(np.float32)
    filled = fill_holes(flow.copy(), valid)
    assert np.array_equal(filled[valid], truth[valid])
    assert np.abs(filled[~valid] - truth[~valid]).max() < 1.0  # a smooth guess from the neighbours
    assert np.isfinite(filled).all()


def test_the_ground_seen_by_depth_is_continued_below_its_field_of_view() -> None:
    """The bottom rows without depth (a depth camera with a narrower vertical view) get the plane's parallax
    extrapolated from the lowest covered band, not the last row's repeated; a band that is no plane is left."""
    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    plane = np.stack([0.01 * xx + 0.08 * yy - 1.0, 0.05 * yy], -1).astype(np.float32)
    valid = np.ones((64, 80), bool)
    valid[48:] = False
    parallax = np.where(valid[..., None], plane, 0.0).astype(np.float32)
    fill_holes(parallax, valid)
    assert np.abs(parallax[63] - plane[63]).max() > 1.0  # push-pull alone repeats row 47
    assert extend_ground(parallax, valid)
    np.testing.assert_allclose(parallax[48:], plane[48:], atol=1e-3)
    rough = np.where(valid[..., None], np.random.default_rng(1).normal(0, 3, plane.shape), 0).astype(np.float32)
    assert not extend_ground(rough, valid)


def test_motion_compensation_moves_the_targets_to_the_paired_rgb_frames_time() -> None:
    """The RGB content moves by (+3, -1) px from the previous frame to the paired one (a textured image,
    shifted); the fixed frame was exposed half an interval after the paired RGB frame (alpha = -0.5 of the
    paired -> previous interval), when the content had moved on by (1.5, -0.5): the targets in the paired
    frame are that much behind the geometric ones."""
    rng = np.random.default_rng(4)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (140, 180), dtype=np.uint8), (0, 0), 2.0)
    previous = np.repeat(texture[20:120, 20:160, None], 3, axis=2)
    paired = np.repeat(texture[21:121, 17:157, None], 3, axis=2)  # the content moved by (+3, -1)
    flow = np.zeros((100, 140, 2), np.float32)
    compensate_motion(flow, paired, previous, -0.5)
    inner = flow[20:-20, 20:-20]  # at the fixed time the content is at m + (1.5, -0.5): m = target - that
    np.testing.assert_allclose(inner.reshape(-1, 2).mean(0), [-1.5, 0.5], atol=0.1)
    still = compensate_motion(np.zeros((4, 4, 2), np.float32), paired, previous, 0.0)
    assert not still.any()  # exposed together: nothing to compensate


def test_core_gives_rgb_lwir_sets_the_depth_frame_nearest_on_the_rgb_clock() -> None:
    """depth_aux: the depth frame nearest to the LWIR frame's exposure (stamp + offset) within the age
    limit; offsets also shift the synchroniser; without a rig nothing changes."""
    def frame(stream: str, ms: float) -> Frame:
        arr = np.zeros((4, 4, 3) if stream == 'rgb' else (4, 4), np.uint8 if stream == 'rgb' else np.uint16)
        return Frame(stream, BASE_NS + int(ms * MS), arr, {'rgb': 'rgb8', 'lwir': 'mono16'}.get(stream, '16UC1'),
                     argparse.Namespace(frame_id=f'{stream}{ms:g}'))

    plain = FrameSetCore(['rgb_lwir'], 20 * MS, 10, 'all')
    assert plain.streams == ('rgb', 'lwir')
    # the LWIR stamps lag its exposure by 30 ms: stamp - 30 ms is the exposure on the RGB clock
    core = FrameSetCore(['rgb_lwir'], 20 * MS, 10, 'all', depth_aux=True, offsets_ns={'lwir': -30 * MS},
                        depth_max_age_ns=10 * MS)
    assert core.streams == ('rgb', 'lwir', 'depth')
    for stream, ms in (('depth', 0), ('depth', 33), ('rgb', 1), ('lwir', 31), ('depth', 66), ('rgb', 34),
                       ('lwir', 64)):
        core.add(frame(stream, ms))
    sets = core.take()
    # lwir31 was exposed at 1 ms (RGB clock): it pairs with rgb1 and depth0 (without the offset: rgb34, depth33)
    assert [(s.rgb.header.frame_id, s.fixed.header.frame_id, s.depth and s.depth.header.frame_id)
            for s in sets] == [('rgb1', 'lwir31', 'depth0'), ('rgb34', 'lwir64', 'depth33')]
    # and the RGB frame before the paired one, for the motion compensation (none before rgb1)
    assert [s.rgb_previous and s.rgb_previous.header.frame_id for s in sets] == [None, 'rgb1']
    late = FrameSetCore(['rgb_lwir'], 20 * MS, 10, 'all', depth_aux=True, depth_max_age_ns=5 * MS)
    for stream, ms in (('depth', 0), ('rgb', 20), ('lwir', 21)):
        late.add(frame(stream, ms))
    assert [s.depth for s in late.take()] == [None]  # 21 ms away: too old, the plane model takes over


class _ConstantResidual:
    """A registrar stand-in whose flow is a constant shift on the fixed grid (no net_flow: reference path)."""

    pair = 'rgb_lwir'
    device = 'cpu'

    def __init__(self, shift: tuple[float, float]) -> None:
        self.shift = np.array(shift, np.float32)
        self.seen: list[np.ndarray] = []

    def register(self, moving: np.ndarray, fixed: np.ndarray, encoding: str) -> Registration:
        self.seen.append(moving)
        h, w = fixed.shape[:2]
        flow = np.broadcast_to(self.shift, (h, w, 2)).copy()
        return Registration(flow, np.zeros((h, w, 3), np.uint8), np.ones((h, w), bool))


def test_the_residual_is_composed_after_the_prior_on_the_fixed_grid() -> None:
    """The network sees the pre-warped W(v) = moving(v + g(v)) and answers r: registered(v) = W(v + r(v)) =
    moving(v + r(v) + g(v + r(v))), so phi = r + g o (id + r). With a non-uniform prior (a scaling) the
    other order (g + r o (id + g) = g + r for a constant r) is off by the prior's change over r."""
    h, w = 40, 50
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.stack([0.1 * xx + 2.0, -0.05 * yy], -1).astype(np.float32)  # d g_x / dx = 0.1
    residual = _ConstantResidual((3.0, 0.0))
    proc = PairProcessor(residual, 'rgb_lwir')  # type: ignore[arg-type]
    proc.prior_flow = lambda m, f, e: g
    moving = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    result = proc.run(moving, np.zeros((h, w), np.uint16), 'mono16', ['flow'])
    expected = g.copy()
    expected[..., 0] = 3.0 + 0.1 * (xx + 3.0) + 2.0  # r + g(v + r)
    inner = (slice(2, -2), slice(2, -6))  # v + r inside the grid (remap replicates the border beyond it)
    np.testing.assert_allclose(result.flow[inner], expected[inner], atol=1e-4)
    assert np.abs(result.flow[inner][..., 0] - (g + residual.shift)[inner][..., 0]).min() > 0.29  # not the other order
    assert residual.seen[0].shape == (h, w, 3)  # the network ran on the pre-warped image (fixed grid)


def test_valid_output_without_a_rig_marks_samples_outside_the_moving_image() -> None:
    """`valid` can be asked for without a rig too: then it is where the network's flow samples inside the
    moving image (mono8, 255/0), like the rig's mask in form."""
    proc = PairProcessor(_ConstantResidual((-5.0, 0.0)), 'rgb_lwir')  # type: ignore[arg-type]
    moving = np.full((30, 40, 3), 7, np.uint8)
    out = proc.run(moving, np.zeros((30, 40), np.uint16), 'mono16', ['flow', 'valid']).outputs
    valid, encoding = out['valid']
    assert encoding == 'mono8' and valid.shape == (30, 40)
    assert not valid[:, :5].any() and (valid[:, 5:] == 255).all()  # x - 5 < 0 in the first five columns


def test_geometry_only_needs_no_model_and_residual_on_needs_one(rig_file: Path) -> None:
    stage = GeometricStage(Rig.load(rig_file))
    PairProcessor(None, 'rgb_depth', geometry=stage, residual=False)
    with pytest.raises(ValueError, match='registrar'):
        PairProcessor(None, 'rgb_depth', geometry=stage, residual=True)


def test_evaluate_with_a_rig_and_a_depth_column(scene: Scene, rig_file: Path, tmp_path: Path) -> None:
    """`nmr evaluate --rig` without --model: the geometric flow, scored against the truth; a row without
    depth uses the plane model (and is counted as such)."""
    from nmr.evaluation.cli import evaluate

    folder = tmp_path / 'pairs'
    folder.mkdir()
    cv2.imwrite(str(folder / 'moving.png'), cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / 'fixed.png'), scene.lwir)
    gt, gt_valid = scene.gt['rgb_lwir']
    np.save(folder / 'flow.npy', gt)
    cv2.imwrite(str(folder / 'valid.png'), gt_valid.astype(np.uint8) * 255)
    np.save(folder / 'depth.npy', scene.depth)  # metres, 0 = none
    cv2.imwrite(str(folder / 'depth_mm.png'), np.round(scene.depth * 1000).astype(np.uint16))
    with (folder / 'manifest.csv').open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['name', 'moving', 'fixed', 'flow', 'valid', 'fixed_kind', 'depth'])
        writer.writerow(['npy', 'moving.png', 'fixed.png', 'flow.npy', 'valid.png', 'lwir', 'depth.npy'])
        writer.writerow(['png', 'moving.png', 'fixed.png', 'flow.npy', 'valid.png', 'lwir', 'depth_mm.png'])
        writer.writerow(['none', 'moving.png', 'fixed.png', 'flow.npy', 'valid.png', 'lwir', ''])
    report = evaluate(None, folder / 'manifest.csv', rig=rig_file, log=lambda _t: None)
    epe = {p['name']: p['epe'] for p in report['pairs']}
    assert report['geometric_sources'] == {'depth': 2, 'plane': 1}
    assert epe['npy'] < 0.3 and epe['png'] < 0.3  # (holes of the LWIR view filled from the neighbours)
    assert epe['none'] > 2 * epe['npy']  # the plane model ignores the parallax
    rig_valid = {p['name']: p['epe_where_rig_valid'] for p in report['pairs']}
    assert rig_valid['npy'] < 0.05 and rig_valid['png'] < 0.05, rig_valid  # exact where depth reaches
    json.dumps(report)


# -- the node, a separate process over DDS ---------------------------------------------------------------------


@pytest.fixture()
def rig_node(rig_file: Path, tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip('rclpy')
    from nmr.ros.testing import RosHarness, ros_env, start_node, stop_node

    ros_env()
    log = tmp_path / 'node.log'
    params = {'rig': str(rig_file), 'residual': False, 'models.rgb_lwir': str(tmp_path / 'none.onnx'),
              'models.rgb_depth': str(tmp_path / 'none.onnx'), 'outputs': ['registered', 'flow']}
    proc = start_node(params, log, extra_args=['-r', '__ns:=/nmr_rig'])
    harness = RosHarness('nmr_test_rig')
    try:
        yield proc, harness, log
    finally:
        harness.close()
        code = stop_node(proc)
        text = log.read_text()
        assert 'Traceback' not in text, text[-3000:]
        assert code == 0, text[-2000:]


@pytest.mark.ros
def test_the_node_with_a_rig_publishes_registered_flow_and_valid(rig_node: Any, scene: Scene) -> None:
    """No model files exist: with residual false the node needs none; `valid` is added to the outputs."""
    _proc, harness, log = rig_node
    outputs = [f'/nmr_rig/{p}/{o}' for p in ('rgb_lwir', 'rgb_depth') for o in ('registered', 'flow', 'valid')]
    for topic in TOPICS.values():
        harness.publisher(topic, reliable=True)
    harness.subscribe(outputs)
    harness.wait_matched(30.0)
    images = {'rgb': (scene.rgb, 'rgb8'), 'lwir': (scene.lwir, 'mono16'), 'depth': (scene.depth, '32FC1')}
    stamp, deadline = BASE_NS, time.monotonic() + 30.0
    while not all(harness.received(t) for t in outputs):
        missing = [t for t in outputs if not harness.received(t)]
        assert time.monotonic() < deadline, f'no {missing} after 30 s: {log.read_text()[-2000:]}'
        for s in ('depth', 'rgb', 'lwir'):
            harness.publish_image(TOPICS[s], *images[s], stamp, FRAME_IDS[s])
        harness.spin(0.2)
        stamp += SECOND // 10
    from nmr.data.encodings import image_to_numpy

    for pair in ('rgb_lwir', 'rgb_depth'):
        flow_msg = harness.received(f'/nmr_rig/{pair}/flow')[0]
        valid_msg = next(m for m in harness.received(f'/nmr_rig/{pair}/valid')
                         if m.header.stamp == flow_msg.header.stamp)
        assert valid_msg.encoding == 'mono8' and flow_msg.encoding == '32FC2'
        _check_against_truth(scene, pair, image_to_numpy(flow_msg), image_to_numpy(valid_msg) > 0)
    text = log.read_text()
    assert 'geometry only, no network' in text and 'does not exist' not in text, text[-2000:]
