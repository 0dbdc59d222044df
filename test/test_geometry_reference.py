"""nmr.geometry.reproject's whole-image numpy against a per-point reference on random scenes.

The fast path spreads a z-buffer with an erosion, keeps out-of-image points in a ring of cells, gathers with
cv2.remap and works the exact-on-a-centre points apart; the reference below does what the module docstring
says one point at a time. Both project with the same float32 arithmetic (so the comparison can be exact:
which cell a point lands in at a tie depends on the last bit), everything after that is independent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nmr.geometry import CameraModel, Pose, flow_through_depth, reproject_depth
from nmr.geometry.reproject import BORDER_EPS, CRACK_TOL, match_through_depth

DIST = (-0.21, 0.06, 0.0009, -0.0006, -0.01)


def _project_f32(src: CameraModel, dst: CameraModel, pose: Pose, depth: np.ndarray) -> tuple[np.ndarray, ...]:
    """u, v, z of every src pixel (NaN where no depth or behind), the float32 operations in the module's order."""
    rays = src.pixel_rays().astype(np.float64)
    a = [(pose.R[i, 0] * rays[..., 0] + pose.R[i, 1] * rays[..., 1] + pose.R[i, 2]).astype(np.float32)
         for i in range(3)]
    t = [np.float32(c) for c in pose.t]
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        d = np.where((depth > 0) & (depth < np.inf), depth, np.nan).astype(np.float32)
        z = a[2] * d + t[2]
        z[z <= 0] = np.nan
        inv = np.float32(1.0) / z
        x = (a[0] * d + t[0]) * inv
        y = (a[1] * d + t[1]) * inv
        xd, yd = dst.distort_normalized(x, y)
        u = xd * np.float32(dst.fx) + np.float32(dst.cx)
        v = yd * np.float32(dst.fy) + np.float32(dst.cy)
        u[np.isnan(z)] = np.nan
        v[np.isnan(z)] = np.nan
    return u, v, z


def _reference_flow(fixed: CameraModel, moving: CameraModel, pose: Pose, depth: np.ndarray,
                    tol: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """flow_through_depth one point at a time: 2x2 footprint z-buffer, nearest-pixel test, slope allowance."""
    u, v, z = _project_f32(fixed, moving, pose, depth)
    H, W = fixed.hw
    Hm, Wm = moving.hw
    zbuf = np.full((Hm, Wm), np.inf, np.float32)
    inside = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            if not (-BORDER_EPS <= u[y, x] <= Wm - 1 + BORDER_EPS and -BORDER_EPS <= v[y, x] <= Hm - 1 + BORDER_EPS):
                continue
            inside[y, x] = True
            uc, vc = min(max(float(u[y, x]), 0.0), Wm - 1), min(max(float(v[y, x]), 0.0), Hm - 1)
            for cx in {math.floor(uc), math.ceil(uc)}:
                for cy in {math.floor(vc), math.ceil(vc)}:
                    zbuf[cy, cx] = min(zbuf[cy, cx], z[y, x])
    valid = np.zeros((H, W), bool)
    flow = np.zeros((H, W, 2), np.float32)
    scale = np.float32(max(1.0, fixed.fx / moving.fx, fixed.fy / moving.fy))
    for y, x in zip(*np.nonzero(inside)):
        uc, vc = min(max(float(u[y, x]), 0.0), Wm - 1), min(max(float(v[y, x]), 0.0), Hm - 1)
        nu, nv = math.floor(uc) + (uc - math.floor(uc) >= 0.5), math.floor(vc) + (vc - math.floor(vc) >= 0.5)
        near = zbuf[nv, nu] * np.float32(1.0 + tol)
        ok = bool(z[y, x] <= near)
        if not ok:  # the slope allowance: per axis the smaller one-sided |dz| (a missing side does not count)
            total = np.float32(0.0)
            for dy, dx in ((0, 1), (1, 0)):
                sides = [abs(z[y, x] - z[y - dy, x - dx]) if (y - dy >= 0 and x - dx >= 0) else np.nan,
                         abs(z[y + dy, x + dx] - z[y, x]) if (y + dy < H and x + dx < W) else np.nan]
                finite = [s for s in sides if not np.isnan(s)]
                total += np.float32(min(finite)) if finite else np.float32(0.0)
            ok = bool(z[y, x] <= near + total * scale)
        if ok:
            valid[y, x] = True
            flow[y, x] = (u[y, x] - np.float32(x), v[y, x] - np.float32(y))
    return flow, valid


def _reference_reproject(src: CameraModel, dst: CameraModel, pose: Pose, depth: np.ndarray) -> np.ndarray:
    """reproject_depth one point at a time: nearest cell (floor(u + 0.5) of the float32 sum), nearest depth
    wins; then one-pixel cracks between two agreeing opposite neighbours get their inverse-depth mean."""
    u, v, z = _project_f32(src, dst, pose, depth)
    h, w = dst.hw
    zbuf = np.full((h, w), np.inf, np.float32)
    for y, x in zip(*np.nonzero(np.isfinite(z))):
        if -0.5 <= u[y, x] < w - 0.5 and -0.5 <= v[y, x] < h - 0.5:
            cx, cy = math.floor(u[y, x] + np.float32(0.5)), math.floor(v[y, x] + np.float32(0.5))
            zbuf[cy, cx] = min(zbuf[cy, cx], z[y, x])
    out = zbuf.copy()
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            if zbuf[y, x] < np.inf:
                continue
            best = np.float32(np.inf)
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                a, b = zbuf[y - dy, x - dx], zbuf[y + dy, x + dx]
                if a < np.inf and b < np.inf and abs(a - b) <= np.float32(CRACK_TOL) * min(a, b):
                    best = min(best, np.float32(2.0) * a * b / (a + b))
            out[y, x] = best
    out[out == np.inf] = 0.0
    return out


def _random_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Depth: a slanted floor, a few boxes in front, holes of every kind (0, NaN, inf, negative)."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = (2.0 + 3.0 * (h - yy) / h + 0.4 * xx / w).astype(np.float32)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        d[y0:y0 + rng.integers(4, 16), x0:x0 + rng.integers(4, 16)] = rng.uniform(0.6, 1.8)
    holes = rng.random((h, w))
    d[holes < 0.03] = 0.0
    d[(holes >= 0.03) & (holes < 0.04)] = np.nan
    d[(holes >= 0.04) & (holes < 0.05)] = np.inf
    d[(holes >= 0.05) & (holes < 0.055)] = -1.0  # nonsense, read as no depth
    d[: h // 10] = 0.0  # no depth at the top (sky)
    return d


@pytest.mark.parametrize('trial', range(6))
def test_flow_and_depth_through_depth_equal_a_per_point_reference(trial: int) -> None:
    rng = np.random.default_rng(100 + trial)
    h, w = 36, 48
    fixed = CameraModel(w, h, 40.0, 41.0, 23.2, 17.9, DIST if trial % 2 else (0.0,) * 5)
    scale = (1.0, 1.4, 0.7)[trial % 3]  # moving finer / coarser than fixed: magnification both ways
    moving = CameraModel(w, h, 38.0, 38.5, 24.1, 17.3, (0.05, -0.01, 0.0, 0.0, 0.0) if trial % 3 else (0.0,) * 5)
    moving = moving.scaled(scale)
    roll, pitch, yaw = (float(a) for a in rng.uniform(-2, 2, 3))
    pose = Pose.from_rpy_deg(roll, pitch, yaw, rng.uniform(-0.08, 0.08, 3))
    depth = _random_scene(rng, h, w)
    given = depth.copy()
    flow, valid = flow_through_depth(fixed, moving, pose, depth)
    ref_flow, ref_valid = _reference_flow(fixed, moving, pose, depth)
    assert 0.3 < ref_valid.mean() < 0.98, ref_valid.mean()  # a scene with both visible and hidden pixels
    assert np.array_equal(valid, ref_valid)
    assert np.array_equal(flow, ref_flow)
    # the stage's entry point: the same matches, not zeroed where invalid
    u, v, valid2 = match_through_depth(fixed, moving, pose, depth)
    assert np.array_equal(valid2, valid)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    assert np.array_equal((u - xs)[valid], flow[..., 0][valid]) and np.array_equal((v - ys)[valid], flow[..., 1][valid])
    # depth the other way: fixed -> moving
    out = reproject_depth(fixed, moving, pose, depth)
    ref = _reference_reproject(fixed, moving, pose, depth)
    assert (ref > 0).mean() > 0.3
    assert np.array_equal(out, ref)
    inf_holes = reproject_depth(fixed, moving, pose, depth, none=np.inf)
    assert np.array_equal(np.where(inf_holes == np.inf, 0.0, inf_holes), ref)
    assert np.array_equal(depth, given, equal_nan=True)  # the input is read only


def test_points_exactly_on_pixel_centres_keep_their_narrow_footprint() -> None:
    """A fronto-parallel plane at an integer disparity puts every point exactly on a moving centre (the
    footprint is then one centre, not 2x2); a nearer box on the same grid hides exactly what it covers."""
    cam = CameraModel(40, 30, 100.0, 100.0, 19.5, 14.5)
    depth = np.full((30, 40), 2.0, np.float32)  # 100 * 0.08 / 2 = 4 px
    depth[10:20, 10:20] = 1.0  # 8 px
    pose = Pose(np.eye(3), np.array([0.08, 0.0, 0.0]))
    flow, valid = flow_through_depth(cam, cam, pose, depth)
    assert not (depth - 2.0)[:10].any()  # a depth without holes is used as it is: it must stay unchanged
    ref_flow, ref_valid = _reference_flow(cam, cam, pose, depth)
    assert np.array_equal(valid, ref_valid) and np.array_equal(flow, ref_flow)
    # the box lands on moving columns [18, 28) and hides the background's fixed columns [20, 24) (x + 4 in
    # [24, 28)); a 2x2 footprint would reach column 28 and hide fixed column 24 as well
    assert not valid[10:20, 20:24].any() and valid[10:20, 24:36].all() and valid[:10, :36].all()


def test_fill_holes_reads_nothing_of_the_holes() -> None:
    """The geometric stage hands fill_holes a parallax zeroed in the holes (``holes_are_zero``) or with NaN
    or anything there: the result is the same, bit for bit, and finite."""
    from nmr.geometry.registration import fill_holes

    rng = np.random.default_rng(3)
    h, w = 61, 83
    yy, xx = np.mgrid[0:h, 0:w]
    flow = np.stack([np.sin(xx / 9.0) * 3, np.cos(yy / 7.0) * 2], -1).astype(np.float32)
    valid = (rng.random((h, w)) < 0.6) & ~((xx > 20) & (xx < 40))
    zeroed = np.where(valid[..., None], flow, np.float32(0.0))
    junk = np.where(valid[..., None], flow, np.float32(np.nan))
    junk[~valid & (rng.random((h, w)) < 0.5)] = 1e30
    a = fill_holes(zeroed.copy(), valid, holes_are_zero=True)
    b = fill_holes(junk, valid)
    assert np.array_equal(a, b) and np.isfinite(a).all()
    assert np.array_equal(a[valid], flow[valid])


def test_cell_keys_stay_exact_on_planes_of_2_to_the_24_cells_and_more() -> None:
    """The flat z-buffer indices are computed in float32 (exact below 2**24) and in float64 beyond."""
    from nmr.geometry.reproject import _cell_keys

    row = 5002  # a 5000 x 5000 image with its ring
    fu = np.array([[0.0, 4999.0, 1.0]], np.float32)
    fv = np.array([[4999.0, 4999.0, 3353.0]], np.float32)
    keys = _cell_keys(fu, fv, row, row * row, row + 1)
    assert keys.tolist() == [int(v) * row + int(u) + row + 1 for u, v in zip(fu[0], fv[0])]
    small = _cell_keys(fu[:, 2:] - 1.0, fv[:, 2:] - 3000.0, 1000, 1000 * 400)
    assert small.tolist() == [353 * 1000]
