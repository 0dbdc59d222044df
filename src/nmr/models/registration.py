"""R_Phi, the deformation-field generator: a U-Net on cat(moving, fixed) that outputs a flow in pixels.

Two architectures share one class (`RegistrationConfig.arch`):

- `paper` (the published design, paper sec. 4.4): 7 encoder blocks of 32-64 channels, a max-pool between
  consecutive blocks (down-sampling factor 64), a residual block with instance norm in every encoder
  block, bilinear up-sampling with skip concatenation in the decoder, and residual blocks on the
  full-resolution output path.
- `fast` (real time): two strided convolutions take the input to 1/4 resolution, a smaller U-Net of the
  same kind predicts the flow there, and the flow is bilinearly up-sampled to full resolution with its
  values multiplied by 4 (flow is in pixels of the grid it lives on). No full-resolution feature maps.

A third, `corr` (nmr.models.correlation), matches features through cost volumes instead of regressing the
flow from stacked pixels; it shares this config (its pyramid channels are `encoder_channels`) and is built
by `build_registration`.

All accept any input size: the inputs are replicate-padded to a multiple of the down-sampling factor and
the flow is cropped back. The padding amounts are computed from shapes only, so the model traces to ONNX
with dynamic height and width. The last convolution starts with tiny weights and zero bias, so the
untrained network is a near-identity registration (flow ~ 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nmr.models.xfeat_stem import XFEAT_CHANNELS

ARCHES = ('paper', 'fast', 'corr')
STEMS = ('plain', 'xfeat')
OUTPUT_INIT_STD = 1e-5


@dataclass
class RegistrationConfig:
    """Architecture of R_Phi; stored in checkpoints (plain types only) so a model rebuilds itself."""

    arch: str = 'fast'
    moving_channels: int = 3
    fixed_channels: int = 1
    # Encoder channels per level (one max-pool between consecutive levels). Empty = the arch default.
    encoder_channels: list[int] = field(default_factory=list)
    # Residual blocks on the output path (at the flow's resolution).
    output_blocks: int = -1
    # Resolution divisor at which the flow is predicted (1 = full resolution).
    flow_stride: int = -1
    # Channels of the strided stem convolutions (fast only; their count sets log2(flow_stride)).
    stem_channels: list[int] = field(default_factory=list)
    # corr only: cost-volume radius per pyramid level (finest first), flow-decoder widths, and whether the
    # fixed image gets a validity channel (depth: -1 marks holes).
    corr_radii: list[int] = field(default_factory=list)
    decoder_channels: list[int] = field(default_factory=list)
    fixed_validity: bool = False
    # corr only: `plain` (two 3x3 convolutions per level) or `xfeat` (XFeat's backbone blocks,
    # nmr.models.xfeat_stem; channels fixed to XFEAT_CHANNELS; started from XFeat's weights by
    # scripts/xfeat_init.py).
    stem: str = 'plain'

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f'registration arch {self.arch!r} is not one of {ARCHES}')
        if self.stem not in STEMS or (self.stem != 'plain' and self.arch != 'corr'):
            raise ValueError(f'registration stem {self.stem!r} must be one of {STEMS} (xfeat: arch corr only)')
        defaults = _ARCH_DEFAULTS[self.arch]
        if self.stem == 'xfeat' and not self.encoder_channels:
            self.encoder_channels = list(XFEAT_CHANNELS)
        if not self.encoder_channels:
            self.encoder_channels = list(defaults['encoder_channels'])
        if self.output_blocks < 0:
            self.output_blocks = int(defaults['output_blocks'])
        if not self.stem_channels:
            self.stem_channels = list(defaults['stem_channels'])
        if self.arch == 'corr':
            self._check_corr(defaults)
            return
        if self.flow_stride < 0:
            self.flow_stride = 2 ** len(self.stem_channels)
        self.encoder_channels = [int(c) for c in self.encoder_channels]
        self.stem_channels = [int(c) for c in self.stem_channels]
        if self.flow_stride != 2 ** len(self.stem_channels):
            raise ValueError(
                f'flow_stride {self.flow_stride} must be 2 ** len(stem_channels) '
                f'({2 ** len(self.stem_channels)})'
            )
        if len(self.encoder_channels) < 2:
            raise ValueError('encoder_channels needs at least 2 levels')

    def _check_corr(self, defaults: Mapping[str, Any]) -> None:
        self.encoder_channels = [int(c) for c in self.encoder_channels]
        self.corr_radii = [int(r) for r in (self.corr_radii or defaults['corr_radii'])]
        self.decoder_channels = [int(c) for c in (self.decoder_channels or defaults['decoder_channels'])]
        self.flow_stride = 2  # the finest level: the flow is refined at 1/2 and up-sampled once
        if self.stem == 'xfeat' and self.encoder_channels != XFEAT_CHANNELS:
            raise ValueError(f'stem xfeat has the pyramid channels {XFEAT_CHANNELS}, not {self.encoder_channels}')
        if len(self.corr_radii) != len(self.encoder_channels):
            raise ValueError(
                f'corr_radii {self.corr_radii} needs one radius per level of encoder_channels '
                f'{self.encoder_channels}'
            )

    @property
    def down_factor(self) -> int:
        """Input sizes are padded to a multiple of this."""
        if self.arch == 'corr':
            return 2 ** len(self.encoder_channels)
        return self.flow_stride * 2 ** (len(self.encoder_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegistrationConfig:
        """Rebuild from a checkpoint / YAML dict; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k in names
        }
        return cls(**kwargs)


_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    'paper': {'encoder_channels': [32, 64, 64, 64, 64, 64, 64], 'output_blocks': 2, 'stem_channels': []},
    'fast': {'encoder_channels': [32, 48, 64, 64, 64], 'output_blocks': 1, 'stem_channels': [16, 32]},
    'corr': {
        'encoder_channels': [16, 32, 64, 96],
        'output_blocks': 0,
        'stem_channels': [],
        'corr_radii': [2, 3, 4, 4],
        'decoder_channels': [64, 48, 32],
    },
}


def build_registration(config: RegistrationConfig | None = None) -> nn.Module:
    """R_Phi for a config: the U-Net (`paper`, `fast`) or the correlation network (`corr`)."""
    cfg = config or RegistrationConfig()
    if cfg.arch != 'corr':
        return RegistrationNet(cfg)
    from nmr.models.correlation import CorrRegistrationNet

    net = CorrRegistrationNet(
        cfg.moving_channels,
        cfg.fixed_channels,
        cfg.encoder_channels,
        cfg.corr_radii,
        cfg.decoder_channels,
        cfg.fixed_validity,
        cfg.stem,
    )
    net.config = cfg  # type: ignore[assignment]
    return net


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualBlock(nn.Module):
    """x + IN(conv(act(IN(conv(x))))): the residual unit of the encoder and output paths."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.InstanceNorm2d(channels, affine=True),
            _act(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.InstanceNorm2d(channels, affine=True),
        )
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class EncoderBlock(nn.Module):
    """conv (channel change) + residual block; a max-pool precedes every block but the first."""

    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _act())
        self.res = ResidualBlock(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.conv(self.pool(x)))


class DecoderBlock(nn.Module):
    """bilinear x2 up-sampling, concatenation with the skip, conv."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin + cskip, cout, 3, padding=1), _act())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        return self.conv(torch.cat((x, skip), dim=1))


class RegistrationNet(nn.Module):
    """R_Phi: forward(moving Bx3xHxW, fixed Bx1xHxW, in [-1, 1]) -> flow Bx2xHxW in pixels of that grid."""

    def __init__(self, config: RegistrationConfig | None = None) -> None:
        super().__init__()
        self.config = config or RegistrationConfig()
        cfg = self.config
        cin = cfg.moving_channels + cfg.fixed_channels
        stem: list[nn.Module] = []
        for c in cfg.stem_channels:
            stem += [nn.Conv2d(cin, c, 3, stride=2, padding=1), _act()]
            cin = c
        self.stem = nn.Sequential(*stem)
        enc = cfg.encoder_channels
        self.encoder = nn.ModuleList(
            EncoderBlock(cin if i == 0 else enc[i - 1], c, pool=i > 0) for i, c in enumerate(enc)
        )
        dec: list[nn.Module] = []
        cur = enc[-1]
        for i in range(len(enc) - 2, -1, -1):
            dec.append(DecoderBlock(cur, enc[i], enc[i]))
            cur = enc[i]
        self.decoder = nn.ModuleList(dec)
        self.output_path = nn.Sequential(*[ResidualBlock(cur) for _ in range(cfg.output_blocks)])
        self.flow_head = nn.Conv2d(cur, 2, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming init (paper sec. 4.4) everywhere; tiny output weights so the initial flow is ~ 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity='leaky_relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        assert self.flow_head.bias is not None
        nn.init.normal_(self.flow_head.weight, std=OUTPUT_INIT_STD)
        nn.init.zeros_(self.flow_head.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        h, w = moving.shape[-2], moving.shape[-1]
        m = self.config.down_factor
        pad_h = (m - h % m) % m
        pad_w = (m - w % m) % m
        x = torch.cat((moving, fixed), dim=1)
        x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for i, block in enumerate(self.decoder):
            x = block(x, skips[-2 - i])
        flow = self.flow_head(self.output_path(x))
        s = self.config.flow_stride
        if s > 1:
            flow = F.interpolate(flow, scale_factor=float(s), mode='bilinear', align_corners=False) * float(s)
        return flow[:, :, :h, :w]


def count_macs(model: nn.Module, h: int, w: int, inputs: Sequence[torch.Tensor] | None = None) -> int:
    """Multiply-accumulates of all convolutions (and linear layers) for one forward pass at h x w.

    Counted with forward hooks on the actual run (so padding to the down-sampling factor is included).
    Norms, activations, pooling and interpolation are not counted (they are a few % at most).
    """
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d | nn.ConvTranspose2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            if isinstance(mod, nn.Conv2d):
                total += out.numel() * (mod.in_channels // mod.groups) * k
            else:
                total += _inp[0].numel() * (mod.out_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    try:
        if inputs is None:
            cfg = getattr(model, 'config', None)
            mc = getattr(cfg, 'moving_channels', 3)
            fc = getattr(cfg, 'fixed_channels', 1)
            inputs = (torch.zeros(1, mc, h, w), torch.zeros(1, fc, h, w))
        with torch.no_grad():
            model(*inputs)
    finally:
        for hd in handles:
            hd.remove()
    return total


def count_flops(model: nn.Module, h: int, w: int) -> int:
    """Convolution FLOPs (2 x MACs) of one forward pass at h x w; see `count_macs`."""
    return 2 * count_macs(model, h, w)
