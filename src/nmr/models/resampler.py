"""R_S, the re-sampling layer: `registered(v) = moving(v + phi(v))` (paper eq. 1, SPEC flow convention).

Pixel `(x, y)` is the centre of column x, row y. With `grid_sample(..., align_corners=False)` the
normalised coordinate of a moving-image pixel position `x` is `(2 x + 1) / W_moving - 1`; identity grid
and sampling therefore use the SAME convention, so zero flow maps every pixel centre onto itself. (The
published NeMAR code builds its identity grid with align_corners=True and samples with False, which
shifts and scales the image by half a pixel; we do not.)

Exactness: in float32 `(2 x + 1) / W - 1` does not round-trip through grid_sample's un-normalisation
exactly, so a zero flow would blend neighbours by ~1e-7. Coordinates and sampling are therefore done in
float64 (where the round-trip error is ~1e-16, far below a float32 ulp) and the result is cast back, which
makes zero flow and integer shifts reproduce the input bit-exactly. The cost is one float64 grid_sample,
small next to the networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# A sample counts as valid when it lies inside the moving image's pixel-centre hull [0, W-1] x [0, H-1]
# (all four bilinear taps inside); this tolerance absorbs float rounding at the border.
VALID_TOLERANCE = 1e-3


def _sample_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact identity), float32 otherwise (e.g. Apple MPS)."""
    return torch.float32 if device.type == 'mps' else torch.float64


def sample_positions(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute moving-image positions (x, y), each BxHxW, of `v + phi(v)` on the flow's (fixed) grid."""
    h, w = flow.shape[-2:]
    dtype = _sample_dtype(flow.device)
    ys = torch.arange(h, device=flow.device, dtype=dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=dtype).view(1, 1, w)
    f = flow.to(dtype)
    return xs + f[:, 0], ys + f[:, 1]


def warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp `image` (BxCxHmxWm, the moving image) by `flow` (Bx2xHxW, pixels, on the fixed grid).

    Returns `(registered BxCxHxW in image's dtype, valid Bx1xHxW bool)`: bilinear, zeros outside the moving
    image; `valid` is True where `v + phi(v)` lies inside the moving image (within its pixel-centre hull).
    Moving and fixed may have different sizes: `v` is in fixed pixels, `v + phi(v)` in moving pixels.
    Differentiable with respect to both `image` and `flow`.
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(
            f'warp expects image BxCxHxW and flow Bx2xHxW, got {tuple(image.shape)} and {tuple(flow.shape)}'
        )
    if image.shape[0] != flow.shape[0]:
        raise ValueError(f'warp: batch sizes differ ({image.shape[0]} images, {flow.shape[0]} flows)')
    hm, wm = image.shape[-2:]
    x, y = sample_positions(flow)
    grid = torch.stack(((2.0 * x + 1.0) / wm - 1.0, (2.0 * y + 1.0) / hm - 1.0), dim=-1)
    out_dtype = image.dtype if image.is_floating_point() else torch.float32
    registered = F.grid_sample(
        image.to(grid.dtype), grid, mode='bilinear', padding_mode='zeros', align_corners=False
    ).to(out_dtype)
    tol = VALID_TOLERANCE
    valid = (x >= -tol) & (x <= wm - 1 + tol) & (y >= -tol) & (y <= hm - 1 + tol)
    return registered, valid[:, None]


def flow_to_native(flow_net: torch.Tensor, fixed_hw: Sequence[int], moving_hw: Sequence[int]) -> torch.Tensor:
    """Map a flow from the network grid (Bx2xhxw; moving and fixed both resized to h x w) to native sizes.

    design.md's Network grid formula, per axis (shown for x): a fixed native pixel `v` sits at
    `u = (v + 0.5) w / W_f - 0.5` on the net grid; `m_n = u + phi_n(u)` is in net-moving pixels; the native
    moving position is `m = (m_n + 0.5) W_m / w - 0.5`; `phi(v) = m - v`. `phi_n(u)` is the bilinear
    up-sampling with align_corners=False (edge-clamped), which samples exactly at `u`. Simplified:
    `phi(v) = phi_n(u) W_m / w + (v + 0.5) (W_m / W_f - 1)`. Returns Bx2xH_fxW_f (float32 or the input's
    floating dtype).
    """
    if flow_net.ndim != 4 or flow_net.shape[1] != 2:
        raise ValueError(f'flow_to_native expects Bx2xhxw, got {tuple(flow_net.shape)}')
    hf, wf = int(fixed_hw[0]), int(fixed_hw[1])
    hm, wm = int(moving_hw[0]), int(moving_hw[1])
    h, w = flow_net.shape[-2:]
    if (h, w) == (hf, wf):
        up = flow_net
    else:
        up = F.interpolate(flow_net, size=(hf, wf), mode='bilinear', align_corners=False)
    dtype = up.dtype if up.is_floating_point() else torch.float32
    xs = torch.arange(wf, device=up.device, dtype=dtype).view(1, 1, wf)
    ys = torch.arange(hf, device=up.device, dtype=dtype).view(1, hf, 1)
    fx = up[:, 0] * (wm / w) + (xs + 0.5) * (wm / wf - 1.0)
    fy = up[:, 1] * (hm / h) + (ys + 0.5) * (hm / hf - 1.0)
    return torch.stack((fx, fy), dim=1)


def resize_flow_same_size(flow: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
    """Flow on one grid -> the flow on another grid of the same image pair (moving and fixed resized alike).

    A special case of `flow_to_native` with `fixed_hw == moving_hw == out_hw`: bilinear up/down-sampling
    (align_corners=False) with the values scaled by the size ratio per axis.
    """
    return flow_to_native(flow, out_hw, out_hw)


def flow_to_net(
    flow: torch.Tensor, fixed_hw: Sequence[int], moving_hw: Sequence[int], net_hw: Sequence[int]
) -> torch.Tensor:
    """The inverse of `flow_to_native`: a native flow (Bx2xH_fxW_f) -> the network-grid flow (Bx2xhxw).

    Net pixel `u` sits at the native fixed position `v(u) = (u + 0.5) W_f / w - 0.5`, where bilinear
    resizing (align_corners=False, no antialias) samples `phi`; then
    `phi_n(u) = (phi(v(u)) - (u + 0.5) (W_m - W_f) / w) w / W_m` per axis. Used to supervise R_Phi on its
    own grid with a native ground truth; exact for smooth flows (sampled, not averaged).
    """
    hf, wf = int(fixed_hw[0]), int(fixed_hw[1])
    hm, wm = int(moving_hw[0]), int(moving_hw[1])
    h, w = int(net_hw[0]), int(net_hw[1])
    sampled = flow if (hf, wf) == (h, w) else F.interpolate(flow, size=(h, w), mode='bilinear', align_corners=False)
    xs = torch.arange(w, device=flow.device, dtype=sampled.dtype).view(1, 1, w)
    ys = torch.arange(h, device=flow.device, dtype=sampled.dtype).view(1, h, 1)
    fx = (sampled[:, 0] - (xs + 0.5) * (wm - wf) / w) * (w / wm)
    fy = (sampled[:, 1] - (ys + 0.5) * (hm - hf) / h) * (h / hm)
    return torch.stack((fx, fy), dim=1)
