"""Flow and depth through a depth map: back-project each pixel, move it to the other camera, project it.

Why it is cheap: everything is whole-image numpy in float32 without masked reads or writes (NaN carries
"no depth", flat indices are computed in float and cast once), about forty passes over the pixels; the
rays of each camera (rotated by the rig's fixed pose) are cached; each z-buffer is one ``np.minimum.at``
over the pixels' cell indices plus a few shifted whole-image minima. The image-sized temporaries are
reused from the heap frame after frame (nmr.geometry.heap), not page-faulted anew: on the loaded 2-core
machine that alone was 3-10x (it was why this module used to work on blocks of rows).

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
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from nmr.geometry.camera import CameraModel, cached_rays
from nmr.geometry.heap import retain_freed_blocks
from nmr.geometry.pose import Pose

#: relative depth disagreement up to which two neighbours of a one-pixel crack count as one surface
CRACK_TOL = 0.02


#: how far (pixels) outside ``[0, size - 1]`` a match may fall from float32 rounding and still be inside
BORDER_EPS = 1e-3



def _check_depth(cam: CameraModel, depth: np.ndarray, what: str) -> np.ndarray:
    d = np.asarray(depth)
    if d.shape != cam.hw:
        raise ValueError(f'{what}: depth has shape {d.shape}, the camera is {cam.height}x{cam.width}')
    if d.dtype != np.float32 and d.dtype != np.float64:
        raise ValueError(f'{what}: depth must be float metres, got {d.dtype} (convert uint16 millimetres first)')
    return d


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


@functools.lru_cache(maxsize=8)
def _pixel_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 column ``(1, W)`` and row ``(H, 1)`` coordinates (broadcast, never materialised)."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


#: rows per block of the projection: its ~15-40 element-wise passes (more with a lens's distortion
#: polynomial) stay in the CPU cache on blocks of ~16 k pixels; on whole 640x512 images each pass streams
#: 1.3 MB from memory (a distorted projection was ~1.3x slower whole)
BLOCK_PIXELS = 16_384


def _project(src: CameraModel, dst: CameraModel, pose: Pose,
             depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, z)`` HxW float32 in ``dst`` of every src pixel (NaN where no depth or behind dst), computed
    in blocks of rows (``BLOCK_PIXELS``) into the whole-image outputs."""
    retain_freed_blocks()  # the temporaries below reuse the heap (module docstring)
    h, w = depth.shape
    u = np.empty((h, w), np.float32)
    v = np.empty((h, w), np.float32)
    z = np.empty((h, w), np.float32)
    rays = _rotated_rays(src, pose.R.tobytes())
    step = max(1, BLOCK_PIXELS // max(1, w))
    for a in range(0, h, step):
        b = min(h, a + step)
        _project_rows(dst, pose, rays, depth[a:b], u[a:b], v[a:b], z[a:b], a)
    return u, v, z


def _project_rows(dst: CameraModel, pose: Pose, rays: tuple[np.ndarray, np.ndarray, np.ndarray],
                  depth: np.ndarray, u: np.ndarray, v: np.ndarray, z: np.ndarray, row: int) -> None:
    """One block of :func:`_project`, rows ``row:row + len(depth)``, written into ``u, v, z``.

    About fifteen passes over the pixels on the cached rotated rays (plus the distortion polynomial when
    ``dst`` has one); NaN carries "no depth" through.
    """
    rows = slice(row, row + depth.shape[0])
    ax, ay, az = (r[rows] for r in rays)
    tx, ty, tz = (np.float32(c) for c in pose.t)
    d = depth.astype(np.float32, copy=False)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        # no depth (0, NaN, inf) -> NaN (a where on a coherent mask is cheap)
        d = np.where((d > 0) & (d < np.inf), d, np.float32(np.nan))
        # X_dst = R @ (depth * ray) + t = depth * (R @ ray) + t
        np.multiply(az, d, out=z)
        z += tz
        behind = z <= 0
        if behind.any():
            z[behind] = np.nan
        inv = np.float32(1.0) / z
        x = ax * d
        x += tx
        x *= inv
        y = ay * d
        y += ty
        y *= inv
    xd, yd = dst.distort_normalized(x, y)
    np.multiply(xd, np.float32(dst.fx), out=u)
    u += np.float32(dst.cx)
    np.multiply(yd, np.float32(dst.fy), out=v)
    v += np.float32(dst.cy)


def _floor_inside(u: np.ndarray, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``u`` clamped to ``[0, hi]`` (NaN -> 0: fmax ignores NaN) as (float32 floor, fraction above it)."""
    uc = np.fmax(u, np.float32(0.0))
    np.fmin(uc, np.float32(hi), out=uc)
    fu = np.floor(uc)
    uc -= fu
    return fu, uc


def _splat_2x2(width: int, height: int, fu: np.ndarray, fv: np.ndarray, fru: np.ndarray, frv: np.ndarray,
               z: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """HxW (``height x width``) z-buffer: each inside point's ``z`` in the dst pixel centres around it.

    The footprint is the 2x2 centres around the point, or the two (one) it lies between when it sits
    exactly on a centre's row or column. One ``np.minimum.at`` puts each point at its top-left centre
    in one of four planes by footprint kind (on a centre / between along x / along y / both); a few
    shifted whole-image minima then spread each plane over its footprint (nothing wraps around: a point
    strictly before the next centre never has its top-left centre in the last row or column).
    """
    n = height * width
    exact = (fru == 0) | (frv == 0)
    exact &= inside
    if not exact.any():  # the usual case: every point strictly between four centres, one plane suffices
        return _splat_2x2_between(width, height, fu, fv, z, inside)
    # the key in float (exact below 2**24, else float64; cheaper than intp arithmetic), one cast at the end
    ftype = np.float32 if 4 * n < 2**24 else np.float64
    key: NDArray[np.floating[Any]] = fv.astype(ftype)
    key *= ftype(width)
    key += fu
    np.add(key, (fru > 0) * ftype(n), out=key)
    np.add(key, (frv > 0) * ftype(2 * n), out=key)
    # outside points go to a dummy cell past the four planes (arithmetic: cheaper than a masked write)
    key *= inside
    np.add(key, (~inside) * ftype(4 * n), out=key)
    planes = np.full(4 * n + 1, np.inf, dtype=np.float32)
    with np.errstate(invalid='ignore'):  # NaN depths only ever land in the dummy cell
        np.minimum.at(planes, key.astype(np.intp).reshape(-1), z.reshape(-1))
    on, along_x, along_y, both = planes[: 4 * n].reshape(4, height, width)
    # what spreads down: along_y at its centre, both at its centre and the one right of it
    down = np.minimum(along_y, both)
    np.minimum(down[:, 1:], both[:, :-1], out=down[:, 1:])
    # what stays in its row: on, along_x at its centre and the one right of it
    zbuf = np.minimum(on, along_x)
    np.minimum(zbuf[:, 1:], along_x[:, :-1], out=zbuf[:, 1:])
    np.minimum(zbuf, down, out=zbuf)
    np.minimum(zbuf[1:], down[:-1], out=zbuf[1:])
    return zbuf


def _splat_2x2_between(width: int, height: int, fu: np.ndarray, fv: np.ndarray, z: np.ndarray,
                      inside: np.ndarray) -> np.ndarray:
    """:func:`_splat_2x2` when no inside point lies on a centre's row or column: one plane, spread right
    and down (the same result, a third of the work)."""
    n = height * width
    ftype = np.float32 if n < 2**24 else np.float64  # exact integers (see _splat_2x2)
    key: NDArray[np.floating[Any]] = fv.astype(ftype)
    key *= ftype(width)
    key += fu
    key *= inside
    np.add(key, (~inside) * ftype(n), out=key)
    plane = np.full(n + 1, np.inf, dtype=np.float32)
    with np.errstate(invalid='ignore'):  # NaN depths only ever land in the dummy cell
        np.minimum.at(plane, key.astype(np.intp).reshape(-1), z.reshape(-1))
    zbuf = plane[:n].reshape(height, width)
    np.minimum(zbuf[:, 1:], zbuf[:, :-1], out=zbuf[:, 1:])  # numpy buffers the overlapping operands
    np.minimum(zbuf[1:], zbuf[:-1], out=zbuf[1:])
    return zbuf


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
    # candidates first, on boolean images (cheap): interior holes with some opposite pair both holding a
    # depth; a depth camera's large holes (out of range, shadows) are mostly not candidates
    has = zbuf < np.inf
    pair = np.zeros((H, W), dtype=bool)  # full size with a False border: flat indices directly
    inner = pair[1:-1, 1:-1]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # left/right, up/down and the two diagonals
        inner |= has[1 - dy:H - 1 - dy, 1 - dx:W - 1 - dx] & has[1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx]
    inner &= ~has[1:-1, 1:-1]
    holes = np.flatnonzero(pair)  # (np.nonzero of a 2-D image costs ~5x more)
    if holes.size == 0:
        return zbuf
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
    u, v, z = _project(fixed, moving, moving_from_fixed, depth)
    with np.errstate(invalid='ignore'):  # NaN (no depth, behind) compares False: not inside
        lo = np.float32(-BORDER_EPS)
        inside = u >= lo
        inside &= u <= np.float32(Wm - 1 + BORDER_EPS)
        inside &= v >= lo
        inside &= v <= np.float32(Hm - 1 + BORDER_EPS)
    fu, fru = _floor_inside(u, Wm - 1)
    fv, frv = _floor_inside(v, Hm - 1)
    # z-buffer with a 2x2 footprint (module docstring): nothing behind a surface shows through its cracks
    zbuf = _splat_2x2(Wm, Hm, fu, fv, fru, frv, z, inside).reshape(-1)
    # each point's nearest moving pixel (float arithmetic as in _splat_2x2, one cast)
    ftype = np.float32 if Hm * Wm < 2**24 else np.float64
    index: NDArray[np.floating[Any]] = fv.astype(ftype)
    index += frv >= 0.5
    index *= ftype(Wm)
    index += fu
    index += fru >= 0.5
    cells = index.astype(np.intp)
    limit = np.float32(1.0 + occlusion_tol)
    near = zbuf.take(cells)
    near *= limit
    with np.errstate(invalid='ignore'):
        valid = z <= near
    valid &= inside
    # the pixels that failed the plain test get the slope allowance (few: occluded ones and grazing ones)
    again = np.flatnonzero(inside & ~valid)
    if again.size:
        scale = np.float32(max(1.0, fixed.fx / moving.fx, fixed.fy / moving.fy))
        zf = z.reshape(-1)
        allowance = _slope_at(z, again) * scale
        valid.reshape(-1)[again] = zf[again] <= near.reshape(-1)[again] + allowance
    # flow = target - pixel, 0 where not valid: NaN there first (0 / 0), then one pass replaces NaN by 0
    # (cheaper than a masked copy)
    xs, ys = _pixel_coords(H, W)
    with np.errstate(invalid='ignore', divide='ignore'):
        nan_off = np.float32(0.0) / valid.view(np.uint8).astype(np.float32)
    u -= xs
    u += nan_off
    v -= ys
    v += nan_off
    flow = cv2.patchNaNs(cv2.merge([u, v]), 0.0)
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
    u, v, z = _project(src, dst, dst_from_src, depth)
    with np.errstate(invalid='ignore'):  # NaN compares False: not inside
        inside = u >= np.float32(-0.5)
        inside &= u < np.float32(dst.width - 0.5)
        inside &= v >= np.float32(-0.5)
        inside &= v < np.float32(dst.height - 0.5)
    u += np.float32(0.5)  # nearest pixel = floor(u + 0.5)
    v += np.float32(0.5)
    fu, _ = _floor_inside(u, dst.width - 1)
    fv, _ = _floor_inside(v, dst.height - 1)
    n = dst.height * dst.width
    ftype = np.float32 if n < 2**24 else np.float64  # exact integers (see _splat_2x2)
    cells: NDArray[np.floating[Any]] = fv.astype(ftype)
    cells *= ftype(dst.width)
    cells += fu
    cells *= inside
    np.add(cells, (~inside) * ftype(n), out=cells)  # the dummy cell n, dropped
    zbuf = np.full(n + 1, np.inf, dtype=np.float32)
    with np.errstate(invalid='ignore'):  # NaN depths only ever land in the dummy cell
        np.minimum.at(zbuf, cells.astype(np.intp).reshape(-1), z.reshape(-1))
    zbuf = fill_cracks(zbuf[:n].reshape(dst.hw))
    zbuf[zbuf == np.inf] = 0.0
    return zbuf
