"""Tile refinement: the network once on the whole pair, then again on overlapping tiles of the pre-warped pair.

Why: R_Phi sees the pair at its network size (160x128 for the shipped models), and its matching error there
is about a pixel whatever the true displacement, i.e. 4 px and more at 640 px width. After the first pass
the moving image is pre-warped onto the fixed grid, so what is left is small; each of four tiles (a 2x2 grid,
each `tile` of the image's height and width, overlapping in the middle) is then registered at 1 / `tile`
times the first pass's resolution. The tile residuals are blended with triangular weights (a tile's edge,
where its flow is least reliable, weighs least) and composed with the first flow
(nmr.flow.compose: `phi(v) = r(v) + first(v + r(v))`).

Measured before it was adopted (docs/results.md, session 9, rule T, on held-out selection scenes): the
shipped rgb_depth 5.3 points better on average, better on all 7 selection sets; the shipped rgb_lwir worse
on 6 of its 9 (so it is off for rgb_lwir by default). Cost: 5 network passes instead of 1.

Pre-warping replicates the moving image's borders, so the tiles carry no wedge that could reveal the first
flow; the fixed image is cut as it is (a depth tile is normalised on its own, as the measurement did).
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import torch

from nmr import flow as nmr_flow
from nmr.errors import ConfigError
from nmr.inference.protocol import Registration
from nmr.inference.registrar import Registrar
from nmr.models.resampler import flow_to_native

DEFAULT_TILE = 0.6


def tile_weights(h: int, w: int) -> np.ndarray:
    """Triangular blending weights of one tile (HxW float32): 1 at its centre, ~0 at its edges."""
    wy = 1.0 - np.abs(np.linspace(-1.0, 1.0, h, dtype=np.float32)) + 1e-3
    wx = 1.0 - np.abs(np.linspace(-1.0, 1.0, w, dtype=np.float32)) + 1e-3
    return wy[:, None] * wx[None, :]


def tile_boxes(h: int, w: int, tile: float) -> list[tuple[slice, slice]]:
    """The 2x2 grid of overlapping tiles, each `tile` of the height and width, at the image's corners."""
    th, tw = max(1, round(h * tile)), max(1, round(w * tile))
    return [(slice(y0, y0 + th), slice(x0, x0 + tw)) for y0 in (0, h - th) for x0 in (0, w - tw)]


class TileRefinedRegistrar:
    """A model registrar whose flow is refined on tiles (see the module docstring); same interface.

    It has no `net_flow`: its flow exists only at native size, so the pipeline takes its `register` path.
    """

    def __init__(self, inner: Registrar, tile: float = DEFAULT_TILE) -> None:
        if not 0.3 <= tile < 1.0:
            raise ConfigError(f'tile refinement: tile fraction must be in [0.3, 1), got {tile}')
        self.inner = inner
        self.tile = float(tile)

    @property
    def pair(self) -> str | None:
        return self.inner.pair

    @property
    def backend(self) -> str:
        return self.inner.backend

    @property
    def device(self) -> Any:
        return self.inner.device

    def describe(self) -> str:
        return f'{self.inner.describe()}, refined on 2x2 tiles of {self.tile:g}'

    def native_flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str) -> np.ndarray:
        """One network pass -> HfxWfx2 float32 flow at native size (no warp)."""
        net = self.inner.net_flow(moving_rgb, fixed_raw, fixed_encoding)
        flow_n = net.flow_n
        if isinstance(flow_n, np.ndarray):
            flow_n = torch.from_numpy(flow_n).permute(2, 0, 1)[None]
        with torch.inference_mode():
            flow = flow_to_native(flow_n.float(), net.fixed_hw, net.moving_hw)
        return flow[0].permute(1, 2, 0).contiguous().cpu().numpy()

    def refine(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str,
               first: np.ndarray) -> np.ndarray:
        """`first` (HfxWfx2) refined on the tiles of the pair pre-warped by it."""
        map_x, map_y = nmr_flow.sample_maps(first)
        prewarped = cv2.remap(np.ascontiguousarray(moving_rgb), map_x, map_y, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        h, w = first.shape[:2]
        residual = np.zeros((h, w, 2), np.float32)
        weight = np.zeros((h, w, 1), np.float32)
        for box in tile_boxes(h, w, self.tile):
            part = self.native_flow(np.ascontiguousarray(prewarped[box]), np.ascontiguousarray(fixed_raw[box]),
                                    fixed_encoding)
            wt = tile_weights(part.shape[0], part.shape[1])[..., None]
            residual[box] += wt * part
            weight[box] += wt
        return nmr_flow.compose(residual / weight, first)

    def register(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> Registration:
        """Register one pair: the first pass, the tiles, the registered image warped once from the original."""
        moving = np.asarray(moving_rgb)
        fixed = np.asarray(fixed_raw)
        t0 = time.perf_counter()
        first = self.native_flow(moving, fixed, fixed_encoding)
        t1 = time.perf_counter()
        flow = self.refine(moving, fixed, fixed_encoding, first)
        t2 = time.perf_counter()
        registered, valid = nmr_flow.warp(moving, flow)
        t3 = time.perf_counter()
        timings = {'first': (t1 - t0) * 1e3, 'tiles': (t2 - t1) * 1e3, 'warp': (t3 - t2) * 1e3,
                   'total': (t3 - t0) * 1e3}
        return Registration(flow=flow, registered=registered, valid=valid, timings_ms=timings)
