"""Flow and depth through a depth map: back-project each pixel, move it to the other camera, project it.

Why it is cheap: everything is numpy in float32 over blocks of rows (a few dozen passes over the pixels),
the rays of each camera (rotated by the rig's fixed pose) are cached, and the z-buffer is one
``np.minimum.at`` over the pixels' cell indices plus a few whole-image minima.

Occlusion rule (flow_through_depth): the fixed depth is splatted into the moving view, each point into
the 2x2 moving pixels around its projection, keeping the smallest depth (z-buffer): a surface stays
closed up to a magnification of 2, so what lies behind it cannot show through its resampling cracks. A
fixed pixel is visible in the moving camera when its depth there is at most ``zbuf * (1 + occlusion_tol)``
at its nearest moving pixel, plus the depth change the same surface makes across one moving pixel (its
local slope: the smaller of the one-sided differences of the moving-frame depth along x and along y,
added, scaled by the fixed/moving focal ratio when the moving view is coarser). Without the slope term a
slanted surface seen at a grazing angle (the road near the horizon) would occlude itself; taking the
smaller one-sided difference keeps a depth edge from inflating the tolerance of the pixels beside it.
The footprint makes a background pixel within a pixel of a nearer surface's edge in the moving view
count as occluded (as the synthetic rig's ground truth also does): conservative, by at most a pixel.
"""

from __future__ import annotations

import functools

import numpy as np

from nmr.geometry.camera import CameraModel, cached_rays
from nmr.geometry.pose import Pose

#: relative depth disagreement up to which two neighbours of a one-pixel crack count as one surface
CRACK_TOL = 0.02


#: how far (pixels) outside ``[0, size - 1]`` a match may fall from float32 rounding and still be inside
BORDER_EPS = 1e-3

#: rows per block: whole-image temporaries (1.3 MB each at 640x512) cost a page-faulting mmap per numpy
#: operation; blocks of ~20 k pixels stay in the allocator's heap and in cache (about 3x faster)
BLOCK_PIXELS = 20_000


def _check_depth(cam: CameraModel, depth: np.ndarray, what: str) -> np.ndarray:
    d = np.asarray(depth)
    if d.shape != cam.hw:
        raise ValueError(f'{what}: depth has shape {d.shape}, the camera is {cam.height}x{cam.width}')
    if d.dtype != np.float32 and d.dtype != np.float64:
        raise ValueError(f'{what}: depth must be float metres, got {d.dtype} (convert uint16 millimetres first)')
    return d


def _blocks(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, BLOCK_PIXELS // max(1, width))
    return [(a, min(height, a + step)) for a in range(0, height, step)]


@functools.lru_cache(maxsize=8)
def _rotated_rays(cam: CameraModel, R_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``R @ ray`` per pixel as three contiguous read-only HxW float32 planes (cached: a rig's pose is fixed,
    so per frame only the depth scaling and the projection remain)."""
    R = np.frombuffer(R_bytes, dtype=np.float64).reshape(3, 3)
    rays = cached_rays(cam).astype(np.float64)
    out = []
    for i in range(3):
        plane = (R[i, 0] * rays[..., 0] + R[i, 1] * rays[..., 1] + R[i, 2]).astype(np.float32)
        plane.setflags(write=False)
        out.append(plane)
    return out[0], out[1], out[2]


def _project_block(
    src: CameraModel, dst: CameraModel, pose: Pose, depth: np.ndarray, a: int, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, z)`` float32 in ``dst`` of src rows ``a:b`` (NaN where no depth or behind dst)."""
    ax, ay, az = _rotated_rays(src, pose.R.tobytes())
    t = pose.t.astype(np.float32)
    d = depth[a:b].astype(np.float32, copy=False)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        # X_dst = R @ (depth * ray) + t = depth * (R @ ray) + t
        zm = az[a:b] * d
        zm += t[2]
        zm[(zm <= 0) | ~((d > 0) & (d < np.inf))] = np.nan  # behind the dst camera, or no depth (0, NaN, inf)
        inv = np.float32(1.0) / zm
        xm = ax[a:b] * d
        xm += t[0]
        xm *= inv
        ym = ay[a:b] * d
        ym += t[1]
        ym *= inv
    xd, yd = dst.distort_normalized(xm, ym)
    u = xd * np.float32(dst.fx)
    u += np.float32(dst.cx)
    v = yd * np.float32(dst.fy)
    v += np.float32(dst.cy)
    return u, v, zm


def _cells(dst: CameraModel, u: np.ndarray, v: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Flat index of the dst pixel nearest to ``(u, v)``; the dummy cell ``H * W`` where not ``inside``."""
    cell = np.floor(v + np.float32(0.5)).astype(np.float64) * dst.width
    cell += np.floor(u + np.float32(0.5))
    cell[~inside] = dst.height * dst.width
    return cell.astype(np.intp)


def _zbuffer(cam: CameraModel, cells: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``HxW`` float32 nearest depth per cell (inf where nothing landed); the dummy cell ``H * W`` is dropped."""
    zbuf = np.full(cam.height * cam.width + 1, np.inf, dtype=np.float32)
    with np.errstate(invalid='ignore'):  # NaN depths only ever land in the dummy cell
        np.minimum.at(zbuf, cells.reshape(-1), z.reshape(-1))
    return zbuf[:-1].reshape(cam.hw)


def fill_cracks(zbuf: np.ndarray, tol: float = CRACK_TOL) -> np.ndarray:
    """Fill one-pixel holes (inf) of a z-buffer whose two opposite neighbours agree (in place, returned).

    A hole is filled when two opposite neighbours (left/right, up/down or either diagonal) both hold a
    depth and those differ by at most ``tol`` relative; it gets their mean in inverse depth (exact on a
    plane, whose inverse depth is affine in the pixel coordinates). Where several pairs qualify, the
    nearest fill wins. Holes at the boundary between two surfaces (neighbours disagree) and wider holes stay holes.
    """
    H, W = zbuf.shape
    if H < 3 or W < 3:
        return zbuf
    flat = zbuf.reshape(-1)
    holes = np.flatnonzero(flat == np.inf)
    if holes.size == 0:
        return zbuf
    x = holes % W
    holes = holes[(x > 0) & (x < W - 1) & (holes >= W) & (holes < (H - 1) * W)]
    best = np.full(holes.shape, np.inf, dtype=np.float32)
    for step in (1, W, W + 1, W - 1):  # left/right, up/down and the two diagonals
        a, b = flat[holes - step], flat[holes + step]
        with np.errstate(invalid='ignore', over='ignore'):
            ok = (a < np.inf) & (b < np.inf) & (np.abs(a - b) <= np.float32(tol) * np.minimum(a, b))
            fill = np.where(ok, np.float32(2.0) * a * b / (a + b), np.float32(np.inf))
        np.minimum(best, fill, out=best)
    flat[holes] = best  # still inf where neither pair qualified
    return zbuf


def _slope_at(z: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """At flat pixel indices ``idx`` of ``z``: the smaller one-sided |dz| along x plus along y.

    NaN-aware: where one side has no depth the other counts, where neither has, 0. Taking the smaller side
    keeps a depth edge beside the pixel from inflating its tolerance.
    """
    H, W = z.shape
    flat = z.reshape(-1)
    zc = flat[idx]
    x = idx % W
    y = idx // W
    total = np.zeros(idx.shape, dtype=np.float32)
    for lo_ok, hi_ok, step in ((x > 0, x < W - 1, 1), (y > 0, y < H - 1, W)):
        lo = np.abs(zc - flat[np.where(lo_ok, idx - step, idx)])
        hi = np.abs(flat[np.where(hi_ok, idx + step, idx)] - zc)
        lo[~lo_ok] = np.nan
        hi[~hi_ok] = np.nan
        total += np.nan_to_num(np.fmin(lo, hi), nan=0.0)
    return total


def flow_through_depth(
    fixed: CameraModel,
    moving: CameraModel,
    moving_from_fixed: Pose,
    depth_fixed_m: np.ndarray,
    occlusion_tol: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Flow on the FIXED grid from the fixed camera's depth (metres) and the rig geometry.

    Returns ``(flow HxWx2 float32, valid HxW bool)`` in the SPEC convention: ``registered(v) =
    moving(v + flow(v))``, pixels, channel 0 = dx. ``valid`` is False where the fixed pixel has no depth
    (0 / NaN / inf), projects behind or outside the moving image (``0 <= m <= size - 1`` give or take
    ``BORDER_EPS`` = 0.001 px of rounding: where bilinear sampling is defined), or is occluded in the
    moving view (module docstring: z-buffer of the fixed depth splatted into the moving view, relative
    tolerance ``occlusion_tol``). Invalid pixels carry flow 0. Both cameras' distortion is honoured (the
    fixed rays are undistorted, the moving projection distorted). The same camera with the identity pose
    gives exactly zero flow, valid wherever depth is.
    """
    depth = _check_depth(fixed, depth_fixed_m, 'flow_through_depth')
    H, W = fixed.hw
    if fixed == moving and not moving_from_fixed.t.any() and np.array_equal(moving_from_fixed.R, np.eye(3)):
        # the same camera: exactly zero (the general path would leave float32 rounding of ~1e-5 px)
        with np.errstate(invalid='ignore'):
            return np.zeros((H, W, 2), dtype=np.float32), (depth > 0) & (depth < np.inf)
    Wm, Hm = moving.width, moving.height
    u = np.empty((H, W), dtype=np.float32)
    v = np.empty((H, W), dtype=np.float32)
    z = np.empty((H, W), dtype=np.float32)
    cells = np.empty((H, W), dtype=np.intp)  # the nearest moving pixel (dummy Hm * Wm when not inside)
    # z-buffer with a 2x2 footprint (the pixel centres around each projection): a surface stays closed up
    # to a magnification of 2, so nothing behind it shows through its resampling cracks. Points strictly
    # between pixel centres (nearly all) go into ``corner`` at their top-left cell, which is then spread
    # right and down with three shifted minima (cheap whole-image passes); the rest (on a centre's row or
    # column) are splatted cell by cell.
    n_cells = Hm * Wm + Wm + 2  # + room for the dummy's footprint
    corner = np.full(n_cells, np.inf, dtype=np.float32)
    zbuf = np.full(n_cells, np.inf, dtype=np.float32)
    blocks = _blocks(H, W)
    lo, hx, hy = -BORDER_EPS, Wm - 1 + BORDER_EPS, Hm - 1 + BORDER_EPS
    for a, b in blocks:
        ub, vb, zb = _project_block(fixed, moving, moving_from_fixed, depth, a, b)
        u[a:b], v[a:b], z[a:b] = ub, vb, zb
        with np.errstate(invalid='ignore'):
            ins = (ub >= lo) & (ub <= hx) & (vb >= lo) & (vb <= hy)  # False on NaN
            uc = np.clip(np.where(ins, ub, np.float32(0.0)), 0, Wm - 1)
            vc = np.clip(np.where(ins, vb, np.float32(0.0)), 0, Hm - 1)
        fu, fv = np.floor(uc), np.floor(vc)
        c00 = fv.astype(np.intp) * Wm + fu.astype(np.intp)
        c00[~ins] = Hm * Wm
        between_u = uc > fu
        between_v = vc > fv
        cells[a:b] = c00 + (uc - fu >= 0.5) + (vc - fv >= 0.5) * Wm
        both = between_u & between_v & ins
        with np.errstate(invalid='ignore'):  # NaN depths land only in the dummy cells
            np.minimum.at(corner, c00[both], zb[both])
            rest = ~both & ins
            if rest.any():
                c, zr = c00[rest], zb[rest]
                du = between_u[rest].astype(np.intp)
                dv = between_v[rest].astype(np.intp) * Wm
                for cc in (c, c + du, c + dv, c + du + dv):
                    np.minimum.at(zbuf, cc, zr)
    # spread ``corner`` over its 2x2 footprint: cell (y, x) takes the corners of (y, x), (y, x-1),
    # (y-1, x), (y-1, x-1); a corner cell is never in the last row or column (the point lies strictly
    # before the next centre), so nothing wraps around
    img = zbuf[: Hm * Wm].reshape(Hm, Wm)
    cor = corner[: Hm * Wm].reshape(Hm, Wm)
    np.minimum(img, cor, out=img)
    np.minimum(img[:, 1:], cor[:, :-1], out=img[:, 1:])
    np.minimum(img[1:, :], cor[:-1, :], out=img[1:, :])
    np.minimum(img[1:, 1:], cor[:-1, :-1], out=img[1:, 1:])
    inside = cells != Hm * Wm
    limit = np.float32(1.0 + occlusion_tol)
    with np.errstate(invalid='ignore'):
        valid = inside & (z <= zbuf[cells] * limit)
    # the pixels that failed the plain test get the slope allowance (few: occluded ones and grazing ones)
    again = np.flatnonzero(inside & ~valid)
    if again.size:
        scale = np.float32(max(1.0, fixed.fx / moving.fx, fixed.fy / moving.fy))
        zf = z.reshape(-1)
        allowance = _slope_at(z, again) * scale
        valid.reshape(-1)[again] = zf[again] <= zbuf[cells.reshape(-1)[again]] * limit + allowance
    flow = np.zeros((H, W, 2), dtype=np.float32)
    for a, b in blocks:
        ok = valid[a:b]
        fb = flow[a:b]
        np.subtract(u[a:b], np.arange(W, dtype=np.float32)[None, :], out=fb[..., 0], where=ok)
        np.subtract(v[a:b], np.arange(a, b, dtype=np.float32)[:, None], out=fb[..., 1], where=ok)
    return flow, valid


def reproject_depth(src: CameraModel, dst: CameraModel, dst_from_src: Pose, depth_src_m: np.ndarray) -> np.ndarray:
    """Depth (metres along dst's optical axis, float32, 0 = none) of the src depth map seen from dst.

    Each src pixel with a depth is moved into dst and splatted into the dst pixel nearest to its
    projection; the nearest surface wins (z-buffer). Holes are 0. One-pixel cracks that resampling leaves
    (dst finer than src, or a slanted surface) are filled only where both opposite neighbours hold a depth
    and agree within 2 % (:func:`fill_cracks`, inverse-depth mean); nothing else is interpolated, so
    depth edges stay sharp and disocclusions stay holes. A dst pixel's value is the depth of the surface
    point that landed within half a pixel of its centre (on a slanted surface, off by up to half a pixel's
    depth change).
    """
    depth = _check_depth(src, depth_src_m, 'reproject_depth')
    H, W = src.hw
    z = np.empty((H, W), dtype=np.float32)
    cells = np.empty((H, W), dtype=np.intp)
    for a, b in _blocks(H, W):
        ub, vb, zb = _project_block(src, dst, dst_from_src, depth, a, b)
        z[a:b] = zb
        with np.errstate(invalid='ignore'):
            inside = (ub >= -0.5) & (ub < dst.width - 0.5) & (vb >= -0.5) & (vb < dst.height - 0.5)
        cells[a:b] = _cells(dst, ub, vb, inside)
    zbuf = fill_cracks(_zbuffer(dst, cells, z))
    zbuf[zbuf == np.inf] = 0.0
    return zbuf
