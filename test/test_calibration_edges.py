"""nmr.calibration.edges: the RGB-depth pose from depth silhouettes matched to RGB edges.

A toy rig rendered exactly (ray casting): fronto-parallel boxes of different brightness at 1.5-4 m in front
of a textured wall at 6 m, seen by a depth camera and by an RGB camera 4 cm and ~1.5 deg away."""

from __future__ import annotations

import numpy as np
import pytest

from nmr.calibration import edges
from nmr.calibration.bagdata import Moment
from nmr.geometry.camera import CameraModel
from nmr.geometry.pose import Pose

DEPTH = CameraModel(160, 120, 140.0, 140.0, 79.5, 59.5, (0.01, 0.0, 0.0, 0.0, 0.0))
RGB = CameraModel(200, 150, 170.0, 170.0, 99.0, 75.0)
TRUE = Pose.from_rpy_deg(0.8, -1.2, 2.5, (-0.04, 0.008, 0.003))  # T_rgb_depth (roll 2.5 deg: the grid searches it)
WALL_M = 6.0


def _scene(rng: np.random.Generator) -> list[tuple[float, float, float, float, float, float]]:
    """Boxes (x0, x1, y0, y1, z, brightness) in the depth camera's frame."""
    boxes = []
    for _ in range(4):
        z = float(rng.uniform(1.5, 4.0))
        w, h = rng.uniform(0.2, 0.5, 2) * z
        x0, y0 = rng.uniform(-0.5, 0.5, 2) * z - (w / 2, h / 2)
        boxes.append((x0, x0 + w, y0, y0 + h, z, float(rng.uniform(0.05, 0.35) + 0.6 * (rng.random() < 0.5))))
    return sorted(boxes, key=lambda b: b[4])


def _cast(cam: CameraModel, pose_depth_from_cam: Pose, boxes: list, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth along the depth camera's z, brightness) per pixel of ``cam``, ``ss`` x ``ss`` samples averaged."""
    H, W = cam.hw
    first = 0.5 / ss - 0.5  # the first sample's offset from the pixel centre
    gx, gy = np.meshgrid(np.arange(W * ss) / ss + first, np.arange(H * ss) / ss + first)
    n = cam.undistort_points(np.stack([gx, gy], -1).reshape(-1, 2))
    d = np.concatenate([n, np.ones((len(n), 1))], 1) @ pose_depth_from_cam.R.T
    o = pose_depth_from_cam.t
    s = (WALL_M - o[2]) / d[:, 2]
    z = np.full(len(d), WALL_M)
    p = o + s[:, None] * d
    grey = 0.5 + 0.08 * np.sin(p[:, 0] * 9.0) * np.cos(p[:, 1] * 7.0)
    for x0, x1, y0, y1, bz, b in reversed(boxes):  # far to near: the nearest box is painted last
        s = (bz - o[2]) / d[:, 2]
        p = o + s[:, None] * d
        hit = (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1) & (s > 0)
        z[hit], grey[hit] = bz, b
    z = z.reshape(H * ss, W * ss)[ss // 2::ss, ss // 2::ss]  # depth: the centre sample (no mixed depths)
    grey = grey.reshape(H, ss, W, ss).mean(axis=(1, 3))
    return z.astype(np.float32), grey.astype(np.float32)


def _moments(n: int = 8, seed: int = 3) -> list[Moment]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        boxes = _scene(rng)
        depth, _ = _cast(DEPTH, Pose.identity(), boxes, 1)
        _, rgb = _cast(RGB, TRUE.inverse(), boxes, 3)
        out.append(Moment(0, 0.0, depth, [rgb, rgb], [0.0, 1.0], np.zeros((*RGB.hw, 2), np.float32)))
    return out


def _errors(pose: Pose) -> tuple[float, float]:
    d = Pose.from_matrix(pose.matrix() @ TRUE.inverse().matrix())
    return d.angle_deg(), 1000 * float(np.linalg.norm(pose.t - TRUE.t))


@pytest.fixture(scope='module')
def moments() -> list[Moment]:
    return _moments()


def test_the_edge_measure_recovers_the_depth_pose_better_than_ngf(moments: list[Moment],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ems = [edges.prepare(m.depth, m.rgb[0], m.rgb_flow, 0.0, DEPTH, RGB) for m in moments if m.depth is not None]
    assert all(len(e.points) > 100 for e in ems)
    tau = 2.0
    assert edges.chamfer_score(ems, RGB, TRUE, tau) < edges.chamfer_score(ems, RGB, Pose.identity(), tau)
    pose, kept = edges.fit_depth_pose(ems, RGB)
    rot, trans = _errors(pose)
    assert rot < 0.1 and trans < 8.0, (rot, trans)  # measured: 0.07 deg, 2.0 mm
    assert len(kept) >= 6
    # the NGF of RGB vs inverse depth (what calibrate used before) on the same moments, same start; a
    # smaller search and fewer iterations to keep the test short (the full ones: 0.98 deg, 40 mm)
    import nmr.calibration.solver as solver
    from nmr.calibration.objective import Cameras, pose_of
    from nmr.calibration.solver import Options, Problem, Progress, Solver, _tensors, initial_params

    monkeypatch.setattr(solver, 'ROT_GRID_DEG', np.arange(-2.0, 2.01, 1.0))
    monkeypatch.setattr(solver, 'ITERS', (8, 8, 8, 8))

    sv = Solver(Problem(moments, Cameras(RGB, None, DEPTH), Options(), list(range(len(moments)))),
                Progress(1, True), lambda m: None)
    p = sv.stage_rgb_depth_ngf(initial_params())
    R, t = pose_of(_tensors(p, ()), 'depth')
    old_rot, old_trans = _errors(Pose(R.double().numpy(), t.double().numpy()))
    assert rot < old_rot / 3 and trans < old_trans / 3, ((rot, trans), (old_rot, old_trans))  # NGF: ~0.95 deg, 40 mm


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match='depth has shape') as err:
        edges.silhouette_points(np.zeros((10, 10), np.float32), DEPTH)
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='RGB image has shape'):
        edges.prepare(np.zeros(DEPTH.hw, np.float32), np.zeros((5, 5), np.float32), None, 0.0, DEPTH, RGB)
    flat = [edges.prepare(np.full(DEPTH.hw, 3.0, np.float32), np.full(RGB.hw, 0.5, np.float32), None, 0.0,
                          DEPTH, RGB) for _ in range(4)]
    with pytest.raises(ValueError, match='show depth edges') as err:
        edges.fit_depth_pose(flat, RGB)
    assert '\n' not in str(err.value)
