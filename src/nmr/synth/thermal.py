"""The LWIR camera's image formation: temperature per surface -> radiometric-like 14-bit counts.

Why like this: an uncooled microbolometer (FLIR Boson) sees emitted heat, not reflected light, so its
image shares edges with the RGB image but not intensities: people and running engines are bright,
glass and the sky are dark, asphalt brightens with sun load, and paint that is white in RGB is slightly
cooler than asphalt. Its optics are soft, its noise has a fixed column pattern, and its counts are a
roughly linear function of scene temperature in a 14-bit range.
"""

from __future__ import annotations

import cv2
import numpy as np

from nmr.synth.render import Geometry
from nmr.synth.scene import Scene
from nmr.synth.shading import Surface, radial2, sun_cosine

COUNTS_OFFSET = 6000.0  # counts at -40 C
COUNTS_PER_K = 60.0
MAX_COUNTS = 2**14 - 1


def temperature_to_counts(temp_c: np.ndarray) -> np.ndarray:
    """The linear radiometric model (counts as float; clip and round when storing)."""
    return COUNTS_OFFSET + COUNTS_PER_K * (np.asarray(temp_c, dtype=np.float32) + 40.0)


def column_pattern(width: int, seed: int) -> np.ndarray:
    """Fixed-pattern column offsets (counts) of one sensor: constant over the recording."""
    rng = np.random.default_rng([seed, 7001])
    return rng.normal(0.0, 5.0, width).astype(np.float32)


def scene_temperature(scene: Scene, geom: Geometry, surf: Surface) -> np.ndarray:
    """Apparent temperature per pixel (C): surfaces with sun load, sky cold, atmosphere with range."""
    temp = surf.temp_c + surf.sun_gain * scene.sun_strength * sun_cosine(scene, geom)
    dirs = geom.ray_dirs_world()
    elev = np.clip(dirs[..., 2], 0.0, 1.0)
    sky = scene.ambient_c - 18.0 - 30.0 * np.sqrt(elev)
    with np.errstate(invalid='ignore'):
        atm = 1.0 - np.exp(-np.where(geom.surface, geom.depth, 0.0) / 600.0)
    temp = temp * (1 - atm) + (scene.ambient_c - 5.0) * atm
    return np.where(geom.surface, temp, sky).astype(np.float32)


def render_lwir(scene: Scene, geom: Geometry, surf: Surface, rng: np.random.Generator) -> np.ndarray:
    """``HxW`` uint16 counts (0..16383): blur (optics), vignetting/narcissus, column pattern, noise."""
    counts = temperature_to_counts(scene_temperature(scene, geom, surf))
    h, w = counts.shape
    scale = max(w / 640.0, 0.25)
    counts = np.asarray(cv2.GaussianBlur(counts, (0, 0), 1.0 * scale), dtype=np.float32)
    counts += 90.0 * (1.0 - radial2(h, w))  # warm centre (lens/housing non-uniformity)
    counts += column_pattern(w, scene.seed)[None, :]
    counts += rng.normal(0.0, 4.0, counts.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, MAX_COUNTS).astype(np.uint16)
