"""The depth camera's image formation, RealSense-like (active stereo): z in millimetres with holes.

Why these effects: a learned registration must cope with what real depth looks like, not with a clean
z-buffer. Active stereo loses pixels that one imager cannot see (occlusion shadows beside near objects),
on dark, glass and grazing surfaces (no projector pattern returns), at depth discontinuities (flying
pixels are removed), and beyond its range; its noise grows with the square of the distance.
"""

from __future__ import annotations

import cv2
import numpy as np

from nmr.synth.render import Geometry
from nmr.synth.shading import Surface

BASELINE_M = 0.05
SUBPIXEL = 0.08  # disparity RMS error, pixels at 848 px width
MIN_RANGE_M = 0.2
MAX_RANGE_M = 16.0


def _blobs(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth uniform-ish noise in [0, 1] with blobs about ``cell`` pixels across."""
    h, w = shape
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def render_depth(geom: Geometry, surf: Surface, rng: np.random.Generator) -> np.ndarray:
    """``HxW`` uint16 depth in millimetres, 0 = no data."""
    cam = geom.camera
    h, w = geom.depth.shape
    scale = w / 848.0
    z = geom.depth
    ok = geom.surface & (z > MIN_RANGE_M) & (z < MAX_RANGE_M)
    # stereo occlusion: pixel x is hidden from the second imager when a pixel to its right is nearer by
    # more disparity than their distance apart
    disp = np.where(geom.surface, cam.fx * BASELINE_M / np.where(geom.surface, z, 1.0), 0.0).astype(
        np.float32
    )
    shadow = np.zeros((h, w), dtype=bool)
    max_k = int(min(w - 1, np.ceil(float(disp.max()) - float(disp.min())))) if disp.size else 0
    for k in range(1, max_k + 1):
        shadow[:, :-k] |= (disp[:, k:] - disp[:, :-k]) > k
    ok &= ~shadow
    # flying pixels at depth discontinuities are filtered out by the camera
    inv = np.where(geom.surface, 1.0 / np.maximum(z, 1e-3), 0.0).astype(np.float32)
    k3 = np.ones((3, 3), np.uint8)
    jump = (cv2.dilate(inv, k3) - cv2.erode(inv, k3)) > 0.08 * np.maximum(inv, 1e-3)
    ok &= ~(jump & (rng.random((h, w)) < 0.7))
    # dark / glass / black rubber: the projector pattern does not come back (in blobs)
    blob = _blobs(rng, (h, w), max(2, int(12 * scale)))
    ok &= blob < np.clip(surf.ir_return * 1.3, 0.0, 1.0)
    # grazing angles
    d = geom.ray_dirs_world()
    grazing = np.abs(np.sum(d * geom.normal, axis=2)) < 0.08
    ok &= ~grazing
    # range fall-off and random speckle
    far = np.clip((z - 0.6 * MAX_RANGE_M) / (0.4 * MAX_RANGE_M), 0.0, 1.0)
    ok &= rng.random((h, w)) > np.where(np.isfinite(far), far**2, 1.0) * 0.9 + 0.003
    # range-dependent noise (sigma = z^2 * subpixel / (f * B)) with some spatial correlation
    sigma = np.where(ok, z * z * SUBPIXEL * scale / (cam.fx * BASELINE_M), 0.0).astype(np.float32)
    white = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    corr = cv2.GaussianBlur(white, (0, 0), 1.5) * 2.4
    noisy = np.where(ok, z + sigma * (0.6 * white + 0.8 * corr), 0.0)
    return np.clip(np.rint(noisy * 1000.0), 0, 65535).astype(np.uint16)
