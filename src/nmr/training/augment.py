"""Synthetic misalignment for pre-aligned pairs, with exact ground-truth flow (for validation metrics only).

Given an aligned pair (moving A, fixed F) we draw a smooth field `phi` on the FIXED grid (random affine +
elastic part from a coarse grid of random control displacements) and build the misaligned moving image
M so that the SPEC convention holds exactly: `M(v + phi(v)) = A(v)`, i.e. warping M by phi registers it
back onto F. That needs the inverse map: `M(m) = A(m + d(m))` with `d(m) = -phi(m + d(m))`, solved by
fixed-point iteration (converges because phi is smooth: its Jacobian is far below 1). phi is evaluated
analytically off-grid (affine) and by interpolating the control grid (elastic), so the inverse is exact up
to the iteration's tolerance (~1e-3 px after 20 iterations).

The ground truth never enters a loss: the trainer only uses it for EPE during validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from nmr.models.resampler import warp
from nmr.training.config import AugmentConfig


class Field(Protocol):
    """A displacement field on an h x w fixed grid, evaluable off-grid (pixels): `Misalignment` and the
    families of `nmr.training.families`."""

    h: int
    w: int

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Misalignment:
    """A random smooth field, evaluable at any (x, y) in pixels of an h x w image."""

    h: int
    w: int
    matrix: torch.Tensor  # 2x2, maps (x - cx, y - cy) to its displaced position minus itself
    shift: torch.Tensor  # 2
    control: torch.Tensor  # 1x2xGxG elastic control displacements (pixels)

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """phi at positions x, y (any equal shapes, pixels) -> shape + (2,) displacement in pixels."""
        cx, cy = (self.w - 1) / 2.0, (self.h - 1) / 2.0
        px, py = x - cx, y - cy
        m = self.matrix
        ax = m[0, 0] * px + m[0, 1] * py + self.shift[0]
        ay = m[1, 0] * px + m[1, 1] * py + self.shift[1]
        # Elastic: control grid spans the image corner to corner (align_corners=True), border-clamped.
        gx = 2.0 * x / max(self.w - 1, 1) - 1.0
        gy = 2.0 * y / max(self.h - 1, 1) - 1.0
        grid = torch.stack((gx, gy), dim=-1).reshape(1, -1, 1, 2).to(self.control.dtype)
        e = F.grid_sample(self.control, grid, mode='bicubic', padding_mode='border', align_corners=True)
        e = e.reshape(2, *x.shape)
        return torch.stack((ax + e[0], ay + e[1]), dim=-1)


def sample_misalignment(h: int, w: int, cfg: AugmentConfig, generator: torch.Generator) -> Misalignment:
    """Draw a field for an h x w image; magnitudes scale with w / cfg.reference_width."""
    s = w / float(cfg.reference_width)

    def uniform(lo: float, hi: float, n: int = 1) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    angle = math.radians(cfg.rotation_deg) * (2.0 * float(uniform(0, 1)) - 1.0)
    scale = 1.0 + cfg.scale * (2.0 * float(uniform(0, 1)) - 1.0)
    shear = cfg.shear * (2.0 * float(uniform(0, 1)) - 1.0)
    c, si = math.cos(angle), math.sin(angle)
    a = torch.tensor([[c, -si], [si, c]], dtype=torch.float64) @ torch.tensor(
        [[scale, shear], [0.0, scale]], dtype=torch.float64
    )
    matrix = a - torch.eye(2, dtype=torch.float64)
    shift = uniform(-cfg.shift_px * s, cfg.shift_px * s, 2)
    g = max(2, int(cfg.elastic_grid))
    control = torch.randn(1, 2, g, g, generator=generator, dtype=torch.float64) * (cfg.elastic_px * s)
    return Misalignment(h=h, w=w, matrix=matrix, shift=shift, control=control)


def field_on_grid(mis: Field, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """phi on the pixel grid -> 2xHxW float64 (pixels)."""
    h = mis.h if h is None else h
    w = mis.w if w is None else w
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing='ij'
    )
    return mis.at(xs, ys).permute(2, 0, 1)


def inverse_on_grid(mis: Field, iterations: int = 30, stride: int = 1, tol: float = 1e-4) -> torch.Tensor:
    """d on the moving grid with m + d(m) = the fixed position that lands on m: solves d = -phi(m + d).

    The fixed-point iteration stops early once no position moves by more than `tol` px (the field's
    Jacobian is far below 1, so a handful of iterations usually suffices). `stride > 1` solves on a
    coarse grid (every `stride` pixels, corners included) and interpolates bilinearly: d is as smooth as
    phi, so the error stays at the 1e-3 px level while the cost drops by stride^2. Training uses that;
    ground truth for evaluation manifests keeps stride 1.
    """
    s = max(1, int(stride))
    hc = mis.h if s == 1 else max(2, math.ceil((mis.h - 1) / s) + 1)
    wc = mis.w if s == 1 else max(2, math.ceil((mis.w - 1) / s) + 1)
    ys, xs = torch.meshgrid(
        torch.linspace(0, mis.h - 1, hc, dtype=torch.float64),
        torch.linspace(0, mis.w - 1, wc, dtype=torch.float64),
        indexing='ij',
    )
    d = torch.nan_to_num(-mis.at(xs, ys), nan=0.0, posinf=0.0, neginf=0.0)
    for _ in range(iterations):
        nxt = -mis.at(xs + d[..., 0], ys + d[..., 1])
        # where the iteration runs away (a strong local stretch: the field's Jacobian near or above 1) it can
        # reach inf and NaN (a training item went NaN at epoch 87 of two runs): such points keep their last
        # finite estimate, so the misaligned image stays finite (approximate there, the truth stays exact)
        nxt = torch.where(torch.isfinite(nxt), nxt, d)
        change = float((nxt - d).abs().max())
        d = nxt
        if change < tol:
            break
    d = d.permute(2, 0, 1)
    if (hc, wc) != (mis.h, mis.w):
        d = F.interpolate(d[None], size=(mis.h, mis.w), mode='bilinear', align_corners=True)[0]
    return d


def misalign(
    moving: torch.Tensor, mis: Field, fill: float = -1.0, stride: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Misalign an aligned moving image (CxHxW, same grid as the fixed image) -> (M CxHxW, gt flow 2xHxW).

    `M(v + phi(v)) = moving(v)` for the returned flow phi (float32, pixels, fixed grid). Content that comes
    from outside the aligned image is set to `fill` (-1 = black in network units). `stride`: see
    `inverse_on_grid`.
    """
    h, w = moving.shape[-2:]
    if (h, w) != (mis.h, mis.w):
        raise ValueError(f'misalignment drawn for {mis.h}x{mis.w}, image is {h}x{w}')
    d = inverse_on_grid(mis, stride=stride)
    shifted = (moving.to(torch.float64) - fill)[None]
    out, _ = warp(shifted, d[None])
    misaligned = (out[0] + fill).to(moving.dtype if moving.is_floating_point() else torch.float32)
    return misaligned, field_on_grid(mis).to(torch.float32)
