"""Appearance randomisation and flips for supervised registration batches (network units, [-1, 1]).

Why: R_Phi should match structure, not intensities. Across cameras, scenes and seasons the mapping from
scene to pixel value changes (thermal gain and polarity, depth range, RGB exposure and white balance), so
each pair's images get independent random tone curves, gamma, grey mixing, noise and blur. Flips change
the geometry too, so they transform the ground-truth flow with the images (x -> W-1-x negates dx).
Everything runs on the batch, after the data loader, vectorised per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AppearanceConfig:
    """Probabilities and ranges of the random photometric changes (per pair, per image)."""

    gamma: float = 0.35  # log-uniform gamma in [exp(-g), exp(g)]
    tone_curve: float = 0.5  # probability of a random monotonic tone curve
    invert_fixed: float = 0.15  # LWIR polarity inversion (black-hot vs white-hot); not for depth
    grey_moving: float = 0.25  # probability of mixing RGB towards grey
    noise_std: float = 0.03
    blur: float = 0.2  # probability of a 3x3 blur
    hflip: float = 0.5
    vflip: float = 0.0


def _per_sample(x: torch.Tensor, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(x.shape[0], 1, 1, 1, generator=g).to(x.device)


def _photometric(x: torch.Tensor, cfg: AppearanceConfig, g: torch.Generator, keep_holes: bool) -> torch.Tensor:
    """Random gamma, tone curve, noise and blur on [-1, 1] images; `keep_holes` leaves -1 pixels at -1."""
    holes = x <= -0.999 if keep_holes else None
    u = (x + 1.0) * 0.5
    gamma = torch.exp(_per_sample(x, g, -cfg.gamma, cfg.gamma))
    u = u.clamp(0.0, 1.0) ** gamma
    # A monotonic tone curve through (0,0), (a, b), (1,1): piecewise linear with a random knee.
    use = (_per_sample(x, g) < cfg.tone_curve).to(x.dtype)
    a = _per_sample(x, g, 0.25, 0.75)
    b = (a + _per_sample(x, g, -0.2, 0.2)).clamp(0.1, 0.9)
    curved = torch.where(u < a, u * b / a, b + (u - a) * (1.0 - b) / (1.0 - a))
    u = use * curved + (1.0 - use) * u
    u = u + cfg.noise_std * _per_sample(x, g) * torch.randn(x.shape, generator=g).to(x.device)
    blur = (_per_sample(x, g) < cfg.blur).to(x.dtype)
    c = x.shape[1]
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=x.device) / 16.0
    blurred = F.conv2d(F.pad(u, (1, 1, 1, 1), mode='replicate'), kernel.expand(c, 1, 3, 3), groups=c)
    u = blur * blurred + (1.0 - blur) * u
    out = u.clamp(0.0, 1.0) * 2.0 - 1.0
    if holes is not None:
        out = torch.where(holes, torch.full_like(out, -1.0), out)
    return out


def randomise_appearance(
    moving: torch.Tensor, fixed: torch.Tensor, fixed_kind: str, cfg: AppearanceConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent photometric changes of the moving (RGB) and fixed images; geometry untouched."""
    grey = moving.mean(dim=1, keepdim=True).expand_as(moving)
    mix = (_per_sample(moving, g) < cfg.grey_moving).to(moving.dtype) * _per_sample(moving, g, 0.5, 1.0)
    moving = _photometric(moving * (1.0 - mix) + grey * mix, cfg, g, keep_holes=False)
    depth = fixed_kind == 'depth'
    fixed = _photometric(fixed, cfg, g, keep_holes=depth)
    if not depth and cfg.invert_fixed > 0:
        flip = _per_sample(fixed, g) < cfg.invert_fixed
        fixed = torch.where(flip, -fixed, fixed)
    return moving, fixed


def random_flips(
    tensors: dict[str, torch.Tensor], cfg: AppearanceConfig, g: torch.Generator
) -> dict[str, torch.Tensor]:
    """Flip whole pairs: 'moving', 'fixed', 'valid' are images; 'gt_flow' (Bx2xHxW) changes sign too."""
    out = dict(tensors)
    n = tensors['moving'].shape[0]
    for dim, prob, channel in ((-1, cfg.hflip, 0), (-2, cfg.vflip, 1)):
        if prob <= 0:
            continue
        pick = (torch.rand(n, generator=g) < prob).to(tensors['moving'].device)
        if not bool(pick.any()):
            continue
        sel = pick.view(n, 1, 1, 1)
        for key, value in out.items():
            flipped = value.flip(dim)
            if key == 'gt_flow':
                sign = torch.ones(1, 2, 1, 1, device=value.device, dtype=value.dtype)
                sign[0, channel] = -1.0
                flipped = flipped * sign
            out[key] = torch.where(sel, flipped, value)
    return out
