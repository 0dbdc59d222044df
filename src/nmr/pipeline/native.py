"""From the network's flow to native-size outputs on CPU with OpenCV: flow up-sampling fused with the
rescale, and the warp, with grids kept across sets.

Why not the torch post-processing of `Registrar.register` (nmr.models.resampler): on CPU its float64
`grid_sample` alone took ~20 ms per 640x512 pair and the up-sampling and the copies to numpy ~6 ms more;
`cv2.resize` + `cv2.remap` do the same in ~2 ms (docs/performance.md). The geometry is the one of
`flow_to_native` (design.md's Network grid), per axis (x shown):

    phi(v) = phi_n(u) * W_m / w + (v + 0.5) * (W_m / W_f - 1),   u = (v + 0.5) * w / W_f - 0.5

`phi_n(u)` is bilinear with half-pixel centres and clamped edges, which is `cv2.resize(INTER_LINEAR)`
(the same as torch's `interpolate(align_corners=False)` when up-sampling), and resizing is linear, so the
flow is scaled on the small grid first and the per-column/per-row offset added once: one pass over the
native grid. The sampling map of the warp is `v + phi(v)`, a 2-channel float map that `cv2.remap` takes
as it is. `remap` quantises sub-pixel positions to 1/32 pixel (OpenCV's INTER_REMAP_COEF_BITS): the
registered image can differ from the float64 reference by a grey level on smooth images and by up to
about (local gradient)/32 at sharp edges; the flow itself is float32 and equal within float rounding.

Buffers: the grids (offsets, identity) are cached for the current (fixed size, moving size) only and reused
for every set of that size; a set of another size replaces them. They are 16 bytes per fixed pixel (200 MB
at 4096x3072): a cache of several sizes kept a burst of large frames' grids for the rest of the run (issue
22, item 4: RSS 342 -> 538 MB after three 4096x3072 sets, and still 538 MB after the size dropped back to
640x512; 344 MB with one size held; docs/robustness.md). The arrays handed out (flow, registered) are new
per set, because they outlive the call (they are published, written, or kept for the fused output while
the next set is already being registered); what they leave on the heap after a size change is given back
by nmr.pipeline.memory.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# valid = the sample lies inside the moving image's pixel-centre hull (as nmr.models.resampler.warp)
VALID_TOLERANCE = 1e-3


class NativeGrid:
    """Maps network-grid flows to native flows and warps moving images, for one pair (one instance per
    pair worker; the caches are not locked)."""

    def __init__(self, max_cached: int = 1) -> None:
        """`max_cached`: sizes kept per grid; 1 (the current size) unless a caller alternates sizes on
        purpose, since every size kept costs 16 bytes per pixel for as long as the node runs."""
        self._offsets: dict[tuple[int, ...], np.ndarray] = {}
        self._identities: dict[tuple[int, int], np.ndarray] = {}
        self._max_cached = max(1, int(max_cached))

    def _cache(self, cache: dict, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:  # type: ignore[type-arg]
        grid = cache.get(key)
        if grid is None:
            while len(cache) >= self._max_cached:  # the sizes changed: forget the oldest before making
                cache.pop(next(iter(cache)))     # the new one (the peak holds one size, not two)
            grid = cache[key] = make()
        return grid

    def _offset(self, fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> np.ndarray:
        """HfxWfx2: (v + 0.5) * (W_m / W_f - 1) per axis."""
        def make() -> np.ndarray:
            (hf, wf), (hm, wm) = fixed_hw, moving_hw
            offset = np.empty((hf, wf, 2), np.float32)
            offset[:, :, 0] = ((np.arange(wf, dtype=np.float32) + 0.5) * np.float32(wm / wf - 1.0))[None, :]
            offset[:, :, 1] = ((np.arange(hf, dtype=np.float32) + 0.5) * np.float32(hm / hf - 1.0))[:, None]
            return offset

        return self._cache(self._offsets, (*fixed_hw, *moving_hw), make)

    def _identity(self, hw: tuple[int, int]) -> np.ndarray:
        """HxWx2: (x, y) of every pixel."""
        def make() -> np.ndarray:
            identity = np.empty((hw[0], hw[1], 2), np.float32)
            identity[:, :, 0] = np.arange(hw[1], dtype=np.float32)[None, :]
            identity[:, :, 1] = np.arange(hw[0], dtype=np.float32)[:, None]
            return identity

        return self._cache(self._identities, hw, make)

    def flow(self, flow_n: np.ndarray, fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> np.ndarray:
        """hxwx2 net-grid flow -> HfxWfx2 float32 native flow (SPEC convention), a new array."""
        h, w = int(flow_n.shape[0]), int(flow_n.shape[1])
        hf, wf = int(fixed_hw[0]), int(fixed_hw[1])
        hm, wm = int(moving_hw[0]), int(moving_hw[1])
        small = flow_n * np.array([wm / w, hm / h], np.float32)  # a few thousand values: scale them first
        out = small if (h, w) == (hf, wf) else cv2.resize(small, (wf, hf), interpolation=cv2.INTER_LINEAR)
        return np.add(out, self._offset((hf, wf), (hm, wm)), out=out)

    def positions(self, flow: np.ndarray) -> np.ndarray:
        """`v + phi(v)`: the moving-image position every fixed pixel samples (HfxWfx2, a new array)."""
        return np.add(flow, self._identity((int(flow.shape[0]), int(flow.shape[1]))))

    def warp(self, moving: np.ndarray, flow: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """`moving(v + phi(v))`: bilinear, zeros outside (cv2.remap on a 2-channel map), moving's dtype."""
        if positions is None:
            positions = self.positions(flow)
        out = cv2.remap(np.ascontiguousarray(moving), positions, None,  # type: ignore[call-overload]
                        interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if moving.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing 1-channel axis
            out = out[:, :, None]
        return out

    def valid(self, flow: np.ndarray, moving_hw: tuple[int, int], positions: np.ndarray | None = None) -> np.ndarray:
        """HfxWf bool: `v + phi(v)` inside the moving image's pixel-centre hull (NaN is outside)."""
        if positions is None:
            positions = self.positions(flow)
        hm, wm = moving_hw
        tol = VALID_TOLERANCE
        return cv2.inRange(positions, (-tol, -tol), (wm - 1 + tol, hm - 1 + tol)).astype(bool)
