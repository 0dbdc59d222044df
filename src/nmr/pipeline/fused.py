"""Fused output: RGB, LWIR and depth resampled into ONE reference frame, the LWIR camera's.

Why LWIR: the rgb_lwir flow already maps every LWIR pixel to the RGB image, so the registered RGB is
exact there, and thermal is the modality a fused consumer most often overlays on. The depth image is
reached through the RGB image: LWIR pixel v -> RGB position m = v + phi_lwir(v) -> the depth pixel d
whose rgb_depth flow lands on m, i.e. d + phi_depth(d) = m. That inverse is found by fixed-point
iteration preconditioned with the nominal depth->RGB scale s (d <- d + (m - d - phi_depth(d)) / s; for
equal sizes simply d <- m - phi_depth(d)), which converges for the smooth flows R_Phi produces;
pixels where it does not converge (occlusion, fold-over) or that leave an image get NaN (= no data).
Depth is sampled nearest-neighbour: interpolating across an object edge would invent depths.

Topics (all with the LWIR image's header, identical stamp and frame_id): `fused/rgb` (rgb8),
`fused/lwir` (the LWIR image as received, mono16/mono8) and `fused/depth` (32FC1, metres, NaN = none).
"""

from __future__ import annotations

import cv2
import numpy as np

FUSED_TOPICS: tuple[str, ...] = ('fused/rgb', 'fused/lwir', 'fused/depth')

_ITERATIONS = 8
_TOLERANCE_PX = 0.5


def depth_metres(depth_raw: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1 millimetres or 32FC1 metres -> float32 metres with NaN wherever there is no data."""
    if encoding == '16UC1':
        metres = depth_raw.astype(np.float32) / np.float32(1000.0)
        metres[depth_raw == 0] = np.nan
        return metres
    metres = np.array(depth_raw, dtype=np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def _sample_flow(flow: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear flow at (x, y) pixel positions, edge values outside (so the iteration can move back in)."""
    sampled = cv2.remap(flow, x, y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return sampled[..., 0], sampled[..., 1]


def invert_flow_at(flow: np.ndarray, target_x: np.ndarray, target_y: np.ndarray,
                   start_x: np.ndarray, start_y: np.ndarray,
                   scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions d on `flow`'s grid with d + flow(d) = target; returns (x, y, converged mask).

    `scale` = (sx, sy): nominal size ratio target grid / flow grid, the preconditioner of the iteration.
    """
    x, y = start_x.astype(np.float32), start_y.astype(np.float32)
    for _ in range(_ITERATIONS):
        dx, dy = _sample_flow(flow, x, y)
        x = x + (target_x - x - dx) / np.float32(scale[0])
        y = y + (target_y - y - dy) / np.float32(scale[1])
    dx, dy = _sample_flow(flow, x, y)
    residual = np.hypot(x + dx - target_x, y + dy - target_y)
    h, w = flow.shape[:2]
    inside = (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
    return x, y, (residual <= _TOLERANCE_PX) & inside


def depth_in_lwir_frame(lwir_flow: np.ndarray, depth_flow: np.ndarray, depth_metres_img: np.ndarray,
                        rgb_hw: tuple[int, int]) -> np.ndarray:
    """Depth (metres, NaN = none) on the LWIR grid, through the RGB image (module docstring)."""
    hl, wl = lwir_flow.shape[:2]
    hd, wd = depth_flow.shape[:2]
    hr, wr = rgb_hw
    gx, gy = np.meshgrid(np.arange(wl, dtype=np.float32), np.arange(hl, dtype=np.float32))
    mx, my = gx + lwir_flow[..., 0], gy + lwir_flow[..., 1]  # RGB pixels
    in_rgb = (mx > -0.5) & (mx < wr - 0.5) & (my > -0.5) & (my < hr - 0.5)
    # start from where m would be if depth and RGB covered the same extent (the coarse pre-alignment)
    sx = (mx + 0.5) * (wd / wr) - 0.5
    sy = (my + 0.5) * (hd / hr) - 0.5
    dx, dy, ok = invert_flow_at(depth_flow.astype(np.float32), mx, my, sx, sy, (wr / wd, hr / hd))
    depth = cv2.remap(depth_metres_img, dx, dy, interpolation=cv2.INTER_NEAREST,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=float('nan'))
    depth[~(ok & in_rgb)] = np.nan
    return depth.astype(np.float32)


def fuse(lwir_raw: np.ndarray, lwir_encoding: str, lwir_flow: np.ndarray, registered_rgb: np.ndarray,
         depth_raw: np.ndarray, depth_encoding: str, depth_flow: np.ndarray,
         rgb_hw: tuple[int, int]) -> dict[str, tuple[np.ndarray, str]]:
    """The fused outputs (topic suffix -> (array, encoding)), all on the LWIR grid.

    `lwir_flow`/`registered_rgb` come from the rgb_lwir registration and `depth_flow` from the rgb_depth
    registration of the SAME RGB frame (`rgb_hw` its size).
    """
    depth = depth_in_lwir_frame(lwir_flow, depth_flow, depth_metres(depth_raw, depth_encoding), rgb_hw)
    return {
        'fused/rgb': (registered_rgb, 'rgb8'),
        'fused/lwir': (lwir_raw, lwir_encoding),
        'fused/depth': (depth, '32FC1'),
    }
