"""Supervised objectives for R_Phi: multi-scale end-point loss against exact ground truth, and dense
contrastive matching of the two encoders.

Why these two: the flow decoders learn fastest from the exact answer (synthetic misalignments of
pre-aligned pairs, the synthetic rig's recorded ground truth), while cross-modal matching, the hard part,
is learnt best by telling the encoders directly which fixed and moving features belong together
(InfoNCE over pixels of an aligned pair; measured in issue 11 to cut the residual from 64.5 % to 50.9 %
at the same number of flow steps). Neither term is ever part of the NeMAR objective: NeMAR trains on
bags without ground truth.

Ground truth here lives on the network grid (`nmr.models.resampler.flow_to_net`), Bx2xhxw, with a
validity mask Bx1xhxw (False where the true correspondence leaves the moving image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nmr.models.correlation import CorrOutput, cost_volume, normalise_features, warp_features


@dataclass
class SupervisedWeights:
    """Weights of the supervised terms (`loss.*` in the training config)."""

    flow: float = 1.0  # multi-scale end-point loss
    contrastive: float = 0.1  # dense InfoNCE between the encoders (0 = off)
    temperature: float = 0.07
    samples: int = 384  # pixels per pair for the global InfoNCE
    local_radius: int = 3  # neighbours within this radius are the hard negatives of the local InfoNCE
    level_weight: float = 0.5  # weight of each coarser level's end-point loss relative to the output


def pad_to(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return F.pad(x, (0, hw[1] - x.shape[-1], 0, hw[0] - x.shape[-2]))


def level_truth(
    gt: torch.Tensor, valid: torch.Tensor, stride: int, hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth (pixels of the level) and validity on a level's grid of `hw` (padded network grid / stride).

    A level pixel is valid only where every network pixel it covers is valid (average-pooled mask == 1).
    """
    full = (hw[0] * stride, hw[1] * stride)
    g = pad_to(gt, full)
    v = pad_to(valid.to(gt.dtype), full)
    if stride == 1:
        return g, v > 0.5
    g = F.avg_pool2d(g, stride) / float(stride)
    v = F.avg_pool2d(v, stride) > 0.999
    return g, v


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def endpoint_loss(flow: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean end-point error over valid pixels (robust: L1 of the vector length, not squared)."""
    err = torch.sqrt(((flow - gt) ** 2).sum(dim=1, keepdim=True) + 1e-6)
    return masked_mean(err, valid)


def multiscale_flow_loss(
    out: CorrOutput, gt: torch.Tensor, valid: torch.Tensor, level_weight: float
) -> dict[str, torch.Tensor]:
    """End-point loss of the output (network pixels) plus every level's (converted to network pixels)."""
    terms = {'epe_out': endpoint_loss(out.flow, gt, valid)}
    total = terms['epe_out']
    for i, lf in enumerate(out.level_flows):
        stride = 2 ** (i + 1)
        g, v = level_truth(gt, valid, stride, (lf.shape[-2], lf.shape[-1]))
        term = endpoint_loss(lf, g, v) * float(stride)
        terms[f'epe_l{i + 1}'] = term.detach()
        total = total + level_weight * term
    terms['flow'] = total
    return terms


def _global_infonce(
    fixed: torch.Tensor, aligned: torch.Tensor, valid: torch.Tensor, n: int, tau: float, g: torch.Generator | None
) -> torch.Tensor:
    """Per pair: each of `n` valid fixed pixels must pick its own moving feature among the n sampled."""
    losses = []
    for b in range(fixed.shape[0]):
        idx = torch.nonzero(valid[b, 0].flatten(), as_tuple=False).flatten()
        if idx.numel() < 8:
            continue
        pick = idx[torch.randperm(idx.numel(), generator=g)[: min(n, idx.numel())].to(idx.device)]
        f = fixed[b].flatten(1)[:, pick].t()
        m = aligned[b].flatten(1)[:, pick].t()
        logits = f @ m.t() / tau
        target = torch.arange(pick.numel(), device=logits.device)
        losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)))
    if not losses:
        return fixed.sum() * 0.0
    return torch.stack(losses).mean()


def _local_infonce(
    fixed: torch.Tensor, aligned: torch.Tensor, valid: torch.Tensor, radius: int, tau: float
) -> torch.Tensor:
    """Each valid fixed pixel must pick the aligned moving feature over its neighbours (hard negatives)."""
    costs = cost_volume(fixed, aligned, radius) / tau
    centre = (2 * radius + 1) ** 2 // 2
    target = torch.full(costs.shape[:1] + costs.shape[2:], centre, dtype=torch.long, device=costs.device)
    ce = F.cross_entropy(costs, target, reduction='none')
    return masked_mean(ce[:, None], valid)


def contrastive_loss(
    out: CorrOutput,
    gt: torch.Tensor,
    valid: torch.Tensor,
    weights: SupervisedWeights,
    levels: tuple[int, ...] = (1, 2),
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """Dense InfoNCE between fixed features and the moving features brought into alignment by the truth.

    At each level in `levels` (index into the pyramid, finest = 0), the moving features are warped by the
    ground truth so the same pixel shows the same scene point; a global term (random pixels of the pair
    as negatives) and a local term (the neighbours in the cost volume's window, the negatives the flow
    decoder actually has to reject) are averaged.
    """
    total = gt.new_zeros(())
    used = 0
    for i in levels:
        if i >= len(out.fixed_features):
            continue
        f, m = out.fixed_features[i], out.moving_features[i]
        stride = 2 ** (i + 1)
        g_l, v_l = level_truth(gt, valid, stride, (f.shape[-2], f.shape[-1]))
        aligned = normalise_features(warp_features(m, g_l))
        total = total + _global_infonce(f, aligned, v_l, weights.samples, weights.temperature, g)
        total = total + _local_infonce(f, aligned, v_l, weights.local_radius, weights.temperature)
        used += 2
    return total / max(used, 1)
