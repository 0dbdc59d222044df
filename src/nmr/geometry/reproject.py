"""Flow and depth through a depth map: back-project each pixel, move it to the other camera, project it.

Why it is cheap (docs/performance.md, "Registration through the rig"): whole images of float32, no
blocks, no boolean-mask reads or writes. What depends only on the rig is cached (each camera's rays
rotated by the rig's pose; the pixel-coordinate planes), so per frame a projection is about fifteen
passes over the pixels. Each z-buffer is one ``np.minimum.at`` over flat cell indices (one
``cv2.scaleAdd`` and one cast) into a plane with a ring of one cell around the image, so that points
outside the image (or without depth: NaN, patched into the ring) need no mask: the nearest-pixel one
(:func:`reproject_depth`) as it is, the 2x2-footprint one (:func:`flow_through_depth`) spread by one 2x2
erosion, with the few points that lie exactly on a pixel row or column put in afterwards. The occlusion
test reads the z-buffer with ``cv2.remap`` (nearest, on integer-valued maps: an exact gather). The results
are bitwise the same as those of the blockwise implementation before (same float32 operations in the same
order; test/test_geometry_reference.py checks them against a per-point reference). The image-sized
temporaries are reused from the heap frame after frame (nmr.geometry.heap), not page-faulted anew.

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

import cv2
import numpy as np

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
def pixel_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 HxW column and row coordinates of every pixel (full planes: a same-shape
    subtraction is ~2x faster than a broadcast one)."""
    xs = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :], (height, width)).copy()
    ys = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width)).copy()
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _project(src: CameraModel, dst: CameraModel, pose: Pose,
             depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, z)`` HxW float32 in ``dst`` of every src pixel: ``u, v`` NaN where the pixel has no depth (0,
    NaN, inf, negative) or lands behind dst, ``z`` NaN there too except at an infinite depth (+inf, which
    no z-buffer keeps).

    About fifteen passes over the pixels on the cached rotated rays (plus the distortion polynomial when
    ``dst`` has one), whole images. The arithmetic is the same, operation by operation, as before this
    module's rewrite for speed, so every result is bitwise the same: the nearest-pixel z-buffer of
    :func:`reproject_depth` picks among points that land within float32 rounding of a cell boundary, and
    an operation in another order would pick another one now and then.
    """
    retain_freed_blocks()  # the temporaries below reuse the heap (module docstring)
    ax, ay, az = _rotated_rays(src, pose.R.tobytes())
    tx, ty, tz = (np.float32(c) for c in pose.t)
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        none = d <= 0
        if none.any():  # 0 -> NaN (0 / 0), negative -> -inf (then behind), d / 1 = d elsewhere
            d = np.divide(d, ~none)
        # NaN and +inf need nothing: u, v come out NaN for them (inf * (1 / inf)), z NaN or +inf
        # X_dst = R @ (depth * ray) + t = depth * (R @ ray) + t
        z = np.multiply(az, d)
        z += tz
        behind = z <= 0
        if behind.any():
            z[behind] = np.nan
        inv = np.divide(np.float32(1.0), z)
        x = np.multiply(ax, d)
        x += tx
        x *= inv
        y = np.multiply(ay, d)  # (not into d: it may be the caller's depth)
        y += ty
        y *= inv
    xd, yd = dst.distort_normalized(x, y)
    u = np.multiply(xd, np.float32(dst.fx), out=inv)
    u += np.float32(dst.cx)
    v = np.multiply(yd, np.float32(dst.fy), out=xd if xd is not x else y)
    v += np.float32(dst.cy)
    return u, v, z


def _floor_inside(u: np.ndarray, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``u`` clamped to ``[0, hi]`` (NaN -> 0) as (float32 floor, fraction above it)."""
    uc = np.clip(u, np.float32(0.0), np.float32(hi))
    cv2.patchNaNs(uc, 0.0)  # (np.clip keeps NaN; np.fmax would not, at 3x the cost)
    fu = np.floor(uc)
    uc -= fu
    return fu, uc


def _cell_keys(fu: np.ndarray, fv: np.ndarray, row: int, cells: int, offset: int = 0) -> np.ndarray:
    """Flat indices ``fv * row + fu + offset`` (float32 integers, NaN-free; every index below ``cells``) as a
    flat intp array: one ``cv2.scaleAdd`` (exact while the indices stay below 2**24), one cast (float32 ->
    int32 -> intp is ~2x faster than float32 -> intp) and the offset added to the integers. Planes of 2**24
    cells or more (4096 x 4096 images) take float64."""
    if cells + abs(offset) >= 2**24:
        big = np.multiply(fv, float(row), dtype=np.float64)
        big += fu
        big += offset
        return big.astype(np.intp).reshape(-1)
    key = cv2.scaleAdd(fv, float(row), fu).astype(np.int32)
    if offset:
        key += offset
    return key.astype(np.intp).reshape(-1)


_ERODE_2X2 = np.ones((2, 2), np.uint8)
#: the largest float32 below 0.5 (exact as a double: cv2.threshold's float32 comparison is exact with it)
_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))


def _splat_2x2(width: int, height: int, fu: np.ndarray, fv: np.ndarray, fru: np.ndarray, frv: np.ndarray,
               z: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """HxW (``height x width``) z-buffer: each inside point's ``z`` in the dst pixel centres around it.

    The footprint is the 2x2 centres around the point, or the two (one) it lies between when it sits
    exactly on a centre's row or column (``fru`` / ``frv`` = 0). ``fu, fv``: the floors, clamped into the
    image and NaN-free (:func:`_floor_inside`). (:func:`match_through_depth` calls :func:`_zbuffer_2x2`
    directly, with what it has computed already; this wrapper and :func:`_floor_inside` are what
    test_geometry's brute-force footprint test drives the same z-buffer through.)
    """
    exact = np.flatnonzero(((fru == 0) | (frv == 0)) & inside)
    zs = np.where(inside, z, np.float32(np.inf))
    wide_u, wide_v = fru.reshape(-1)[exact] > 0, frv.reshape(-1)[exact] > 0
    return _zbuffer_2x2(width, height, fu, fv, zs, exact, wide_u, wide_v)[1:-1, 1:-1]


def _zbuffer_2x2(width: int, height: int, fu: np.ndarray, fv: np.ndarray, zs: np.ndarray, exact: np.ndarray,
                 wide_u: np.ndarray, wide_v: np.ndarray) -> np.ndarray:
    """The 2x2-footprint z-buffer (:func:`_splat_2x2`) with a ring of one cell: ``(height + 2) x (width + 2)``.

    ``zs``: each point's depth, +inf where it does not count (no NaN; overwritten at ``exact``); ``exact``:
    flat indices of the counting points that lie on a centre's row or column, ``wide_u`` / ``wide_v``
    there: whether they lie between two centres along x / y all the same. Every point goes to its top-left
    centre (one ``np.minimum.at``), one 2x2 erosion spreads it over its footprint; the exact points (a few
    per frame: float32 lands on an integer about once in 2**15, plus those clamped onto the border) are
    kept out of that and written into their one or two centres afterwards. The ring keeps every index in
    range without a mask.
    """
    wp = width + 2
    keys = _cell_keys(fu, fv, wp, (height + 2) * wp)  # relative to the ring's first inner cell, wp + 1
    values = zs.reshape(-1)
    if exact.size:
        ex_keys, ex_z = keys[exact], values[exact].copy()
        values[exact] = np.inf
    plane = np.full((height + 2) * wp, np.inf, dtype=np.float32)
    np.minimum.at(plane[wp + 1:], keys, values)
    zbuf = cv2.erode(plane.reshape(height + 2, wp), _ERODE_2X2, anchor=(1, 1), borderType=cv2.BORDER_REPLICATE)
    if exact.size:
        flat = zbuf.reshape(-1)[wp + 1:]
        np.minimum.at(flat, ex_keys, ex_z)
        np.minimum.at(flat, ex_keys[wide_u] + 1, ex_z[wide_u])
        np.minimum.at(flat, ex_keys[wide_v] + wp, ex_z[wide_v])
        both = wide_u & wide_v
        np.minimum.at(flat, ex_keys[both] + wp + 1, ex_z[both])
    return zbuf


def fill_cracks(zbuf: np.ndarray, tol: float = CRACK_TOL, margin: int = 1) -> np.ndarray:
    """Fill one-pixel holes (inf) of a z-buffer whose two opposite neighbours agree (in place, returned).

    A hole is filled when two opposite neighbours (left/right, up/down or either diagonal) both hold a
    depth and those differ by at most ``tol`` relative; it gets their mean in inverse depth (exact on a
    plane, whose inverse depth is affine in the pixel coordinates). Where several pairs qualify, the
    nearest fill wins. Holes at the boundary between two surfaces (neighbours disagree) and wider holes stay holes.
    Only pixels at least ``margin`` from the array's edge are filled (1: all but the border; 2 on an image
    with a ring of one cell around it, whose values are never read).
    """
    H, W = zbuf.shape
    m = margin
    if min(H, W) <= 2 * m:
        return zbuf
    flat = zbuf.reshape(-1)
    # candidates first, on boolean images (cheap): interior holes with some opposite pair both holding a
    # depth; a depth camera's large holes (out of range, shadows) are mostly not candidates
    has = zbuf < np.inf
    pair = np.zeros((H, W), dtype=bool)  # full size with a False border: flat indices directly
    inner = pair[m:-m, m:-m]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # left/right, up/down and the two diagonals
        inner |= has[m - dy:H - m - dy, m - dx:W - m - dx] & has[m + dy:H - m + dy, m + dx:W - m + dx]
    inner &= ~has[m:-m, m:-m]
    holes = np.flatnonzero(pair)  # (np.nonzero of a 2-D image costs ~5x more)
    if holes.size == 0:
        return zbuf
    best = np.full(holes.shape, np.inf, dtype=np.float32)
    tol32 = np.float32(tol)
    for step in (1, W, W + 1, W - 1):  # left/right, up/down and the two diagonals
        a, b = flat.take(holes - step), flat.take(holes + step)
        with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
            # both hold a depth and agree: an inf side makes |a - b| inf (or NaN), never <= tol * min
            ok = np.abs(a - b) <= tol32 * np.minimum(a, b)
            fill = np.float32(2.0) * a
            fill *= b
            a += b
            fill /= a
            fill /= ok  # x / 1 where they agree; +inf (or NaN, from two infs) where not, which fmin skips
        np.fmin(best, fill, out=best)
    flat[holes] = best  # still inf where neither pair qualified
    return zbuf


def _slope_at(z: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """At flat pixel indices ``idx`` of ``z``: the smaller one-sided |dz| along x plus along y.

    NaN-aware: where one side has no depth (NaN, or +inf: an infinite depth, which :func:`_project` leaves
    as it is) the other counts, where neither has, 0. Taking the smaller side keeps a depth edge beside the
    pixel from inflating its tolerance. ``z`` at ``idx`` itself is finite.
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
        least = np.fmin(lo, hi)  # inf (a side at infinite depth) counts as no side, like NaN
        total += np.where(least < np.inf, least, np.float32(0.0))
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
    xs, ys = pixel_coords(H, W)
    du, dv, valid = match_through_depth(fixed, moving, moving_from_fixed, depth, occlusion_tol)
    du -= xs
    dv -= ys
    flow = np.zeros((H, W, 2), np.float32)
    cv2.copyTo(cv2.merge([du, dv]), valid.view(np.uint8), flow)  # 0 where not valid (du, dv may be NaN there)
    return flow, valid


def match_through_depth(fixed: CameraModel, moving: CameraModel, moving_from_fixed: Pose, depth: np.ndarray,
                        occlusion_tol: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`flow_through_depth` before the flow: each fixed pixel's match ``(u, v)`` in the moving image
    (HxW float32 each, anything, NaN too, where not valid) and ``valid``; ``depth`` float32 metres, "no
    depth" as 0, NaN or inf. For callers that fill the invalid pixels themselves (the geometric stage):
    the flow's zeroing costs two passes they do not need."""
    Wm, Hm = moving.width, moving.height
    u, v, z = _project(fixed, moving, moving_from_fixed, depth)
    # inside: u within [-eps, Wm - 1 + eps], where clipping leaves it unchanged (NaN: no depth, behind)
    uc = np.clip(u, np.float32(-BORDER_EPS), np.float32(Wm - 1 + BORDER_EPS))
    inside = uc == u
    vc = np.clip(v, np.float32(-BORDER_EPS), np.float32(Hm - 1 + BORDER_EPS))
    inside &= vc == v
    # clamped into the image (NaN -> 0) and their floors; a point on a centre's row or column is "exact"
    np.clip(uc, np.float32(0.0), np.float32(Wm - 1), out=uc)
    np.clip(vc, np.float32(0.0), np.float32(Hm - 1), out=vc)
    cv2.patchNaNs(uc, 0.0)
    cv2.patchNaNs(vc, 0.0)
    fu = np.floor(uc)
    fv = np.floor(vc)
    exact = fu == uc
    exact |= fv == vc
    exact &= inside
    ex = np.flatnonzero(exact)
    # z-buffer with a 2x2 footprint (module docstring): nothing behind a surface shows through its cracks
    zs = np.full(z.shape, np.inf, np.float32)
    cv2.copyTo(z, inside.view(np.uint8), zs)  # z inside, +inf elsewhere: no NaN
    wide_u, wide_v = uc.reshape(-1)[ex] != fu.reshape(-1)[ex], vc.reshape(-1)[ex] != fv.reshape(-1)[ex]
    zbuf = _zbuffer_2x2(Wm, Hm, fu, fv, zs, ex, wide_u, wide_v)
    # each point's nearest moving pixel: fu + (uc - fu >= 0.5), exact (floor(uc + 0.5) is not: 0.5 - 2**-25
    # + 0.5 rounds to 1); the 0/1 as float from cv2.threshold (x > the float below 0.5 <=> x >= 0.5), a
    # third of the cost of numpy's bool-to-float add
    for c, f in ((uc, fu), (vc, fv)):
        c -= f
        cv2.threshold(c, _BELOW_HALF, 1.0, cv2.THRESH_BINARY, dst=c)
        f += c
    near: np.ndarray = cv2.remap(zbuf[1:-1, 1:-1], fu, fv, cv2.INTER_NEAREST)  # integer-valued maps: an exact gather
    near *= np.float32(1.0 + occlusion_tol)
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
    return u, v, valid


def reproject_depth(src: CameraModel, dst: CameraModel, dst_from_src: Pose, depth_src_m: np.ndarray,
                    none: float = 0.0) -> np.ndarray:
    """Depth (metres along dst's optical axis, float32) of the src depth map seen from dst.

    Each src pixel with a depth is moved into dst and splatted into the dst pixel nearest to its
    projection; the nearest surface wins (z-buffer). Holes are ``none`` (0). One-pixel cracks that resampling leaves
    (dst finer than src, or a slanted surface) are filled only where both opposite neighbours hold a depth
    and agree within 2 % (:func:`fill_cracks`, inverse-depth mean); nothing else is interpolated, so
    depth edges stay sharp and disocclusions stay holes. A dst pixel's value is the depth of the surface
    point that landed within half a pixel of its centre (on a slanted surface, off by up to half a pixel's
    depth change). ``none=np.inf`` skips two passes (the result is then a view into a larger array): the
    geometric stage passes it on to :func:`match_through_depth`, which reads inf as "no depth" too.

    Nearest-pixel z-buffer over a ring of one cell: each point's cell is ``floor(u + 0.5)`` clamped to
    ``[-1, width]`` (``[-1, height]``), so a point outside dst lands in the ring, and so does every point
    without depth (its ``u, v, z`` are all NaN, ``u`` is patched to -1): no inside mask at all. (The
    clamp decides exactly as ``-0.5 <= u < width - 0.5`` did: ``u + 0.5`` cannot round across 0 or
    ``width``.)
    """
    depth = _check_depth(src, depth_src_m, 'reproject_depth')
    u, v, z = _project(src, dst, dst_from_src, depth)
    w, h = dst.width, dst.height
    for c, hi in ((u, w), (v, h)):
        c += np.float32(0.5)  # nearest centre: floor(u + 0.5), exactly this float32 sum (it decides ties)
        np.clip(c, np.float32(-1.0), np.float32(hi), out=c)
        cv2.patchNaNs(c, -1.0)
        np.floor(c, out=c)
    keys = _cell_keys(u, v, w + 2, (h + 2) * (w + 2), w + 3)  # + (1, 1): the ring
    plane = np.full((h + 2, w + 2), np.inf, dtype=np.float32)
    with np.errstate(invalid='ignore'):  # NaN depths only ever land in the ring
        np.minimum.at(plane.reshape(-1), keys, z.reshape(-1))
    zbuf = fill_cracks(plane, margin=2)[1:-1, 1:-1]  # the image's border pixels are not filled, as before
    if none == np.inf:
        return zbuf  # (a view: the stage reads it once)
    zbuf = np.ascontiguousarray(zbuf)
    zbuf[zbuf == np.inf] = none
    return zbuf
