"""Named misalignment families with exact ground truth, drawn so that no image border reveals the field.

Every family is a smooth field `phi` on the FIXED grid (SPEC convention: `M(v + phi(v)) = A(v)`), evaluable
at any (x, y) like `nmr.training.augment.Misalignment`, so the one exact-inverse machinery there
(`augment.misalign`, fixed-point inverse) builds the misaligned moving image for all of them:

- `affine`: rotation, anisotropic scale, shear, translation;
- `homography`: a full projective map from four random corner displacements (perspective included);
- `nonrigid`: a random control grid of 3x3 .. 8x8 points, bicubic (smooth at several scales);
- `distortion`: a lens-distortion difference, radial k1 / k2 about an offset principal point plus the
  principal-point offset itself (the relative distortion of two cameras; the sign of k1 / k2 decides which
  camera is the more distorted one);
- `composite`: 2-3 of the above composed (`T_n o .. o T_1`, each a map v -> v + phi_i(v));
- `fov`: a second camera with another field of view, as every real RGB-LWIR rig has: the moving image
  magnified by a zoom drawn from `augment.fov_zoom` (anisotropic: `augment.fov_aspect`, a roll of up to 2 deg, the
  optical axis up to 8 % of the side off-centre). Its size comes from the zoom, not from `mean_px`: at a
  zoom of 1.6 the mean |phi| over the pixels both cameras see is ~40-50 px at 640 px width, beyond the
  other families (roadscene's raw thermal frame vs its RGB is such a pair, ~1.3 x 1.6). Fixed pixels
  outside the narrower view are invalid (the moving camera does not see them); not composed by `composite`;
- `legacy`: the trainer's old affine + one 4x4 elastic grid (`augment.sample_misalignment`), magnitudes as
  configured there (kept so that old results can be reproduced).

Magnitudes: a target MEAN |phi| is drawn uniformly from `augment.mean_px` (pixels at 640 px width, scaled
with the width of the visible crop), each family's random shape is scaled to it (a few secant steps on a
coarse grid), then capped so that the PEAK |phi| stays <= `augment.peak_px` and the field's Jacobian stays
small (`max_gradient`, spectral norm of grad phi): with ||grad phi|| <= 0.5 the map v -> v + phi(v) is
invertible (det(I + grad phi) >= 0.25 > 0) and the fixed-point inverse converges.

No border cue (issue 19): warping an image leaves content-free wedges wherever the moving image samples
outside itself, and those wedges spell out the field. `cue_free_pair` therefore draws the field on the
whole input (the canvas) and returns only its centre (1 / canvas_scale of each side) of BOTH images; the
peak cap keeps every sample of the visible moving crop inside the canvas (anything beyond is clamped to the
edge, never filled). `random_borders` then adds content-free bands to BOTH images at random, independent of
the field, as rectified cameras and depth holes have them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nmr.training.augment import Field, inverse_on_grid, sample_misalignment
from nmr.training.config import AugmentConfig

BASE_FAMILIES = ('affine', 'homography', 'nonrigid', 'distortion')
FAMILIES = (*BASE_FAMILIES, 'composite', 'legacy', 'fov')
# Families that are not a smooth field and need the fixed camera's depth (nmr.training.parallax): the trainer
# (nmr.training.data.TrainingPairs) draws them, `cue_free_pair` cannot; `composite` never composes them.
DEPTH_FAMILIES = ('parallax',)
TRAINING_FAMILIES = (*FAMILIES, *DEPTH_FAMILIES)


@dataclass
class Affine:
    h: int
    w: int
    matrix: torch.Tensor  # 2x2: A - I about the image centre
    shift: torch.Tensor  # 2

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        px, py = x - (self.w - 1) / 2.0, y - (self.h - 1) / 2.0
        m = self.matrix
        return torch.stack(
            (m[0, 0] * px + m[0, 1] * py + self.shift[0], m[1, 0] * px + m[1, 1] * py + self.shift[1]), dim=-1
        )


@dataclass
class Homography:
    h: int
    w: int
    H: torch.Tensor  # 3x3 float64: fixed pixel (x, y, 1) -> moving pixel (homogeneous)

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        H = self.H
        z = H[2, 0] * x + H[2, 1] * y + H[2, 2]
        mx = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / z
        my = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / z
        return torch.stack((mx - x, my - y), dim=-1)


@dataclass
class ControlGrid:
    h: int
    w: int
    control: torch.Tensor  # 1x2xGxG displacements (pixels) at control points spanning the image

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gx = 2.0 * x / max(self.w - 1, 1) - 1.0
        gy = 2.0 * y / max(self.h - 1, 1) - 1.0
        grid = torch.stack((gx, gy), dim=-1).reshape(1, -1, 1, 2).to(self.control.dtype)
        e = F.grid_sample(self.control, grid, mode='bicubic', padding_mode='border', align_corners=True)
        return e.reshape(2, *x.shape).permute(*range(1, x.dim() + 1), 0)


@dataclass
class RadialDistortion:
    h: int
    w: int
    centre: tuple[float, float]  # distortion centre (x, y), pixels
    focal: float  # pixels: normalises the radius
    k1: float
    k2: float
    offset: tuple[float, float]  # principal-point offset (pixels)

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        px, py = x - self.centre[0], y - self.centre[1]
        r2 = (px * px + py * py) / (self.focal * self.focal)
        k = self.k1 * r2 + self.k2 * r2 * r2
        return torch.stack((px * k + self.offset[0], py * k + self.offset[1]), dim=-1)


@dataclass
class Composed:
    """v -> T_n(..T_1(v)): phi(v) = the end position minus v (each T_i(p) = p + phi_i(p))."""

    h: int
    w: int
    parts: Sequence[Field]

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        px, py = x, y
        for f in self.parts:
            d = f.at(px, py)
            px, py = px + d[..., 0], py + d[..., 1]
        return torch.stack((px - x, py - y), dim=-1)


@dataclass
class Scaled:
    """gain x another field (families that are linear in their magnitude)."""

    h: int
    w: int
    field: Field
    gain: float

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.field.at(x, y) * self.gain


# -- random shapes: each returns gain -> Field, the gain in pixels (roughly the mean displacement) --------------


def _u(g: torch.Generator, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def _affine_shape(h: int, w: int, g: torch.Generator) -> Callable[[float], Field]:
    # A random linear part (rotation, anisotropic scale, shear) and a random translation direction: at gain 1
    # the linear part moves the image corners by ~1 px and the shift is ~1 px.
    rot, sx, sy, sh = _u(g), _u(g), _u(g), _u(g)
    lin = torch.tensor([[sx, sh - rot], [rot, sy]], dtype=torch.float64)
    lin = lin / max(float(torch.linalg.matrix_norm(lin, ord=2)), 1e-6) * (_u(g, 0.0, 1.0) / (0.5 * math.hypot(h, w)))
    ang = _u(g, 0.0, 2.0 * math.pi)
    shift = torch.tensor([math.cos(ang), math.sin(ang)], dtype=torch.float64) * _u(g, 0.0, 1.0)
    return lambda gain: Affine(h, w, lin * gain, shift * gain)


def _homography_shape(h: int, w: int, g: torch.Generator) -> Callable[[float], Field]:
    corners = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]], dtype=torch.float64)
    moves = torch.rand(4, 2, generator=g, dtype=torch.float64) * 2.0 - 1.0

    def make(gain: float) -> Field:
        return Homography(h, w, homography_from_points(corners, corners + moves * gain))

    return make


def _nonrigid_shape(h: int, w: int, g: torch.Generator, grids: Sequence[int]) -> Callable[[float], Field]:
    lo, hi = int(grids[0]), int(grids[-1])
    n = lo + int(torch.randint(0, hi - lo + 1, (1,), generator=g))
    control = torch.randn(1, 2, n, n, generator=g, dtype=torch.float64)
    base = ControlGrid(h, w, control)
    return lambda gain: Scaled(h, w, base, gain)


def _distortion_shape(h: int, w: int, g: torch.Generator) -> Callable[[float], Field]:
    # k1 / k2 in units where the image corner (r ~ 0.8 for f = w) moves by ~k px at gain 1; principal point
    # offset up to ~0.5 px at gain 1 in a random direction.
    k1, k2 = _u(g), 0.5 * _u(g)
    pp = (0.5 * _u(g), 0.5 * _u(g))
    focal = float(w)
    cx, cy = (w - 1) / 2.0 + 0.05 * w * _u(g), (h - 1) / 2.0 + 0.05 * h * _u(g)
    corner_r = math.hypot(max(cx, w - 1 - cx), max(cy, h - 1 - cy))
    norm = corner_r * ((corner_r / focal) ** 2)  # |displacement| at the farthest corner per unit k1

    def make(gain: float) -> Field:
        return RadialDistortion(h, w, (cx, cy), focal, k1 * gain / norm, k2 * gain / norm,
                                (pp[0] * gain, pp[1] * gain))

    return make


def _shape(name: str, h: int, w: int, g: torch.Generator, cfg: AugmentConfig) -> Callable[[float], Field]:
    if name == 'affine':
        return _affine_shape(h, w, g)
    if name == 'homography':
        return _homography_shape(h, w, g)
    if name == 'nonrigid':
        return _nonrigid_shape(h, w, g, cfg.nonrigid_grids)
    if name == 'distortion':
        return _distortion_shape(h, w, g)
    if name == 'composite':
        # Compose only the base families the config lists, so that leaving one out (a held-back family)
        # also keeps it out of the compositions; a list without base families composes all of them.
        bases = [f for f in BASE_FAMILIES if f in cfg.families] or list(BASE_FAMILIES)
        k = min(2 + int(torch.randint(0, 2, (1,), generator=g)), len(bases))
        order = torch.randperm(len(bases), generator=g)[:k].tolist()
        shapes = [_shape(bases[i], h, w, g, cfg) for i in order]
        raw = torch.rand(k, generator=g, dtype=torch.float64) + 0.3
        weights = (raw / raw.sum()).tolist()
        return lambda gain: Composed(h, w, [s(gain * wt) for s, wt in zip(shapes, weights)])
    if name in DEPTH_FAMILIES:
        raise ValueError(f'misalignment family {name!r} needs a depth map: use nmr.training.parallax.parallax_pair '
                         '(TrainingPairs does), not cue_free_pair')
    raise ValueError(f'unknown misalignment family {name!r}: use one of {", ".join(FAMILIES)}')


# -- magnitude control ------------------------------------------------------------------------------------------


@dataclass
class FieldStats:
    mean: float  # mean |phi| over the region (px)
    peak: float  # max |phi| (px)
    gradient: float  # max spectral norm of grad phi (finite differences)


def field_stats(field: Field, region: tuple[int, int, int, int] | None = None, n: int = 17) -> FieldStats:
    """Mean / peak magnitude and the largest Jacobian norm of `field` on an n x n grid of `region`
    (y0, x0, h, w; default the whole field), corners included."""
    y0, x0, rh, rw = region or (0, 0, field.h, field.w)
    ys, xs = torch.meshgrid(
        torch.linspace(y0, y0 + rh - 1, n, dtype=torch.float64),
        torch.linspace(x0, x0 + rw - 1, n, dtype=torch.float64),
        indexing='ij',
    )
    phi = field.at(xs, ys)
    mag = phi.norm(dim=-1)
    e = 0.5
    jx = (field.at(xs + e, ys) - field.at(xs - e, ys)) / (2 * e)  # d phi / dx, shape n x n x 2
    jy = (field.at(xs, ys + e) - field.at(xs, ys - e)) / (2 * e)
    jac = torch.stack((jx, jy), dim=-1)  # [..., component, derivative]
    grad = torch.linalg.matrix_norm(jac, ord=2)
    return FieldStats(float(mag.mean()), float(mag.max()), float(grad.max()))


def calibrate(
    make: Callable[[float], Field],
    target_mean: float,
    peak: float,
    max_gradient: float,
    region: tuple[int, int, int, int] | None = None,
) -> Field:
    """The field of `make(gain)` whose mean |phi| over `region` is `target_mean`, unless that would exceed
    `peak` or `max_gradient` (then the largest gain that respects both)."""
    gain = max(target_mean, 1e-3)
    for _ in range(6):  # secant on gain: mean |phi| is close to linear in it
        st = field_stats(make(gain), region)
        if st.mean <= 1e-9:
            break
        ratio = target_mean / st.mean
        gain *= ratio
        if abs(ratio - 1.0) < 1e-3:
            break
    for _ in range(8):
        st = field_stats(make(gain), region)
        over = max(st.peak / max(peak, 1e-9), st.gradient / max(max_gradient, 1e-9))
        if over <= 1.0:
            break
        gain *= 0.98 / over
    return make(gain)


def sample_family(
    name: str,
    h: int,
    w: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
    region: tuple[int, int, int, int] | None = None,
    strength: float = 1.0,
) -> Field:
    """One random field of family `name` on an h x w canvas; magnitudes for the visible `region` (y0, x0,
    rh, rw; default the whole canvas), in pixels at `cfg.reference_width` scaled by the region's width,
    times `strength` (the training curriculum)."""
    if name == 'legacy':
        return sample_misalignment(h, w, _legacy_scaled(cfg, strength), generator)
    if name == 'fov':
        return _fov_field(h, w, cfg, generator, region or (0, 0, h, w), strength)
    rw = (region or (0, 0, h, w))[3]
    s = rw / float(cfg.reference_width) * strength
    lo, hi = cfg.mean_px
    target = (lo + (hi - lo) * float(torch.rand(1, generator=generator, dtype=torch.float64))) * s
    make = _shape(name, h, w, generator, cfg)
    return calibrate(make, target, cfg.peak_px * s, cfg.max_gradient, region)


def _fov_field(
    h: int, w: int, cfg: AugmentConfig, g: torch.Generator, region: tuple[int, int, int, int], strength: float
) -> Affine:
    """The `fov` family: phi(v) = (A - I)(v - c) + t about the canvas centre c, A = roll x diag(sx, sy).

    A zoom below 1 (the moving camera sees more) makes the moving crop sample beyond the visible crop: the
    zoom-out and the offset are shrunk until every sample stays on the canvas (no clamped edge, no cue)."""
    lo, hi = cfg.fov_zoom
    zoom = 1.0 + (lo + (hi - lo) * _u(g, 0.0, 1.0) - 1.0) * strength
    aspect = math.exp(cfg.fov_aspect * _u(g) * strength)
    roll = math.radians(2.0 * _u(g) * strength)
    rot = torch.tensor([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]], dtype=torch.float64)
    linear = rot @ torch.diag(torch.tensor([zoom * math.sqrt(aspect), zoom / math.sqrt(aspect)], dtype=torch.float64))
    _, _, rh, rw = region
    shift = torch.tensor([0.08 * rw * _u(g), 0.08 * rh * _u(g)], dtype=torch.float64) * strength
    eye = torch.eye(2, dtype=torch.float64)
    half_crop = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64) * torch.tensor(
        [(rw - 1) / 2.0, (rh - 1) / 2.0], dtype=torch.float64)
    half_canvas = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64)
    for _ in range(40):
        # the aligned canvas position each moving-crop corner samples: c + A^-1 (u - c - t)
        reach = torch.linalg.solve(linear, (half_crop - shift).T).T.abs()
        if bool((reach <= half_canvas).all()):
            break
        linear, shift = eye + 0.9 * (linear - eye), 0.9 * shift
    return Affine(h, w, linear - eye, shift)


def _legacy_scaled(cfg: AugmentConfig, strength: float) -> AugmentConfig:
    from dataclasses import replace

    if strength == 1.0:
        return cfg
    return replace(cfg, shift_px=cfg.shift_px * strength, rotation_deg=cfg.rotation_deg * strength,
                   scale=cfg.scale * strength, shear=cfg.shear * strength, elastic_px=cfg.elastic_px * strength)


def choose_family(cfg: AugmentConfig, generator: torch.Generator) -> str:
    names = list(cfg.families)
    return names[int(torch.randint(0, len(names), (1,), generator=generator))]


# -- cue-free pairs ---------------------------------------------------------------------------------------------


def crop_region(h: int, w: int, canvas_scale: float) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw): the centred crop that is 1 / canvas_scale of an h x w canvas."""
    ch, cw = max(8, round(h / canvas_scale)), max(8, round(w / canvas_scale))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def warp_clamped(image: torch.Tensor, field: Field, stride: int = 1) -> torch.Tensor:
    """The misaligned moving image `M(m) = image(m + d(m))` on the whole canvas, samples beyond the canvas
    clamped to its edge (replicated, never a fill value: no content-free wedge)."""
    from nmr.models.resampler import warp

    d = inverse_on_grid(field, stride=stride)
    h, w = image.shape[-2:]
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    dx = (xs + d[0]).clamp(0, w - 1) - xs
    dy = (ys + d[1]).clamp(0, h - 1) - ys
    out, _ = warp(image.to(torch.float64)[None], torch.stack((dx, dy))[None])
    return out[0].to(image.dtype if image.is_floating_point() else torch.float32)


def field_grid(field: Field, region: tuple[int, int, int, int]) -> torch.Tensor:
    """phi on the pixel grid of `region` (y0, x0, h, w) -> 2 x h x w float32 (pixels)."""
    y0, x0, rh, rw = region
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + rh, dtype=torch.float64), torch.arange(x0, x0 + rw, dtype=torch.float64), indexing='ij'
    )
    return field.at(xs, ys).permute(2, 0, 1).to(torch.float32)


def inside(flow: torch.Tensor) -> torch.Tensor:
    """1xHxW bool: where v + flow(v) lands inside the (same-size) moving crop."""
    h, w = flow.shape[-2:]
    x = torch.arange(w, dtype=flow.dtype).view(1, w) + flow[0]
    y = torch.arange(h, dtype=flow.dtype).view(h, 1) + flow[1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1))[None]


@dataclass
class CueFreePair:
    moving: torch.Tensor  # C x ch x cw, the misaligned moving crop
    fixed: torch.Tensor  # C x ch x cw, the fixed crop
    flow: torch.Tensor  # 2 x ch x cw, exact phi on the crop's grid (pixels)
    valid: torch.Tensor  # 1 x ch x cw bool: v + phi(v) inside the moving crop
    family: str


def cue_free_pair(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    family: str | None = None,
    strength: float = 1.0,
    stride: int = 1,
    out_hw: tuple[int, int] | None = None,
) -> CueFreePair:
    """Misalign a pre-aligned pair (same size; tensors C x H x W) by a random field of `family` (default: one
    of `cfg.families` at random) and crop the centre of BOTH images (see the module doc): `out_hw` pixels, or
    1 / cfg.canvas_scale of each side."""
    h, w = moving.shape[-2:]
    if tuple(fixed.shape[-2:]) != (h, w):
        raise ValueError(f'cue-free misalignment needs a pre-aligned pair of one size, got moving {(h, w)} '
                         f'and fixed {tuple(fixed.shape[-2:])}')
    name = family or choose_family(cfg, generator)
    if out_hw is None:
        region = crop_region(h, w, cfg.canvas_scale)
    else:
        region = ((h - out_hw[0]) // 2, (w - out_hw[1]) // 2, int(out_hw[0]), int(out_hw[1]))
    field = sample_family(name, h, w, cfg, generator, region, strength)
    warped = warp_clamped(moving, field, stride)
    y0, x0, ch, cw = region
    flow = field_grid(field, region)
    return CueFreePair(
        moving=warped[..., y0:y0 + ch, x0:x0 + cw],
        fixed=fixed[..., y0:y0 + ch, x0:x0 + cw],
        flow=flow,
        valid=inside(flow),
        family=name,
    )


def random_borders(
    moving: torch.Tensor, fixed: torch.Tensor, valid: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
    fill: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With probability `cfg.border_prob`, content-free bands (value `fill`) at random sides of BOTH images,
    each up to `cfg.border_max` of the side, drawn independently of the field; the ground truth is marked
    invalid under them (nothing to match there). Tensors: C x H x W (valid 1 x H x W bool)."""
    if cfg.border_prob <= 0 or _u(generator, 0.0, 1.0) >= cfg.border_prob:
        return moving, fixed, valid
    h, w = moving.shape[-2:]
    keep = torch.ones(h, w, dtype=torch.bool)
    for side in range(4):
        if _u(generator, 0.0, 1.0) < 0.5:
            continue
        n = round(_u(generator, 0.0, cfg.border_max) * (h if side < 2 else w))
        if n <= 0:
            continue
        if side == 0:
            keep[:n] = False
        elif side == 1:
            keep[h - n:] = False
        elif side == 2:
            keep[:, :n] = False
        else:
            keep[:, w - n:] = False
    moving = torch.where(keep, moving, torch.full_like(moving, fill))
    fixed = torch.where(keep, fixed, torch.full_like(fixed, fill))
    return moving, fixed, valid & keep


def homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 3x3 homography (float64, H[2, 2] = 1) mapping 4 points `src` (4x2) onto `dst` (DLT, exact)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs.extend([u, v])
    a = torch.tensor(rows, dtype=torch.float64)
    b = torch.tensor(rhs, dtype=torch.float64)
    sol = torch.linalg.solve(a, b)
    return torch.cat((sol, torch.ones(1, dtype=torch.float64))).reshape(3, 3)
