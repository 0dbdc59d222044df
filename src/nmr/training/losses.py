"""NeMAR's losses (paper eq. 2-6) and the cross-modality baselines of Table 1.

Units. Our flow is in pixels of the network grid; the paper's (published code's) deformation is in
grid_sample's normalised units, where the image spans [-1, 1]. The smoothness term converts the flow
differences to those units (dx * 2 / W, dy * 2 / H) before weighting, so `lambda_S = 200` regularises
exactly as much as in the paper, at any network resolution.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# The four "forward" neighbour offsets (dy, dx); with their mirror images they make up the 3x3 neighbourhood.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def _shifted_pair(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t[v], t[v + (dy, dx)]) over all v whose neighbour is inside the image."""
    h, w = t.shape[-2:]
    y0, y1 = max(0, -dy), h - max(0, dy)
    x0, x1 = max(0, -dx), w - max(0, dx)
    a = t[..., y0:y1, x0:x1]
    b = t[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return a, b


def bilateral_smoothness(
    flow: torch.Tensor, image: torch.Tensor | None, alpha: float = 1.0, bilateral: bool = True
) -> torch.Tensor:
    """L_smooth (eq. 2-3): mean over pixels v of sum over u in the 3x3 neighbourhood N(v) of
    `B(u, v) * ||phi(u) - phi(v)||_1`, with `B(u, v) = exp(-alpha * mean_c |O[u] - O[v]|)`.

    `flow` Bx2xHxW in pixels (converted to normalised units, see the module doc); `image` is O, the warped
    moving image (BxCxHxW), whose weights are DETACHED (the paper's "treated as constant"): R_Phi cannot
    lower the loss by making the image edgy. Neighbours outside the image are left out; each unordered
    pair therefore counts twice, once from each end, as in the sum over N(v). `bilateral=False` gives
    B = 1 (Table 3 "W/O Bilateral").
    """
    h, w = flow.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
    phi = flow * scale
    total = flow.new_zeros(())
    guide = image.detach() if (bilateral and image is not None) else None
    for dy, dx in _HALF_NEIGHBOURHOOD:
        a, b = _shifted_pair(phi, dy, dx)
        diff = (a - b).abs().sum(dim=1)  # B x h' x w'
        if guide is not None:
            ga, gb = _shifted_pair(guide, dy, dx)
            diff = diff * torch.exp(-alpha * (ga - gb).abs().mean(dim=1))
        total = total + diff.sum()
    return 2.0 * total / (flow.shape[0] * h * w)


def reconstruction_l1(fake: torch.Tensor, fixed: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """|fake - fixed|_1 averaged over the pixels where R_S sampled inside the moving image (`valid`
    Bx1xHxW), or over all pixels when `valid` is None (the paper's plain mean).

    Outside the moving image R_S returns zeros, which no T can predict: with the plain mean every pixel
    that a non-zero flow moves past the border adds error, a bias towards the identity that is as large as
    the alignment gain itself for a few-pixel misalignment (benchmarks/nemar_signal.py), and R cannot
    leave the identity. The register-first fake T(R_S(a, phi)) uses the same mask.
    """
    diff = (fake.float() - fixed.float()).abs()
    if valid is None:
        return diff.mean()
    mask = valid.to(diff.dtype).expand_as(diff)
    return (diff * mask).sum() / mask.sum().clamp_min(1.0)


class GANLoss(nn.Module):
    """'vanilla' (BCE with logits: the paper's log D / log(1 - D), eq. 5) or 'lsgan' (MSE to 1 / 0)."""

    def __init__(self, mode: str = 'vanilla') -> None:
        super().__init__()
        if mode not in ('vanilla', 'lsgan'):
            raise ValueError(f'gan mode {mode!r} is not vanilla or lsgan')
        self.mode = mode

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        if self.mode == 'vanilla':
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.mse_loss(logits.float(), target.float())


def grey(image: torch.Tensor) -> torch.Tensor:
    """BxCxHxW -> Bx1xHxW (channel mean)."""
    return image.mean(dim=1, keepdim=True) if image.shape[1] > 1 else image


def sobel_edges(image: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of the grey image (Bx1xHxW); a differentiable stand-in for Canny edges."""
    g = grey(image)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=g.dtype, device=g.device)
    k = torch.stack((kx, kx.t()))[:, None] / 8.0
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode='replicate'), k)
    return torch.sqrt(d.pow(2).sum(dim=1, keepdim=True) + 1e-6)


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared local normalised cross-correlation (as in VoxelMorph) of Bx1xHxW images; in [0, 1]."""
    a, b = a.float(), b.float()
    pad = window // 2

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode='replicate'), window, stride=1)

    mu_a, mu_b = box(a), box(b)
    cov = box(a * b) - mu_a * mu_b
    var_a = (box(a * a) - mu_a**2).clamp_min(0)
    var_b = (box(b * b) - mu_b**2).clamp_min(0)
    return (cov * cov / (var_a * var_b + eps)).mean()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM (uniform window) of two Bx1xHxW images."""
    a, b = a.float(), b.float()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = window // 2

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode='replicate'), window, stride=1)

    mu_a, mu_b = box(a), box(b)
    var_a = box(a * a) - mu_a**2
    var_b = box(b * b) - mu_b**2
    cov = box(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def baseline_similarity_loss(
    kind: str,
    registered: torch.Tensor,
    registered_edges: torch.Tensor | None,
    fixed: torch.Tensor,
    ncc_window: int = 9,
    ssim_window: int = 7,
) -> torch.Tensor:
    """Table 1's cross-modality losses for R alone (lower is better).

    `ncc`: 1 - local NCC of the grey registered moving image and the fixed image. `ncc_edges` /
    `ssim_edges`: on edge maps; the edges of the deformed image are the moving image's Sobel edges warped
    by the same flow (`registered_edges`), so the loss stays differentiable in the flow (the paper used
    Canny, which is not).
    """
    if kind == 'ncc':
        return 1.0 - local_ncc(grey(registered), grey(fixed), ncc_window)
    if registered_edges is None:
        raise ValueError(f'baseline {kind} needs the warped edge map')
    fixed_edges = sobel_edges(fixed)
    if kind == 'ncc_edges':
        return 1.0 - local_ncc(registered_edges, fixed_edges, ncc_window)
    if kind == 'ssim_edges':
        scale = fixed_edges.detach().amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        mscale = registered_edges.detach().amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return 1.0 - ssim(registered_edges / mscale, fixed_edges / scale, ssim_window, data_range=1.0)
    raise ValueError(f'unknown baseline {kind!r}')


def endpoint_error(flow: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error (pixels) of Bx2xHxW flows over the valid pixels (all when valid is None)."""
    epe = (flow - gt).norm(dim=1)
    if valid is None:
        return epe.mean()
    mask = valid.reshape(epe.shape).to(epe.dtype)
    return (epe * mask).sum() / mask.sum().clamp_min(1.0)
