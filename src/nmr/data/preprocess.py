"""Modality pre-processing: raw images -> network inputs in [-1, 1], the same code online and offline.

The node, the trainer, ``register-bag`` and ``evaluate`` all call these functions, so a model sees the
same normalisation wherever it runs. Inputs are numpy arrays or torch tensors; tensors stay on their
device (CPU or CUDA) and everything uses torch ops, so the work can run on the GPU next to the network.

- RGB ``HxWx3`` uint8 -> ``3xHxW`` ``x / 127.5 - 1``.
- LWIR (8- or 16-bit raw counts, radiometric or not) -> ``1xHxW``: robust per-frame percentile stretch
  (the percentiles are estimated on a strided subsample of at most ``max_samples`` pixels, which is
  what keeps it fast at 30 Hz); the raw range is returned for display.
- Depth ``16UC1`` (millimetres, 0 = none) or ``32FC1`` (metres, 0/NaN/inf = none) -> ``1xHxW``
  normalised inverse depth: ``min_m`` maps to 1, ``max_m`` (and beyond) to -1, invalid pixels to -1;
  the valid mask is returned alongside. Inverse depth is used because parallax is proportional to it.
- Both -> the network grid with ``resize_to``: training (nmr.training.data) and every inference backend
  (nmr.inference.registrar) call this one function, so the network never sees a different resampling at
  run time than in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nmr.domain import FIXED_KINDS
from nmr.errors import ConfigError, ImageDecodeError

DEPTH_MM_ENCODINGS = frozenset({'16UC1', 'mono16'})
DEPTH_M_ENCODINGS = frozenset({'32FC1'})


@dataclass
class LwirNormalisation:
    """Per-frame percentile stretch of raw thermal counts."""

    low_percentile: float = 1.0
    high_percentile: float = 99.0
    max_samples: int = 65536

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ConfigError(
                f'LWIR percentiles must satisfy 0 <= low < high <= 100, got '
                f'low_percentile={self.low_percentile}, high_percentile={self.high_percentile}'
            )
        if self.max_samples < 2:
            raise ConfigError(f'LWIR max_samples must be >= 2, got {self.max_samples}')


@dataclass
class DepthNormalisation:
    """Inverse depth, scaled by a fixed range or per image.

    ``mode='fixed'``: ``min_m`` -> 1, ``max_m`` (and beyond) -> -1. A scene far from that range is squashed
    (at 5-20 m everything lies in [-1, -0.9]). ``mode='robust'``: the ``low_percentile`` .. ``high_percentile``
    of the frame's VALID inverse depths map to -0.9 .. 1 (clamped to [-0.95, 1]), so a 0.3-1 m table top and
    a 5-20 m street use the whole range alike; holes stay at -1 (the networks' validity threshold is -0.999).
    """

    min_m: float = 0.3
    max_m: float = 20.0
    mode: str = 'fixed'
    low_percentile: float = 2.0
    high_percentile: float = 98.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_m < self.max_m:
            raise ConfigError(f'depth range must satisfy 0 < min_m < max_m, got {self.min_m}, {self.max_m}')
        if self.mode not in ('fixed', 'robust'):
            raise ConfigError(f"depth normalisation mode {self.mode!r}: use 'fixed' or 'robust'")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ConfigError(
                f'depth percentiles must satisfy 0 <= low < high <= 100, got {self.low_percentile}, '
                f'{self.high_percentile}'
            )


Normalisation = LwirNormalisation | DepthNormalisation


def normalisation_for(kind: str, normalisation: Mapping[str, Any] | None = None) -> Normalisation:
    """The normalisation dataclass for ``kind`` from a dict (as stored in model metadata).

    Accepts the dataclass's fields directly (``{'low_percentile': 2}``) or nested by kind
    (``{'lwir': {...}, 'depth': {...}}``); missing fields take the defaults; unknown keys are a ConfigError.
    """
    cls: type[LwirNormalisation] | type[DepthNormalisation]
    if kind == 'lwir':
        cls = LwirNormalisation
    elif kind == 'depth':
        cls = DepthNormalisation
    else:
        raise ConfigError(f'unknown fixed image kind {kind!r}: use one of {", ".join(FIXED_KINDS)}')
    values: Mapping[str, Any] = normalisation or {}
    if kind in values and isinstance(values[kind], Mapping):
        values = values[kind]
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names - set(FIXED_KINDS)
    if unknown:
        raise ConfigError(f'unknown {kind} normalisation key(s) {sorted(unknown)}: known are {sorted(names)}')
    return cls(**{k: v for k, v in values.items() if k in names})


def normalisation_dict(norm: Normalisation) -> dict[str, Any]:
    """Plain dict of a normalisation (for checkpoints and ONNX metadata)."""
    return asdict(norm)


def _tensor(img: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """A torch view/copy of ``img`` (numpy or tensor); numpy goes to ``device`` (default CPU)."""
    if isinstance(img, torch.Tensor):
        return img if device is None else img.to(device)
    a = np.asarray(img)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder('='))
    if a.dtype == np.uint16:  # few torch ops support uint16: widen once, losslessly
        a = a.astype(np.int32)
    elif not a.flags.writeable:  # torch.from_numpy warns on read-only buffers (message views)
        a = a.copy()
    t = torch.from_numpy(a)
    return t if device is None else t.to(device, non_blocking=True)


def rgb_input(rgb: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``3xHxW`` float32 in [-1, 1]."""
    t = _tensor(rgb, device)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ImageDecodeError(f'RGB input must be HxWx3, got shape {tuple(t.shape)}')
    out = torch.empty((3, t.shape[0], t.shape[1]), dtype=torch.float32, device=t.device)
    return out.copy_(t.permute(2, 0, 1)).div_(127.5).sub_(1.0)  # one copy: cast + contiguous CHW


def _percentiles(x: torch.Tensor, low: float, high: float, max_samples: int) -> tuple[float, float]:
    """Linear-interpolated percentiles (``torch.quantile``'s definition) of a strided subsample.

    On CPU a numpy partial sort (selection, O(n)) is several times faster than torch's full sort; on
    CUDA ``torch.quantile`` runs on the device. Both give the same numbers.
    """
    flat = x.reshape(-1)
    step = max(1, flat.numel() // max_samples)
    sample = flat[::step]
    if sample.device.type != 'cpu':
        q = torch.tensor([low / 100.0, high / 100.0], dtype=torch.float32, device=sample.device)
        lo_t, hi_t = torch.quantile(sample.to(torch.float32), q).tolist()
        return float(lo_t), float(hi_t)
    values = sample.contiguous().numpy()
    n = values.size
    positions = [p / 100.0 * (n - 1) for p in (low, high)]
    kth = sorted({min(math.floor(pos) + d, n - 1) for pos in positions for d in (0, 1)})
    part = np.partition(values, kth)
    out = []
    for pos in positions:
        i = math.floor(pos)
        a, b = float(part[i]), float(part[min(i + 1, n - 1)])
        out.append(a + (b - a) * (pos - i))
    return out[0], out[1]


def lwir_input(
    img: Any, norm: LwirNormalisation | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, tuple[float, float]]:
    """Raw LWIR ``HxW`` (uint8/uint16/float) -> (``1xHxW`` float32 in [-1, 1], (raw_low, raw_high)).

    Values at or below the low percentile map to -1, at or above the high one to 1. A flat frame
    (high == low) maps to 0.
    """
    norm = norm or LwirNormalisation()
    t = _tensor(img, device)
    if t.ndim == 3 and t.shape[2] == 1:
        t = t[:, :, 0]
    if t.ndim != 2 or t.numel() == 0:
        raise ImageDecodeError(f'LWIR input must be a non-empty HxW image, got shape {tuple(t.shape)}')
    lo, hi = _percentiles(t, norm.low_percentile, norm.high_percentile, norm.max_samples)
    x = t.to(torch.float32)
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return torch.zeros_like(x)[None], (lo, hi)
    x = x.sub_(lo).div_((hi - lo) / 2.0).sub_(1.0).clamp_(-1.0, 1.0)
    return x[None], (lo, hi)


def depth_metres(img: Any, encoding: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Raw depth -> float32 metres (invalid pixels kept as 0/NaN/inf as they came)."""
    t = _tensor(img, device)
    if t.ndim == 3 and t.shape[2] == 1:
        t = t[:, :, 0]
    if t.ndim != 2 or t.numel() == 0:
        raise ImageDecodeError(f'depth input must be a non-empty HxW image, got shape {tuple(t.shape)}')
    if encoding in DEPTH_MM_ENCODINGS:
        return t.to(torch.float32).mul_(0.001)
    if encoding in DEPTH_M_ENCODINGS:
        return t.to(torch.float32)
    raise ImageDecodeError(
        f'depth encoding {encoding!r} is not supported: use 16UC1 (millimetres) or 32FC1 (metres)'
    )


def depth_input(
    img: Any, encoding: str, norm: DepthNormalisation | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw depth ``HxW`` -> (``1xHxW`` normalised inverse depth in [-1, 1], valid ``HxW`` bool)."""
    norm = norm or DepthNormalisation()
    m = depth_metres(img, encoding, device)
    valid = torch.isfinite(m) & (m > 0)
    inv = torch.where(valid, m, torch.ones_like(m)).reciprocal_()
    if norm.mode == 'robust':
        if not bool(valid.any()):
            return torch.full_like(inv, -1.0)[None], valid
        lo, hi = _percentiles(inv[valid], norm.low_percentile, norm.high_percentile, 65536)
        span = max(hi - lo, 1e-6 * max(hi, 1e-6))
        x = inv.sub_(lo).div_(span / 1.9).sub_(0.9).clamp_(-0.95, 1.0)
    else:
        inv_far, inv_near = 1.0 / norm.max_m, 1.0 / norm.min_m
        x = inv.sub_(inv_far).div_((inv_near - inv_far) / 2.0).sub_(1.0).clamp_(-1.0, 1.0)
    x = torch.where(valid, x, torch.full_like(x, -1.0))
    return x[None], valid


def fixed_input(
    kind: str,
    img: Any,
    encoding: str,
    normalisation: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dispatch on the fixed kind (``lwir`` / ``depth``) -> ``1xHxW`` float32 in [-1, 1]."""
    norm = normalisation_for(kind, normalisation)
    if isinstance(norm, LwirNormalisation):
        return lwir_input(img, norm, device)[0]
    return depth_input(img, encoding, norm, device)[0]


def fixed_display(
    kind: str, img: Any, encoding: str, normalisation: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The fixed image as ``HxWx3`` uint8 grey (for overlays and figures), via the network normalisation.

    LWIR is percentile-stretched; depth shows inverse depth (near = bright; invalid and far = black).
    """
    x = fixed_input(kind, img, encoding, normalisation)[0]
    grey = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return np.repeat(grey[:, :, None], 3, axis=2)


def resize_to(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """``BxCxHxW`` float -> ``BxCxhxw`` on the network grid ``hw = (h, w)``.

    Bilinear with pixel centres aligned (``align_corners=False``: the net-grid convention that
    ``nmr.models.resampler.flow_to_native`` inverts), antialiased when shrinking so that a large camera
    image does not alias into the network. A no-op when the size already matches.
    """
    size = (int(hw[0]), int(hw[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=shrink)
