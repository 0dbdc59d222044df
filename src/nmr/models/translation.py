"""T, the geometry-preserving translation network (moving modality -> fixed modality).

The ResNet encoder-decoder of pix2pix / CycleGAN (paper sec. 4.4): reflect-padded 7x7 stem, two stride-2
convolutions, `n_blocks` residual blocks, two transposed convolutions, 7x7 head with tanh, instance norm
throughout. Only used in training; the run-time model is R_Phi alone. Inputs of any size are
reflect-padded to a multiple of 4 and the output cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TranslationConfig:
    in_channels: int = 3
    out_channels: int = 1
    ngf: int = 64
    n_blocks: int = 9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ResnetBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TranslationNet(nn.Module):
    """T: forward(moving BxCinxHxW in [-1, 1]) -> BxCoutxHxW in [-1, 1] (tanh)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        self.config = TranslationConfig(in_channels, out_channels, ngf, n_blocks)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(ch * 2),
                nn.ReLU(True),
            ]
            ch *= 2
        layers += [_ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (4 - h % 4) % 4, (4 - w % 4) % 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode='reflect' if min(h, w) > 4 else 'replicate')
        return self.model(x)[:, :, :h, :w]
