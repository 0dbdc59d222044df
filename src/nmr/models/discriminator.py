"""D, the conditional PatchGAN discriminator (pix2pix): scores overlapping patches of cat(candidate, moving).

The candidate is a real fixed image I_b or a fake (R_S(T(a), phi) or T(R_S(a, phi))); conditioning on the
moving image I_a (paper eq. 5, D(I_b, I_a)) makes D judge whether the candidate is a plausible fixed-modality
rendering of THAT scene. Output: raw logits Bx1xH'xW' (the GAN loss applies the sigmoid / LSGAN target).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN for n_layers=3: 4x4 convs, stride 2, instance norm, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int = 4, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity='leaky_relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, candidate: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((candidate, condition), dim=1))
