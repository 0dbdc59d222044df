"""Numpy flow utilities in the SPEC convention (no torch): warp, colour coding, overlay, resize.

Flow ``phi`` is ``HfxWfx2`` float32 on the FIXED grid, in pixels, channel 0 = dx (columns), channel 1 =
dy (rows), and ``registered(v) = moving(v + phi(v))``, bilinear, zeros outside. Pixel ``(x, y)`` is the
centre of column x, row y, which is also OpenCV's ``remap`` convention, so zero flow is exactly the
identity. Note that ``cv2.remap`` with float maps quantises sub-pixel positions to 1/32 pixel
(``INTER_REMAP_COEF_BITS``); integer positions are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_REMAP_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def identity(h: int, w: int) -> np.ndarray:
    """Zero flow ``HxWx2`` float32: every fixed pixel samples the moving pixel at the same place."""
    return np.zeros((h, w, 2), dtype=np.float32)


def _check_flow(flow: np.ndarray) -> np.ndarray:
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'flow must be HxWx2, got shape {flow.shape}')
    return flow.astype(np.float32, copy=False)


def sample_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute moving-image sampling positions ``(map_x, map_y)`` (float32 ``HfxWf``) for ``flow``."""
    f = _check_flow(flow)
    h, w = f.shape[:2]
    map_x = f[:, :, 0] + np.arange(w, dtype=np.float32)[None, :]
    map_y = f[:, :, 1] + np.arange(h, dtype=np.float32)[:, None]
    return map_x, map_y


def warp(moving: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``moving`` (``HmxWm[xC]``) into the fixed grid of ``flow`` (``HfxWfx2``).

    Returns ``(registered, valid)``: ``registered`` is ``HfxWf[xC]`` in ``moving``'s dtype (bilinear,
    zeros outside), ``valid`` is ``HfxWf`` bool, true where the sample lies inside the moving image
    (``0 <= x <= Wm-1`` and ``0 <= y <= Hm-1``, so no zero from outside was blended in) and the flow is
    finite. Moving and fixed may differ in size.
    """
    map_x, map_y = sample_maps(flow)
    hm, wm = moving.shape[:2]
    valid = (map_x >= 0) & (map_x <= wm - 1) & (map_y >= 0) & (map_y <= hm - 1)
    # NaN fails every comparison above, so it is already invalid; give remap a harmless position.
    np.nan_to_num(map_x, copy=False, nan=-1.0, posinf=-1.0, neginf=-1.0)
    np.nan_to_num(map_y, copy=False, nan=-1.0, posinf=-1.0, neginf=-1.0)

    src = moving
    cast_back = None
    if src.dtype == np.bool_ or src.dtype.type not in _REMAP_DTYPES:
        cast_back = src.dtype
        src = src.astype(np.float32)
    src = np.ascontiguousarray(src)

    def remap(img: np.ndarray) -> np.ndarray:
        return cv2.remap(
            img, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )

    if src.ndim == 3 and src.shape[2] > 4:  # remap handles at most 4 channels at once
        out = np.concatenate(
            [
                remap(np.ascontiguousarray(src[:, :, i : i + 4])).reshape(*map_x.shape, -1)
                for i in range(0, src.shape[2], 4)
            ],
            axis=2,
        )
    else:
        out = remap(src)
        if src.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing 1-channel axis
            out = out[:, :, None]
    if cast_back is not None:
        out = (out > 0.5) if cast_back == np.bool_ else out.astype(cast_back)
    return out, valid


def _make_colorwheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al. 2011): 55 hues, RGB in [0, 255]."""
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3), dtype=np.float64)
    col = 0
    for n, (fixed, rising, falling) in enumerate(
        [(0, 1, None), (1, None, 0), (1, 2, None), (2, None, 1), (2, 0, None), (0, None, 2)]
    ):
        count = (ry, yg, gc, cb, bm, mr)[n]
        ramp = np.floor(255 * np.arange(count) / count)
        wheel[col : col + count, fixed] = 255
        if rising is not None:
            wheel[col : col + count, rising] = ramp
        if falling is not None:
            wheel[col : col + count, falling] = 255 - ramp
        col += count
    return wheel


_COLORWHEEL = _make_colorwheel()
_WHEEL_BY_CHANNEL = np.ascontiguousarray((_COLORWHEEL / 255.0).astype(np.float32).T)  # 3 x ncols


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Middlebury colour coding of ``flow`` as ``HxWx3`` RGB uint8 (hue = direction, saturation = length).

    Lengths are divided by ``max_magnitude`` (default: the largest finite length in ``flow``), so that a
    fixed value makes colours comparable across frames. Longer vectors are darkened; non-finite ones
    are black. This is Baker et al.'s ``computeColor`` in float32, with the angle from
    ``cv2.cartToPolar`` (within 0.01 degree of ``arctan2``), which is several times faster.
    """
    f = _check_flow(flow)
    u = np.ascontiguousarray(f[:, :, 0])
    v = np.ascontiguousarray(f[:, :, 1])
    finite = np.isfinite(u) & np.isfinite(v)
    all_finite = bool(finite.all())
    if not all_finite:
        u = np.where(finite, u, np.float32(0.0))
        v = np.where(finite, v, np.float32(0.0))
    rad, ang = cv2.cartToPolar(u, v)  # ang in [0, 2 pi): atan2(-v, -u) + pi, as Middlebury's wheel wants
    if max_magnitude is None:
        max_magnitude = float(rad.max()) if rad.size else 0.0
    rad *= np.float32(1.0 / max(float(max_magnitude), 1e-9))
    ncols = _WHEEL_BY_CHANNEL.shape[1]
    fk = ang * np.float32((ncols - 1) / (2 * np.pi))
    k0 = np.minimum(fk.astype(np.int32), ncols - 1)
    frac = fk - k0
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    inside = rad <= 1
    out = np.empty((*u.shape, 3), dtype=np.uint8)
    for c in range(3):
        wheel = _WHEEL_BY_CHANNEL[c]
        col = wheel[k0]
        col += frac * (wheel[k1] - col)
        col = np.where(inside, 1 - rad * (1 - col), col * np.float32(0.75))
        col *= 255
        if not all_finite:
            col[~finite] = 0
        out[:, :, c] = col  # truncation = Middlebury's floor(255 * col), values are >= 0
    return out


def overlay(fixed_rgb: np.ndarray, registered_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * fixed + alpha * registered`` as uint8 (same shape); grey inputs are made RGB."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'overlay alpha must be in [0, 1], got {alpha}')

    def rgb(img: np.ndarray) -> np.ndarray:
        img = np.ascontiguousarray(img)
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img

    a, b = rgb(fixed_rgb), rgb(registered_rgb)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(
            f'overlay needs two uint8 images of one shape, got {a.shape} {a.dtype} and {b.shape} {b.dtype}'
        )
    return cv2.addWeighted(a, 1.0 - alpha, b, alpha, 0.0)


def resize_flow(
    flow: np.ndarray,
    fixed_hw: Sequence[int],
    moving_hw: Sequence[int],
    new_fixed_hw: Sequence[int],
    new_moving_hw: Sequence[int],
) -> np.ndarray:
    """Re-express a flow between images of sizes (fixed_hw, moving_hw) for (new_fixed_hw, new_moving_hw).

    The geometry is that of design.md's Network grid: a new fixed pixel ``v'`` lies at
    ``u = (v' + 0.5) * W_f / W_f' - 0.5`` on the old fixed grid; it samples the old moving image at
    ``m = u + phi(u)`` (``phi`` bilinear, half-pixel centres, as ``cv2.resize``/``align_corners=False``),
    which is ``m' = (m + 0.5) * W_m' / W_m - 0.5`` in the new moving image; ``phi'(v') = m' - v'``.
    Per axis, this simplifies to ``phi' = (v' + 0.5) * (W_f / W_f' * W_m' / W_m - 1) + phi(u) * W_m' / W_m``.
    """
    f = _check_flow(flow)
    hf, wf = int(fixed_hw[0]), int(fixed_hw[1])
    hm, wm = int(moving_hw[0]), int(moving_hw[1])
    nhf, nwf = int(new_fixed_hw[0]), int(new_fixed_hw[1])
    nhm, nwm = int(new_moving_hw[0]), int(new_moving_hw[1])
    if f.shape[:2] != (hf, wf):
        raise ValueError(f'flow shape {f.shape[:2]} does not match fixed_hw {(hf, wf)}')
    if (nhf, nwf) == (hf, wf):
        up = f.copy()
    else:
        up = cv2.resize(f, (nwf, nhf), interpolation=cv2.INTER_LINEAR)
    sx, sy = nwm / wm, nhm / hm
    cx = (np.arange(nwf, dtype=np.float32) + 0.5) * np.float32(wf / nwf * sx - 1.0)
    cy = (np.arange(nhf, dtype=np.float32) + 0.5) * np.float32(hf / nhf * sy - 1.0)
    out = np.empty((nhf, nwf, 2), dtype=np.float32)
    out[:, :, 0] = up[:, :, 0] * np.float32(sx) + cx[None, :]
    out[:, :, 1] = up[:, :, 1] * np.float32(sy) + cy[:, None]
    return out


def compose(residual: np.ndarray, prior: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    """The flow of "pre-warp by `prior`, then register by `residual`", both on the fixed grid.

    The pre-warped image is ``W(v) = moving(v + prior(v))`` (on the fixed grid); registering it by the
    residual gives ``W(v + r(v)) = moving(v + r(v) + prior(v + r(v)))``, so ``phi(v) = r(v) + prior(v + r(v))``
    (prior sampled bilinearly at the residual's target, edge values beyond the grid). `positions`: ``v + r(v)``
    when the caller has it already. Returns a new HxWx2 float32 array.
    """
    if positions is None:
        positions = identity_positions(residual) + residual
    sampled = cv2.remap(np.ascontiguousarray(prior, dtype=np.float32), np.ascontiguousarray(positions, np.float32),
                        None, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # type: ignore[call-overload]
    return np.add(residual, sampled, out=sampled)


def sample_mask(mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``mask`` (HxW bool) at the nearest pixel of each ``positions`` entry (HxWx2, x then y); False outside."""
    out = cv2.remap(np.ascontiguousarray(mask, dtype=np.uint8), np.ascontiguousarray(positions, np.float32), None,
                    interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # type: ignore[call-overload]
    return out.astype(bool)


def identity_positions(flow: np.ndarray) -> np.ndarray:
    """HxWx2 float32 pixel coordinates ``(x, y)`` of a flow's grid."""
    h, w = flow.shape[:2]
    out = np.empty((h, w, 2), np.float32)
    out[..., 0] = np.arange(w, dtype=np.float32)[None, :]
    out[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    return out
