"""The geometry layer: camera model, poses, flow and depth through depth maps, the rig file.

Small images and closed-form scenes, so the whole file runs in a few seconds on 2 cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from nmr.errors import ConfigError
from nmr.geometry import CameraModel, Pose, flow_through_depth, reproject_depth
from nmr.geometry.pose import matrix_to_rotvec, rotvec_to_matrix
from nmr.geometry.reproject import fill_cracks
from nmr.geometry.rig import Rig
from nmr.synth.cameras import default_rig, rotation_xyz
from nmr.synth.groundtruth import gt_flow
from nmr.synth.render import render_geometry
from nmr.synth.scene import generate_scene

EXAMPLE = Path(__file__).resolve().parents[1] / 'config' / 'rig.example.yaml'
DIST = (-0.28, 0.09, 0.0012, -0.0008, -0.012)  # a real wide-angle lens, barrel


def _grid(cam: CameraModel) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(cam.width), np.arange(cam.height)), axis=-1).astype(np.float64)


# ---------------------------------------------------------------------------------------------- camera
def test_rays_project_back_to_their_pixels_with_distortion() -> None:
    cam = CameraModel(160, 128, 110.0, 112.0, 81.3, 62.7, DIST)
    rays = cam.pixel_rays()
    assert rays.shape == (128, 160, 3) and rays.dtype == np.float32 and np.all(rays[..., 2] == 1)
    back = cam.project(rays.astype(np.float64) * 3.5)  # any depth along the ray
    assert np.max(np.abs(back - _grid(cam))) < 1e-3
    # and the other way: arbitrary (sub-pixel) points through undistort_points
    pix = np.random.default_rng(0).uniform([0, 0], [159, 127], (500, 2))
    xy = cam.undistort_points(pix)
    pts = np.concatenate([xy, np.ones((500, 1))], axis=1) * 2.0
    assert np.max(np.abs(cam.project(pts) - pix)) < 1e-3
    # distortion really is applied: the corner moves by pixels
    assert np.max(np.abs(CameraModel(160, 128, 110.0, 112.0, 81.3, 62.7).project(pts) - pix)) > 2.0


def test_project_behind_the_camera_is_nan_and_pixel_centres_follow_opencv() -> None:
    cam = CameraModel(64, 48, 50.0, 50.0, 31.5, 23.5)
    out = cam.project(np.array([[0.0, 0.0, 2.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]))
    assert out[0].tolist() == [31.5, 23.5]  # the optical axis hits the image centre, between pixels 31 and 32
    assert np.isnan(out[1:]).all()


def test_scaled_keeps_pixel_centres_and_matches_the_synth() -> None:
    cam = CameraModel(640, 480, 466.0, 466.0, 319.5, 239.5, DIST)
    half = cam.scaled(0.5)
    assert (half.width, half.height, half.fx, half.cx, half.cy, half.dist) == (320, 240, 233.0, 159.5, 119.5, DIST)
    # a point projects where the resized image shows it: u' = (u + 0.5) * s - 0.5
    p = np.array([0.3, -0.2, 2.0])
    u = cam.project(p)
    assert np.allclose(half.project(p), (u + 0.5) * 0.5 - 0.5)
    synth = default_rig().lwir
    small = synth.scaled(0.37)
    got = synth.model.resized(small.width, small.height)
    assert got == small.model


def test_camera_info_round_trip_and_errors() -> None:
    cam = CameraModel(640, 512, 480.5, 481.0, 323.0, 252.5, DIST)
    info = cam.to_camera_info()
    assert CameraModel.from_camera_info(info) == cam

    class Msg:  # the rclpy / rosbags message shape: lower-case k, d
        width, height, k, d, distortion_model = 640, 512, info['K'], [*DIST, 0.0, 0.0, 0.0], 'rational_polynomial'

    assert CameraModel.from_camera_info(Msg()) == cam
    Msg.d = [*DIST, 0.1, 0.0, 0.0]
    with pytest.raises(ConfigError, match='rational_polynomial'):
        CameraModel.from_camera_info(Msg(), where='/lwir/camera_info')
    with pytest.raises(ConfigError, match='/x: missing D'):
        CameraModel.from_camera_info({'K': info['K'], 'width': 1, 'height': 1}, where='/x')


# ---------------------------------------------------------------------------------------------- pose
def test_pose_algebra_and_conversions() -> None:
    a = Pose.from_rpy_deg(0.6, -0.8, 0.3, (0.06, -0.04, 0.01))
    b = Pose.from_rotvec((0.2, -0.1, 0.05), (1.0, 2.0, 3.0))
    assert np.allclose(a.R, rotation_xyz(0.6, -0.8, 0.3))  # the synth's convention
    assert (a @ a.inverse()).allclose(Pose.identity(), atol=1e-12)
    pts = np.random.default_rng(1).normal(size=(10, 3))
    assert np.allclose((a @ b).apply(pts), a.apply(b.apply(pts)))
    assert np.allclose(a.inverse().apply(a.apply(pts)), pts)
    assert a.apply(pts.astype(np.float32)).dtype == np.float32
    for rv in ([0.0, 0.0, 0.0], [1e-10, 0.0, 0.0], [0.3, -0.2, 0.1], [math.pi - 1e-7, 0, 0], [0, 2.0, 2.0]):
        assert np.allclose(matrix_to_rotvec(rotvec_to_matrix(rv)), rv, atol=1e-6)
    assert Pose.from_matrix(a.matrix()).allclose(a)


@pytest.mark.parametrize(
    ('R', 'match'),
    [(np.diag([1.0, 1.0, -1.0]), 'reflection'), (np.eye(3) * 1.01, 'orthonormal'), (np.eye(2), 'shape')],
)
def test_pose_rejects_non_rotations(R: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pose(R, np.zeros(3))


# ---------------------------------------------------------------------------------------------- flow
def _depth_with_holes(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    d = (2.0 + 0.01 * xx + 0.02 * yy).astype(np.float32)
    d[5:9, 10:20] = 0.0
    d[20, 3] = np.nan
    d[30, 40] = np.inf
    return d


def test_same_camera_identity_pose_gives_exactly_zero_flow() -> None:
    cam = CameraModel(80, 60, 70.0, 70.0, 39.5, 29.5, DIST)
    d = _depth_with_holes(60, 80)
    flow, valid = flow_through_depth(cam, cam, Pose.identity(), d)
    assert not flow.any()
    assert np.array_equal(valid, np.isfinite(d) & (d > 0))
    # the general path (a pose that is not bit-identical to the identity) agrees to float32 rounding
    flow, valid2 = flow_through_depth(cam, cam, Pose(np.eye(3), (0.0, 0.0, 1e-12)), d)
    assert np.abs(flow).max() < 1e-3
    assert np.array_equal(valid2, valid)


def test_baseline_over_a_fronto_parallel_plane_gives_fx_b_over_z() -> None:
    cam = CameraModel(96, 64, 400.0, 400.0, 47.5, 31.5)
    b, Z = 0.05, 4.0  # dx = 400 * 0.05 / 4 = 5 px
    d = np.full((64, 96), Z, dtype=np.float32)
    flow, valid = flow_through_depth(cam, cam, Pose(np.eye(3), (b, 0.0, 0.0)), d)
    expected_valid = np.zeros((64, 96), dtype=bool)
    expected_valid[:, : 96 - 5] = True  # columns whose match lies beyond the last moving column
    assert np.array_equal(valid, expected_valid)
    assert np.allclose(flow[valid][:, 0], 5.0, atol=1e-4) and np.allclose(flow[valid][:, 1], 0.0, atol=1e-4)
    assert not flow[~valid].any()


def test_a_box_in_front_of_a_plane_invalidates_exactly_the_strip_it_hides() -> None:
    cam = CameraModel(96, 64, 400.0, 400.0, 47.5, 31.5)
    b, z_back, z_box = 0.05, 4.0, 2.0  # background moves 5 px, the box 10 px
    d = np.full((64, 96), z_back, dtype=np.float32)
    y0, y1, x0, x1 = 20, 40, 30, 50
    d[y0:y1, x0:x1] = z_box
    flow, valid = flow_through_depth(cam, cam, Pose(np.eye(3), (b, 0.0, 0.0)), d)
    expected = np.ones((64, 96), dtype=bool)
    expected[:, 96 - 5 :] = False  # leave the image
    expected[y0:y1, x1 : x1 + 5] = False  # background beside the box: behind the box in the moving view
    assert np.array_equal(valid, expected)
    assert np.allclose(flow[y0:y1, x0:x1, 0], 10.0, atol=1e-4)


@pytest.mark.parametrize('fixed_name', ['lwir', 'depth'])
def test_flow_through_depth_equals_the_synthetic_rigs_ground_truth(fixed_name: str) -> None:
    """Both views at the same instant: the synth's exact flow is pure geometry, which is what we compute."""
    scene = generate_scene(5, 1.0)
    rig = default_rig(0.25)
    moving = render_geometry(scene, rig.rgb, 0.5)
    fixed = render_geometry(scene, getattr(rig, fixed_name), 0.5)
    gt, gt_valid = gt_flow(scene, fixed, moving)
    true_rig = Rig.from_synth(rig)
    flow, valid = flow_through_depth(
        true_rig.camera(fixed_name), true_rig.camera('rgb'), true_rig.moving_from_fixed(fixed_name), fixed.depth
    )
    both = valid & gt_valid
    assert both.mean() > 0.5
    assert np.abs(flow[both] - gt[both]).max() <= 0.05
    # the occlusion rules differ only at silhouettes: the synth knows the moving view's true depth and
    # drops a pixel when the bilinear inverse depth at its match disagrees; we have only the fixed depth,
    # splatted with a 2x2 footprint. Each drops a pixel-wide seam the other keeps (a few % at this small
    # size, where silhouettes and thin poles are a large share of the pixels); everywhere else they agree.
    assert (gt_valid & ~valid).mean() < 0.025, (gt_valid & ~valid).mean()
    assert (valid & ~gt_valid).mean() < 0.05, (valid & ~gt_valid).mean()


def test_a_finer_moving_view_does_not_let_the_background_show_through_the_box() -> None:
    """Moving twice as fine as fixed: the box's splats alone would leave every other moving pixel empty,
    and the background behind it would look visible there; the footprint closes the surface."""
    fixed = CameraModel(48, 32, 200.0, 200.0, 23.5, 15.5)
    moving = fixed.scaled(2.0)
    d = np.full((32, 48), 4.0, dtype=np.float32)
    y0, y1, x0, x1 = 10, 20, 15, 25
    d[y0:y1, x0:x1] = 2.0
    _, valid = flow_through_depth(fixed, moving, Pose(np.eye(3), (0.05, 0.0, 0.0)), d)
    # moving x = 2 x_f + 0.5 + shift, shift 5 (background) / 10 (box) moving px: the box covers the
    # background's fixed columns [x1, x1 + 2) in the moving view
    assert not valid[y0:y1, x1 : x1 + 2].any()
    assert valid[y0:y1, x0:x1].all() and valid[y0:y1, x1 + 2 : 45].all() and valid[y0:y1, :x0].all()
    assert valid[:y0, :45].all() and valid[y1:, :45].all() and not valid[:, 45:].any()


def test_grazing_ground_does_not_occlude_itself() -> None:
    """A road seen at a grazing angle: its relative depth change per pixel exceeds occlusion_tol near the
    horizon, and it must still be visible (the slope allowance)."""
    cam = CameraModel(160, 120, 150.0, 150.0, 79.5, 59.5)
    h = 1.3
    rows = np.arange(120, dtype=np.float64)
    with np.errstate(divide='ignore'):
        z = np.where(rows > 60.5, h * cam.fy / (rows - cam.cy), 0.0)  # ground plane y = h below the camera
    d = np.repeat(z[:, None], 160, axis=1).astype(np.float32)
    pose = Pose(rotation_xyz(0.0, 0.5, 0.0), (0.06, -0.04, 0.0))
    _, valid = flow_through_depth(cam, cam, pose, d)
    fine = (d > 0) & (d < 60)  # beyond: the depth itself is too coarse (float32, near the horizon row)
    inside = fine & (np.arange(160)[None, :] < 150) & (np.arange(160)[None, :] > 10)
    assert valid[inside].mean() > 0.995


# ---------------------------------------------------------------------------------------------- depth
def _plane_depth(cam: CameraModel, n: np.ndarray, dist: float) -> np.ndarray:
    """Depth of the plane ``n . X = dist`` in ``cam`` (0 where the ray misses it)."""
    r = cam.pixel_rays().astype(np.float64)
    den = r @ n
    with np.errstate(divide='ignore'):
        z = np.where(den > 1e-9, dist / den, 0.0)
    return z.astype(np.float32)


@pytest.mark.parametrize('dst_scale', [1.0, 1.3])
def test_reproject_depth_of_a_plane_is_the_plane(dst_scale: float) -> None:
    src = CameraModel(120, 90, 100.0, 100.0, 59.5, 44.5, DIST)
    dst = CameraModel(120, 90, 95.0, 96.0, 61.0, 43.0, (0.05, 0.0, 0.0, 0.0, 0.0)).scaled(dst_scale)
    n = np.array([0.1, -0.2, 1.0])
    n /= np.linalg.norm(n)
    d = 3.0
    dst_from_src = Pose.from_rpy_deg(1.0, -2.0, 0.5, (-0.05, 0.02, 0.01))
    depth = reproject_depth(src, dst, dst_from_src, _plane_depth(src, n, d))
    # the plane in dst: n' . X' = d' with n' = R n, d' = d + n' . t
    n2 = dst_from_src.R @ n
    expected = _plane_depth(dst, n2, d + n2 @ dst_from_src.t)
    # where src sees the plane in dst: project dst pixels back into src
    X = dst.pixel_rays().astype(np.float64) * expected[..., None]
    back = src.project(dst_from_src.inverse().apply(X))
    seen = (back[..., 0] >= 0.5) & (back[..., 0] <= src.width - 1.5) & (back[..., 1] >= 0.5)
    seen &= back[..., 1] <= src.height - 1.5
    # one-pixel cracks are filled; what is left are two-pixel gaps where the magnification (distortion of
    # the src lens at its corners times the 1.3 finer dst grid) exceeds 1.5
    assert (depth[seen] > 0).mean() > 0.98
    got = depth[seen & (depth > 0)]
    want = expected[seen & (depth > 0)]
    # nearest-pixel splat: the value of a point within half a pixel; the plane's depth changes by < 1 % per pixel
    assert np.max(np.abs(got / want - 1.0)) < 0.01
    assert np.median(np.abs(got / want - 1.0)) < 0.003


def test_reproject_depth_keeps_the_nearest_surface_and_leaves_disocclusions_empty() -> None:
    cam = CameraModel(96, 64, 400.0, 400.0, 47.5, 31.5)
    d = np.full((64, 96), 4.0, dtype=np.float32)
    d[20:40, 30:50] = 2.0
    out = reproject_depth(cam, cam, Pose(np.eye(3), (0.05, 0.0, 0.0)), d)
    assert np.all(out[20:40, 40:60] == 2.0)  # the box, 10 px to the right, covers the background behind it
    # uncovered background: nobody saw it, a hole (not interpolated); only its two corners touch a diagonal
    # pair of background pixels, and get the background's depth
    assert np.all(out[21:39, 35:40] == 0.0)
    assert np.count_nonzero(out[20:40, 35:40]) == 2 and set(out[20:40, 35:40].ravel().tolist()) == {0.0, 4.0}
    assert np.all(out[:, 5:35][out[:, 5:35] > 0] == 4.0)
    assert not out[:, :5].any()


def test_fill_cracks_fills_only_between_agreeing_neighbours() -> None:
    z = np.full((5, 7), np.inf, dtype=np.float32)
    z[2, 1], z[2, 3] = 2.0, 2.02  # agree within 2 % -> (2, 2) filled
    z[2, 4], z[2, 6] = 2.0, 3.0  # disagree -> (2, 5) stays a hole
    fill_cracks(z)
    assert z[2, 2] == pytest.approx(2.0 * 2 * 2.02 / 4.02)
    assert z[2, 5] == np.inf and z[1, 2] == np.inf


# ---------------------------------------------------------------------------------------------- rig file
def test_rig_file_round_trips_exactly(tmp_path: Path) -> None:
    rig = Rig.from_synth(default_rig(), {'lwir': 0.0031, 'depth': -0.0005})
    path = tmp_path / 'rig.yaml'
    rig.save(path)
    again = Rig.load(path)
    assert again == rig
    again.save(tmp_path / 'again.yaml')
    assert (tmp_path / 'again.yaml').read_text() == path.read_text()
    assert not list(tmp_path.glob('*.tmp'))
    # the true synthetic poses come back
    for name in ('lwir', 'depth'):
        cam = getattr(default_rig(), name)
        pose = again.moving_from_fixed(name)
        assert np.allclose(pose.R, cam.R_ref_cam, atol=1e-12) and np.allclose(pose.t, cam.t_ref_cam)
    assert again.time_offset_s('lwir') == 0.0031
    assert again.between('lwir', 'depth').allclose(again.pose('lwir').inverse() @ again.pose('depth'), atol=1e-12)


def test_the_example_rig_file_loads() -> None:
    rig = Rig.load(EXAMPLE)
    assert rig.names() == ['rgb', 'lwir', 'depth']
    assert rig.camera('lwir').dist != (0.0,) * 5
    assert 0.5 < rig.pose('lwir').angle_deg() < 3.0


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _set(doc: dict, path: str, value: object) -> dict:
    *head, last = path.split('.')
    node = doc
    for key in head:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()

BAD = [
    ('cameras.lwir.fx', _DELETE, 'cameras.lwir.fx', 'missing'),
    ('cameras.lwir.fx', 'wide', 'cameras.lwir.fx', 'must be a number'),
    ('cameras.lwir.fx', True, 'cameras.lwir.fx', 'must be a number'),
    ('cameras.lwir.fy', -480.0, 'cameras.lwir.fy', 'positive'),
    ('cameras.depth.width', 0, 'cameras.depth.width', 'positive'),
    ('cameras.depth.height', 480.5, 'cameras.depth.height', 'whole number'),
    ('cameras.lwir.cx', float('nan'), 'cameras.lwir.cx', 'finite'),
    ('cameras.lwir.translation', [0.06, float('inf'), 0.0], 'cameras.lwir.translation[1]', 'finite'),
    ('cameras.lwir.distortion', [0.1, 0.0, 0.0, 0.0], 'cameras.lwir.distortion', '5 numbers'),
    ('cameras.lwir.rotation', [0.01, 0.02], 'cameras.lwir.rotation', '3 numbers'),
    ('cameras.lwir.rotation', [0.6, -0.8, 90.0], 'cameras.lwir.rotation', 'exceeds pi'),
    ('cameras.lwir.time_offset_s', '3 ms', 'cameras.lwir.time_offset_s', 'must be a number'),
    ('cameras.rgb.translation', [0.01, 0.0, 0.0], 'cameras.rgb.translation', 'reference'),
    ('cameras.thermal', {'width': 1}, 'cameras.thermal', 'unknown camera name'),
    ('cameras.lwir.fov', 67.0, 'cameras.lwir.fov', 'unknown key'),
    ('extrinsics', {}, 'extrinsics', 'unknown key'),
    ('format_version', 2, 'format_version', 'not supported'),
    ('format_version', _DELETE, 'format_version', 'missing'),
    ('cameras.rgb', _DELETE, 'cameras.rgb', 'missing'),
    ('cameras.lwir', [1, 2], 'cameras.lwir', 'must be a map'),
]


@pytest.mark.parametrize(('key', 'value', 'field', 'what'), BAD, ids=[f'{b[0]}={b[1]!r}'[:40] for b in BAD])
def test_bad_rig_files_get_one_line_errors(tmp_path: Path, key: str, value: object, field: str, what: str) -> None:
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(_set(_example(), key, value), sort_keys=False))
    with pytest.raises(ConfigError) as err:
        Rig.load(path)
    msg = str(err.value)
    assert '\n' not in msg
    assert msg.startswith(f'{path}: {field}:'), msg
    assert what in msg, msg


def test_unreadable_rig_files_get_one_line_errors(tmp_path: Path) -> None:
    for text, what in (('cameras: [unclosed\n  fx: 1', 'not valid YAML'), ('- 1\n- 2\n', 'expected a map')):
        path = tmp_path / 'rig.yaml'
        path.write_text(text)
        with pytest.raises(ConfigError, match=what) as err:
            Rig.load(path)
        assert '\n' not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match='does not exist'):
        Rig.load(tmp_path / 'nope.yaml')
    with pytest.raises(ConfigError, match="no camera 'lwir'"):
        Rig.loads(yaml.safe_dump({'format_version': 1, 'cameras': {'rgb': _example()['cameras']['rgb']}})).camera(
            'lwir'
        )


def test_numbers_written_without_a_dot_are_numbers() -> None:
    """YAML 1.1 reads ``1e-3`` as text; a user writing it means a number."""
    doc = _example()
    text = yaml.safe_dump(doc, sort_keys=False).replace('time_offset_s: 0.004', 'time_offset_s: 4e-3')
    assert '4e-3' in text
    assert Rig.loads(text).time_offset_s('lwir') == 0.004


def test_the_heap_keeps_freed_blocks_once_per_process() -> None:
    """nmr.geometry.heap: on glibc (this project's Linux) mallopt takes both thresholds; a second call is a no-op."""
    import platform

    from nmr.geometry.heap import retain_freed_blocks

    if platform.libc_ver()[0] != 'glibc':
        pytest.skip('not glibc')
    assert retain_freed_blocks() is True
    assert retain_freed_blocks() is True


def test_the_2x2_splat_equals_a_brute_force_footprint() -> None:
    """nmr.geometry.reproject's z-buffer: each inside point's depth in the pixel centres around it (2x2, or
    the two / one it lies on), nearest wins; both the general path (points on a centre's row or column) and
    the one-plane path (none) against a per-point loop."""
    from nmr.geometry.reproject import _floor_inside, _splat_2x2

    rng = np.random.default_rng(1)
    h, w = 30, 40
    for trial in range(20):
        u = rng.uniform(-1, w, 300).astype(np.float32)
        v = rng.uniform(-1, h, 300).astype(np.float32)
        if trial % 2:  # some points exactly on a centre's column / row
            on_col, on_row = rng.random(300) < 0.3, rng.random(300) < 0.3
            u[on_col] = np.round(u[on_col])
            v[on_row] = np.round(v[on_row])
        z = rng.uniform(1, 5, 300).astype(np.float32)
        inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        fu, fru = _floor_inside(u, w - 1)
        fv, frv = _floor_inside(v, h - 1)
        expected = np.full((h, w), np.inf, np.float32)
        for i in np.flatnonzero(inside):
            for x in {math.floor(u[i]), math.ceil(u[i])}:
                for y in {math.floor(v[i]), math.ceil(v[i])}:
                    expected[y, x] = min(expected[y, x], z[i])
        assert np.array_equal(_splat_2x2(w, h, fu, fv, fru, frv, z, inside), expected), trial
