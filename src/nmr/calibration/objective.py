"""The pooled cross-modal objective: depth points projected into RGB and LWIR, normalised gradient fields.

Why this measure: a depth edge, an RGB edge and a thermal edge of the same object lie on the same line,
but their contrasts (sign, strength) have nothing in common. Normalised gradient fields (NGF) compare only
the gradients' directions: per pixel ``(n_a . n_b)^2`` with ``n = g / sqrt(|g|^2 + eps^2)``, 1 where the
edges are parallel, 0 where one image is flat; bounded, so a moving object or a wrong pixel cannot
dominate (robust by construction). Everything is sampled on the depth camera's pixel grid: the depth
frame gives a 3D point per pixel, the rig parameters move it into RGB and LWIR, the images are sampled
there (bilinear, differentiable), and three pairs of grid images are compared: RGB vs inverse depth,
LWIR vs inverse depth and LWIR vs RGB.

Time: a camera's image at an exposure time between two of its frames is the earlier frame sampled
``alpha`` of the way back along the (mono-modal, DIS) flow to the next one; with the LWIR time offset as
a parameter, ``alpha`` -- and so the objective -- is differentiable in the offset.

Without depth (``plane`` mode) the grid is the LWIR image itself, every pixel on a plane at
``PLANE_DEPTH_M``: RGB is sampled through the LWIR pose (a homography plus both lenses' distortion).

Parameters are scaled to O(1) units (:data:`UNITS`) so that one Adam step size suits them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from nmr.calibration.bagdata import Moment
from nmr.geometry.camera import CameraModel, cached_rays, fold_radius

#: parameter -> the size of one unit: rotations 0.01 rad, translations 1 cm, log focal 1 %, time 10 ms
UNITS = {'rot': 0.01, 'trans': 0.01, 'logf': 0.01, 'dt': 0.01}
PLANE_DEPTH_M = 20.0
PIVOT_DEPTH_M = 6.0  # the rotation parameters pivot about a point this far in front (rotvec_of)
#: NGF eps of the inverse depth: this quantile of its gradient magnitude (only edges count)
EDGE_QUANTILE = 0.9


def param_unit(name: str) -> float:
    return UNITS[name.split('_', 1)[1]]


def rotvec_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues in torch (differentiable, safe at 0)."""
    theta2 = (r * r).sum()
    theta = torch.sqrt(theta2 + 1e-20)
    zero = r.new_zeros(())
    K = torch.stack([
        torch.stack([zero, -r[2], r[1]]),
        torch.stack([r[2], zero, -r[0]]),
        torch.stack([-r[1], r[0], zero]),
    ])
    small = theta2 < 1e-12
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-20))
    return torch.eye(3, dtype=r.dtype) + a * K + b * (K @ K)


def project(cam: CameraModel, X: torch.Tensor, logf: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(u, v, ok)`` of camera-frame points ``Nx3`` (distorted pixels; ok: in front, inside, unfolded)."""
    z = X[:, 2]
    ok = z > 1e-3
    zi = 1.0 / torch.where(ok, z, torch.ones_like(z))
    x, y = X[:, 0] * zi, X[:, 1] * zi
    r2 = x * x + y * y
    ok = ok & (r2 < fold_radius(cam.dist) ** 2)
    k1, k2, p1, p2, k3 = cam.dist
    if any(cam.dist):
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xy = x * y
        x, y = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
    s = torch.exp(logf * UNITS['logf']) if logf is not None else 1.0
    u = cam.fx * s * x + cam.cx
    v = cam.fy * s * y + cam.cy
    ok = ok & (u >= 0) & (u <= cam.width - 1) & (v >= 0) & (v <= cam.height - 1)
    return u, v, ok


def visible(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, ok: torch.Tensor, width: int, cell: float,
            tol: float = 0.03) -> torch.Tensor:
    """``ok`` and not hidden behind a nearer point of the same grid in the target view (z-buffer on cells of
    ``cell`` target pixels, the grid's spacing there).

    Why: with a baseline, the background beside a near object's edge is hidden in the other camera; the
    image sampled there shows the object, which would move its edge towards the background side by the
    hidden band's width -- a bias of the pose along the baseline."""
    with torch.no_grad():
        c = max(cell, 1.0)
        cols = math.ceil(width / c) + 2
        cx = torch.floor(torch.where(ok, u, torch.zeros_like(u)) / c).long()
        cy = torch.floor(torch.where(ok, v, torch.zeros_like(v)) / c).long()
        cid = cy * cols + cx
        n = int(cid.max()) + 1 if cid.numel() else 1
        zz = torch.where(ok, z, torch.full_like(z, float('inf')))
        zbuf = torch.full((n,), float('inf')).scatter_reduce(0, cid, zz, reduce='amin')
        return ok & (zz <= zbuf[cid] * (1.0 + tol))


def sample(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``CxN`` of ``img`` (CxHxW) at pixel positions ``u, v`` (N), zeros outside."""
    _, H, W = img.shape
    grid = torch.stack([2.0 * u / max(W - 1, 1) - 1.0, 2.0 * v / max(H - 1, 1) - 1.0], dim=-1)
    out = F.grid_sample(img[None], grid[None, None], mode='bilinear', padding_mode='zeros', align_corners=True)
    return out[0, :, 0]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma >= 0.5 else img


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def fill_depth_holes(depth: np.ndarray, iterations: int) -> np.ndarray:
    """Depth with holes up to ``2 * iterations`` px wide filled from their farthest neighbour.

    Why: active-stereo depth loses the pixels right beside a depth edge (the stereo shadow, flying pixels
    removed), which are exactly the pixels where the edge's gradient is measured. Filled from the far side
    (a max filter on z), a hole takes the background's depth, which is what the shadow mostly hides; the
    foreground edge, whose position carries the information, is unchanged.
    """
    z = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    k = np.ones((3, 3), np.uint8)
    for _ in range(iterations):
        holes = z <= 0
        if not holes.any():
            break
        z = np.where(holes, cv2.dilate(z, k), z)
    return z


@dataclass
class LevelMoment:
    """One moment prepared for one pyramid level (torch tensors)."""

    t: float
    step: int  # grid spacing in grid-camera pixels
    hw: tuple[int, int]  # grid size
    idx: torch.Tensor  # flat grid index of each point
    pts: torch.Tensor  # Nx3 points in the grid camera's frame
    fixed: torch.Tensor | None  # grid image of the grid camera itself (inverse depth, or LWIR in plane mode)
    fixed_ok: torch.Tensor | None
    rgb: torch.Tensor  # 1xHxW (blurred)
    rgb_flow: torch.Tensor  # 2xHxW
    rgb_alpha: float
    lwir: list[torch.Tensor]
    lwir_flow: list[torch.Tensor]
    lwir_t: list[float]
    #: z-buffer visibility of the LWIR view ('lwir') frozen by :func:`freeze_visibility`; empty: computed at
    #: every evaluation
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Cameras:
    rgb: CameraModel
    lwir: CameraModel | None
    depth: CameraModel | None  # None: plane mode


def prepare(m: Moment, cams: Cameras, level: float, max_points: int, rng: np.random.Generator) -> LevelMoment:
    """Blur the images for pyramid level ``level`` (1 = finest: about 1 px at 640 width) and build the grid."""
    grid_cam = cams.depth if cams.depth is not None else cams.lwir
    assert grid_cam is not None
    H, W = grid_cam.hw
    step = max(1, round(level * W / 848.0), math.ceil(math.sqrt(H * W / max_points)))
    ys, xs = np.arange(0, H, step), np.arange(0, W, step)
    rays = cached_rays(grid_cam)[np.ix_(ys, xs)].reshape(-1, 3)
    if m.depth is not None:
        zfull = fill_depth_holes(m.depth, max(2, round(8 * W / 848.0)))
        z = zfull[np.ix_(ys, xs)].reshape(-1)
        good = np.flatnonzero((z > 0.1) & np.isfinite(rays).all(axis=1))
        pts = rays[good] * z[good, None]
        # inverse depth blurred like the images (the same angular blur), by normalised convolution
        have = (zfull > 0.1).astype(np.float32)
        invf = np.where(have > 0, 1.0 / np.maximum(zfull, 0.1), 0.0).astype(np.float32)
        sig = level * W / 640.0
        inv_b = _blur(invf, sig) / np.maximum(_blur(have, sig), 1e-6)
        fixed_np = inv_b[np.ix_(ys, xs)]
        fixed_ok = np.zeros(z.shape, bool)
        fixed_ok[good] = True
    else:
        good = np.flatnonzero(np.isfinite(rays).all(axis=1))
        pts = rays[good] * PLANE_DEPTH_M
        sig = level * W / 640.0
        fixed_np = _blur(m.lwir[0], sig)[np.ix_(ys, xs)]
        fixed_ok = np.zeros(len(ys) * len(xs), bool)
        fixed_ok[good] = True
    sig_rgb = level * cams.rgb.width / 640.0
    lw_sig = level * cams.lwir.width / 640.0 if cams.lwir is not None else 0.0
    alpha = (m.t - m.rgb_t[0]) / max(m.rgb_t[1] - m.rgb_t[0], 1e-6)
    return LevelMoment(
        t=m.t,
        step=step,
        hw=(len(ys), len(xs)),
        idx=torch.from_numpy(good.astype(np.int64)),
        pts=_t(pts),
        fixed=_t(fixed_np),
        fixed_ok=torch.from_numpy(fixed_ok.reshape(len(ys), len(xs))),
        rgb=_t(_blur(m.rgb[0], sig_rgb))[None],
        rgb_flow=_t(m.rgb_flow).permute(2, 0, 1).contiguous(),
        rgb_alpha=float(alpha),
        lwir=[_t(_blur(a, lw_sig))[None] for a in m.lwir] if m.depth is not None else [],
        lwir_flow=[_t(f).permute(2, 0, 1).contiguous() for f in m.lwir_flow],
        lwir_t=list(m.lwir_t),
    )


def _grid(values: torch.Tensor, ok: torch.Tensor, lm: LevelMoment) -> tuple[torch.Tensor, torch.Tensor]:
    H, W = lm.hw
    img = values.new_zeros(H * W).index_put((lm.idx,), torch.where(ok, values, torch.zeros_like(values)))
    mask = torch.zeros(H * W, dtype=torch.bool).index_put((lm.idx,), ok)
    return img.view(H, W), mask.view(H, W)


def _normalised_gradients(img: torch.Tensor, mask: torch.Tensor, q: float = 0.5,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward-difference gradients normalised NGF-style; ``eps`` is the ``q`` quantile of the gradient
    magnitude (images: the median; depth: a high quantile, so that only depth edges count, not the smooth
    slope of the ground or the depth noise)."""
    gx = img[:-1, 1:] - img[:-1, :-1]
    gy = img[1:, :-1] - img[:-1, :-1]
    ok = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1]
    mag = torch.sqrt(gx * gx + gy * gy + 1e-20)
    with torch.no_grad():
        eps = torch.quantile(mag[ok], q) if bool(ok.any()) else mag.new_tensor(1.0)
        eps = torch.clamp(eps, min=1e-6)
    norm = torch.sqrt(gx * gx + gy * gy + eps * eps)
    return gx / norm, gy / norm, ok


def ngf(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], qa: float = 0.5,
        qb: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ``(n_a . n_b)^2`` over pixels valid in both, their count) for two (image, mask) grids."""
    ax, ay, aok = _normalised_gradients(*a, q=qa)
    bx, by, bok = _normalised_gradients(*b, q=qb)
    ok = aok & bok
    s = (ax * bx + ay * by) ** 2
    # divided by the pixels where either image has gradients, not by those where both have: a pose
    # that moves the images out of each other's view must lose score, not keep its average
    return (s * ok).sum(), (aok | bok).sum()


def rotvec_of(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The rotation vector (rad) of ``T_rgb_cam`` from the scaled rotation and translation parameters.

    Why coupled: a camera moved sideways by ``t`` and turned by ``t / Z`` sees a point at depth ``Z`` where
    it was. With the rotation parameter measured as if pivoting about a point ``PIVOT_DEPTH_M`` in front,
    a change of the translation parameter leaves the scene at that depth in place and moves only the
    parallax; with the plain parametrisation the fit turns the camera to hide the parallax and the
    baseline stays where it started (measured: zero baseline kept, rotation off by 0.35 deg)."""
    tm = t * UNITS['trans']
    pivot = torch.stack([tm[1], -tm[0], torch.zeros_like(tm[0])]) / PIVOT_DEPTH_M
    return r * UNITS['rot'] + pivot


def params_from_pose(rotvec: Sequence[float], trans: Sequence[float]) -> tuple[list[float], list[float]]:
    """The scaled parameters of a pose (the inverse of :func:`rotvec_of`)."""
    t = [float(v) / UNITS['trans'] for v in trans]
    pivot = np.array([trans[1], -trans[0], 0.0]) / PIVOT_DEPTH_M
    return [float(v) / UNITS['rot'] for v in np.asarray(rotvec, dtype=np.float64) - pivot], t


def pose_of(p: Mapping[str, torch.Tensor], cam: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, t)`` of ``T_rgb_cam`` from the scaled parameters."""
    r, t = p[f'{cam}_rot'], p[f'{cam}_trans']
    return rotvec_matrix(rotvec_of(r, t)), t * UNITS['trans']


Grid = tuple[torch.Tensor, torch.Tensor]  # (image, mask) on the grid


def grids(lm: LevelMoment, cams: Cameras, p: Mapping[str, torch.Tensor], need: Sequence[str]) -> dict[str, Grid]:
    """The grid images ``need`` (of 'fixed', 'rgb', 'lwir') of one moment under the parameters ``p``."""
    out: dict[str, Grid] = {}
    if lm.fixed is not None and lm.fixed_ok is not None:
        out['fixed'] = (lm.fixed, lm.fixed_ok)
    if cams.depth is None:  # plane mode: the grid is the LWIR camera, RGB seen through the LWIR pose
        if 'rgb' in need:
            R, t = pose_of(p, 'lwir')
            u, v, ok = project(cams.rgb, lm.pts @ R.T + t)
            fl = sample(lm.rgb_flow, u, v)
            out['rgb'] = _grid(sample(lm.rgb, u - lm.rgb_alpha * fl[0], v - lm.rgb_alpha * fl[1])[0], ok, lm)
        return out
    Rd, td = pose_of(p, 'depth')
    Xc = lm.pts @ Rd.T + td
    cell = lm.step * max(cams.rgb.fx, cams.lwir.fx if cams.lwir is not None else 0.0) / cams.depth.fx
    if 'rgb' in need:
        u, v, ok = project(cams.rgb, Xc)
        ok = visible(u, v, Xc[:, 2], ok, cams.rgb.width, cell)
        fl = sample(lm.rgb_flow, u, v)
        out['rgb'] = _grid(sample(lm.rgb, u - lm.rgb_alpha * fl[0], v - lm.rgb_alpha * fl[1])[0], ok, lm)
    if 'lwir' in need and cams.lwir is not None and lm.lwir:
        Rl, tl = pose_of(p, 'lwir')
        Xl = (Xc - tl) @ Rl  # R^T (X - t), row vectors
        u, v, ok = project(cams.lwir, Xl, p.get('lwir_logf'))
        ok = ok & lm.frozen['lwir'] if 'lwir' in lm.frozen else visible(u, v, Xl[:, 2], ok, cams.lwir.width, cell)
        dt = p['lwir_dt'][0] * UNITS['dt']
        exposure = [s + float(dt.detach()) for s in lm.lwir_t]
        k = int(np.clip(np.searchsorted(exposure, lm.t, side='right') - 1, 0, len(lm.lwir) - 2))
        alpha = (lm.t - (lm.lwir_t[k] + dt)) / (lm.lwir_t[k + 1] - lm.lwir_t[k])
        fl = sample(lm.lwir_flow[k], u, v)
        out['lwir'] = _grid(sample(lm.lwir[k], u - alpha * fl[0], v - alpha * fl[1])[0], ok, lm)
    return out


def freeze_visibility(lms: Sequence[LevelMoment], cams: Cameras, p: Mapping[str, torch.Tensor]) -> None:
    """Fix each moment's z-buffer visibility (:func:`visible`) in the LWIR view at the parameters ``p`` for
    the evaluations that follow, until :func:`thaw_visibility`. (The RGB view's stays live: it depends only
    on the depth pose, fixed when ``/tf_static`` gives it; frozen, the NGF refinement of the depth pose, a
    weak measure, walked 0.47 deg away from the true pose of the small test rig.)

    Why: the z-buffer is a hard per-cell decision, so points flip in and out of view as the pose or the
    focal length moves by a fraction of a pixel, and the score becomes a staircase in them: at the true rig
    of a development rig (seed 9006, level 2) the score's second differences along the focal length were
    2.7x larger with the live z-buffer than without it, and its best focal length 0.3 % off instead of
    0.1 %; L-BFGS stalls on such steps. Within one optimiser run the parameters move little, so the
    visibility at its start is right; it is recomputed at the start of the next run."""
    with torch.no_grad():
        for lm in lms:
            lm.frozen.clear()
            if cams.depth is None or cams.lwir is None or not lm.lwir:
                continue  # plane mode has no z-buffer
            Rd, td = pose_of(p, 'depth')
            Rl, tl = pose_of(p, 'lwir')
            Xl = (lm.pts @ Rd.T + td - tl) @ Rl  # as in grids()
            u, v, ok = project(cams.lwir, Xl, p.get('lwir_logf'))
            cell = lm.step * max(cams.rgb.fx, cams.lwir.fx) / cams.depth.fx
            # points out of view now may come into view: their visibility is left to the live test of ``ok``
            lm.frozen['lwir'] = visible(u, v, Xl[:, 2], ok, cams.lwir.width, cell) | ~ok


def thaw_visibility(lms: Sequence[LevelMoment]) -> None:
    """Back to the z-buffer at every evaluation (:func:`freeze_visibility`)."""
    for lm in lms:
        lm.frozen.clear()


#: compared pair -> the two grid images it compares
PAIR_GRIDS = {
    'rgb_depth': ('rgb', 'fixed'),
    'lwir_depth': ('lwir', 'fixed'),
    'lwir_rgb': ('lwir', 'rgb'),
    'rgb_lwir_plane': ('rgb', 'fixed'),
}


def moment_scores(lms: Sequence[LevelMoment], cams: Cameras, p: Mapping[str, torch.Tensor],
                  pairs: Sequence[str]) -> torch.Tensor:
    """Per moment the mean NGF score over ``pairs`` (each pair's pixel mean, then the mean of the pairs)."""
    need = {g for k in pairs for g in PAIR_GRIDS[k]}
    depth = cams.depth is not None
    out = []
    for lm in lms:
        g = grids(lm, cams, p, list(need))
        vals = []
        for k in pairs:
            a, b = PAIR_GRIDS[k]
            total, count = ngf(g[a], g[b], EDGE_QUANTILE if a == 'fixed' and depth else 0.5,
                               EDGE_QUANTILE if b == 'fixed' and depth else 0.5)
            vals.append(total / torch.clamp(count, min=1))
        out.append(torch.stack(vals).mean())
    return torch.stack(out)
