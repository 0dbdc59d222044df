"""`corr`: a correlation-based R_Phi (PWC-Net style) that matches features instead of regressing flow.

Why: the U-Net regressors (`paper`, `fast`) must discover cross-modal correspondence from their input
pixels, which takes ~100k GPU steps. Here the matching is explicit: each modality has its own feature
pyramid, a cosine cost volume compares the fixed features with the moving features around every pixel,
and small decoders turn the costs into flow, coarse to fine. The encoders can be trained directly for
matching (contrastive loss, `nmr.training.objectives`), and the flow decoders from exact ground truth.

Data flow (strides relative to the padded network input, `levels = len(encoder_channels)`):

    moving (3ch) ──► moving pyramid  m_1 .. m_L   (stride 2 .. 2^L)
    fixed (1ch [+ depth validity]) ──► fixed pyramid f_1 .. f_L
    level L:   cost(f_L, m_L)                       ──► decoder ──► flow_L
    level l<L: up(flow_{l+1}) ──► warp m_l by it ──► cost(f_l, warped m_l) ──► decoder ──► + residual
    output:    flow_1 (stride 2) bilinearly up-sampled to the input grid

Flows inside the network are in pixels of their own level; the output is in pixels of the input grid
(the SPEC convention on the network grid). All ops are ONNX opset-17 / TensorRT friendly: the cost
volume is pad + static slices, the feature warp one `grid_sample` (align_corners=False, the same pixel
centres as `nmr.models.resampler`), sizes come from tensor shapes so height and width stay dynamic.
The flow heads start at zero, so the untrained network is the identity registration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nmr.models.xfeat_stem import XFeatPyramid

EPS = 1e-6
# Inverse-depth input marks holes (and beyond max range) as -1: the validity channel is x > this.
DEPTH_VALID_THRESHOLD = -0.999


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def normalise_features(x: torch.Tensor) -> torch.Tensor:
    """Unit length along channels (cosine similarity by dot product); zero vectors stay zero."""
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + EPS)


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, radius: int) -> torch.Tensor:
    """Bx(2r+1)^2xHxW: channel `(dy + r) * (2r + 1) + (dx + r)` = <fixed(y, x), moving(y + dy, x + dx)> / C.

    Inputs are expected to be normalised (then the mean over channels is cosine / C, kept in a small range
    for the decoder). Outside the moving map the cost is 0 (zero padding).
    """
    h, w = fixed.shape[-2], fixed.shape[-1]
    k = 2 * radius + 1
    padded = F.pad(moving, (radius, radius, radius, radius))
    if torch.onnx.is_in_onnx_export():
        return _cost_volume_by_rows(fixed, padded, k)
    costs = [
        (fixed * padded[:, :, dy : dy + h, dx : dx + w]).sum(dim=1, keepdim=True) for dy in range(k) for dx in range(k)
    ]
    return torch.cat(costs, dim=1)


def _cost_volume_by_rows(fixed: torch.Tensor, padded: torch.Tensor, k: int) -> torch.Tensor:
    """The same cost volume with one Mul and one ReduceSum per row of displacements (export only).

    Why: exported per displacement, the cost volumes were ~240 Slice/Mul/ReduceSum triples of small
    tensors, about half of the shipped network's time in ONNX Runtime on CPU, mostly per-op overhead.
    Stacking a row's k shifted slices first makes ~3x fewer ops: the network took 0.75-0.77x the time
    (shipped `corr` at 160x128, one thread, interleaved; docs/performance.md), with flows equal within
    1.2e-6 px. Training keeps the per-displacement form (no k-fold stacked copy held for backward).
    """
    h, w = fixed.shape[-2], fixed.shape[-1]
    rows = []
    for dy in range(k):
        row = padded[:, :, dy : dy + h, :]
        shifted = torch.stack([row[:, :, :, dx : dx + w] for dx in range(k)], dim=1)  # B x k x C x H x W
        rows.append((shifted * fixed[:, None]).sum(dim=2))
    return torch.cat(rows, dim=1)


def warp_features(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """features(v + flow(v)), bilinear, zeros outside; flow in pixels of the features' own grid (float32).

    The float32 counterpart of `nmr.models.resampler.warp` for use inside the network (exportable).
    """
    h, w = features.shape[-2], features.shape[-1]
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(features, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def upsample_flow(flow: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Flow on a grid -> the grid `factor` times finer (values scaled: flow is in pixels of its grid)."""
    return F.interpolate(flow, scale_factor=float(factor), mode='bilinear', align_corners=False) * float(factor)


class Pyramid(nn.Module):
    """Two 3x3 convolutions per level, the first with stride 2: features at strides 2, 4, ..., 2^L."""

    def __init__(self, in_channels: int, channels: list[int]) -> None:
        super().__init__()
        levels = []
        cin = in_channels
        for c in channels:
            levels.append(
                nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1), _act(), nn.Conv2d(c, c, 3, padding=1), _act())
            )
            cin = c
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class FlowDecoder(nn.Module):
    """cat(costs, fixed features, current flow) -> a flow residual (pixels of this level)."""

    def __init__(self, in_channels: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for c in hidden:
            layers += [nn.Conv2d(cin, c, 3, padding=1), _act()]
            cin = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class CorrOutput:
    """Everything training needs from one forward pass: the flow and what it was built from."""

    flow: torch.Tensor  # Bx2xHxW, pixels of the input grid
    level_flows: list[torch.Tensor]  # per level, finest first, pixels of that level (padded grid)
    fixed_features: list[torch.Tensor]  # finest first
    moving_features: list[torch.Tensor]  # finest first (not warped)


class CorrRegistrationNet(nn.Module):
    """R_Phi `corr`: forward(moving Bx3xHxW, fixed BxCxHxW in [-1, 1]) -> flow Bx2xHxW (pixels)."""

    def __init__(
        self,
        moving_channels: int,
        fixed_channels: int,
        channels: list[int],
        radii: list[int],
        decoder_channels: list[int],
        depth_validity: bool,
        stem: str = 'plain',
    ) -> None:
        super().__init__()
        if len(radii) != len(channels):
            raise ValueError(f'corr needs one radius per pyramid level: {len(channels)} levels, radii {radii}')
        self.depth_validity = depth_validity
        fixed_in = fixed_channels + (1 if depth_validity else 0)
        self.moving_pyramid: nn.Module
        self.fixed_pyramid: nn.Module
        if stem == 'xfeat':
            self.moving_pyramid = XFeatPyramid(moving_channels)
            self.fixed_pyramid = XFeatPyramid(fixed_in, image_channels=fixed_channels)
        else:
            self.moving_pyramid = Pyramid(moving_channels, channels)
            self.fixed_pyramid = Pyramid(fixed_in, channels)
        self.radii = [int(r) for r in radii]  # finest first
        decoders = []
        for i, (c, r) in enumerate(zip(channels, radii)):
            hidden = decoder_channels if i > 0 else [max(16, d // 2) for d in decoder_channels]
            decoders.append(FlowDecoder((2 * r + 1) ** 2 + c + 2, hidden))
        self.decoders = nn.ModuleList(decoders)  # finest first
        self.down_factor = 2 ** len(channels)

    def _fixed_input(self, fixed: torch.Tensor) -> torch.Tensor:
        if not self.depth_validity:
            return fixed
        valid = (fixed[:, :1] > DEPTH_VALID_THRESHOLD).to(fixed.dtype)
        return torch.cat((fixed, valid), dim=1)

    def features(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised (moving, fixed) feature pyramids, finest first, of inputs already padded."""
        m = [normalise_features(x) for x in self.moving_pyramid(moving)]
        f = [normalise_features(x) for x in self.fixed_pyramid(self._fixed_input(fixed))]
        return m, f

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad to a multiple of the coarsest stride (sizes from shapes: ONNX-dynamic)."""
        h, w = x.shape[-2], x.shape[-1]
        d = self.down_factor
        return F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d), mode='replicate')

    def encode(self, moving: torch.Tensor, fixed: torch.Tensor) -> CorrOutput:
        """Only the feature pyramids (contrastive pre-training); the flow fields are left empty."""
        mov_feats, fix_feats = self.features(self._pad(moving), self._pad(fixed))
        return CorrOutput(moving.new_zeros(0), [], fix_feats, mov_feats)

    def run(self, moving: torch.Tensor, fixed: torch.Tensor) -> CorrOutput:
        """The full forward pass with intermediate results (training)."""
        h, w = moving.shape[-2], moving.shape[-1]
        mov_feats, fix_feats = self.features(self._pad(moving), self._pad(fixed))
        flow: torch.Tensor | None = None
        level_flows: list[torch.Tensor] = []
        for i in range(len(self.decoders) - 1, -1, -1):
            f, m = fix_feats[i], mov_feats[i]
            if flow is None:
                flow = torch.zeros_like(f[:, :2])
                warped = m
            else:
                flow = upsample_flow(flow)
                warped = warp_features(m, flow)
            costs = cost_volume(f, warped, self.radii[i])
            flow = flow + self.decoders[i](torch.cat((costs, f, flow), dim=1))
            level_flows.insert(0, flow)
        assert flow is not None
        full = upsample_flow(flow)[:, :, :h, :w]
        return CorrOutput(full, level_flows, fix_feats, mov_feats)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.run(moving, fixed).flow
