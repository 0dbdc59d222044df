"""The depth-parallax misalignment family: a second camera beside the first, seen through a depth map.

Unlike the families of `nmr.training.families` this field is not a smooth map: it follows the scene's depth
(near things move more), it has discontinuities at depth edges, and parts of the scene are occluded in one
view and not the other. The ground truth is `nmr.geometry.flow_through_depth` (pinhole model, z-buffered,
disoccluded and hole pixels invalid): no projection code of its own here.

Given a pre-aligned pair (moving RGB, fixed LWIR/depth, same size) and a depth map in the FIXED camera:
1. cameras: one pinhole model (focal 0.7-1.2 x the width, principal point at the centre) for both, the
   moving camera `baseline_m` beside the fixed one (a random direction, mostly horizontal) and rotated by
   up to `rotation_deg`; the baseline is chosen so that the mean translational parallax is a target drawn
   from `augment.mean_px` (px at 640 px width), then clamped to `baseline_m`;
2. the moving image: the fixed depth reprojected into the moving camera (`reproject_depth`), disocclusion
   holes filled with the FARTHER neighbouring depth (the background a real second camera would see there),
   and the aligned RGB sampled through it (`flow_through_depth` from the moving camera back to the fixed);
3. the ground truth on the fixed grid: `flow_through_depth(fixed, moving, moving_from_fixed, depth)`;
4. both images cropped to their centre (as `families.cue_free_pair`): no border tells the field.

Depth: rgbdd and the rig bring their own; RGB-LWIR pairs have none, so `layered_depth` draws a random
piecewise-planar scene (a far background, a ground plane below a horizon, a few slanted planar objects in
front), independent of the image content.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from nmr.geometry import CameraModel, Pose, flow_through_depth, reproject_depth
from nmr.training.config import AugmentConfig
from nmr.training.families import CueFreePair, crop_region, inside

BASELINE_M = (0.01, 0.15)
ROTATION_DEG = 1.0


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def layered_depth(h: int, w: int, generator: torch.Generator) -> np.ndarray:
    """A random piecewise-planar depth map (metres, float32, all valid): background at 20-80 m, a ground plane
    below a random horizon for a camera 1-3 m high, and 2-6 slanted planar rectangles at 1.5-25 m."""
    g = generator
    f = w  # any focal length: only the layout matters here, the parallax is scaled later
    depth = np.full((h, w), _u(g, 20.0, 80.0), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = _u(g, 0.25, 0.6) * h
    cam_h = _u(g, 1.0, 3.0)
    below = ys > horizon + 1
    ground = f * cam_h / np.maximum(ys - horizon, 1.0)
    depth = np.where(below, np.minimum(depth, ground), depth)
    for _ in range(2 + int(torch.randint(0, 5, (1,), generator=g))):
        x0, y0 = _u(g, -0.1, 0.9) * w, _u(g, 0.0, 0.8) * h
        bw, bh = _u(g, 0.08, 0.45) * w, _u(g, 0.1, 0.6) * h
        z0 = _u(g, 1.5, 25.0)
        sx, sy = _u(g, -0.4, 0.4) * z0 / w, _u(g, -0.2, 0.2) * z0 / h  # slant: depth change per pixel
        box = (xs >= x0) & (xs < x0 + bw) & (ys >= y0) & (ys < y0 + bh)
        plane = np.maximum(z0 + sx * (xs - x0 - bw / 2) + sy * (ys - y0 - bh / 2), 0.5).astype(np.float32)
        depth = np.where(box & (plane < depth), plane, depth)
    return depth.astype(np.float32)


def fill_background(depth: np.ndarray, iterations: int = 64) -> np.ndarray:
    """Depth holes (0) filled with the largest (farthest) neighbouring depth, grown a pixel per iteration."""
    out = depth.astype(np.float32).copy()
    holes = out <= 0
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(iterations):
        if not holes.any():
            break
        grown = cv2.dilate(out, kernel)
        out[holes] = grown[holes]
        holes = out <= 0
    return out


def parallax_pair(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    depth_m: np.ndarray,
    cfg: AugmentConfig,
    generator: torch.Generator,
    out_hw: tuple[int, int] | None = None,
) -> CueFreePair:
    """Misalign a pre-aligned pair (tensors C x H x W, same size) by the parallax of a second camera, given
    the fixed camera's depth (H x W metres, 0 = none), and crop the centre of both (see the module doc)."""
    h, w = moving.shape[-2:]
    if tuple(fixed.shape[-2:]) != (h, w) or depth_m.shape != (h, w):
        raise ValueError(f'parallax needs moving, fixed and depth of one size, got {(h, w)}, '
                         f'{tuple(fixed.shape[-2:])} and {depth_m.shape}')
    g = generator
    if out_hw is None:
        region = crop_region(h, w, cfg.canvas_scale)
    else:
        region = ((h - out_hw[0]) // 2, (w - out_hw[1]) // 2, int(out_hw[0]), int(out_hw[1]))
    y0, x0, ch, cw = region
    focal = _u(g, 0.7, 1.2) * w
    cam = CameraModel(w, h, focal, focal, (w - 1) / 2.0, (h - 1) / 2.0)
    depth = np.asarray(depth_m, np.float32)
    valid_depth = np.isfinite(depth) & (depth > 0)
    # the baseline for the drawn mean parallax (translation only: f * b * mean(1 / z) over the crop)
    lo, hi = cfg.mean_px
    target = _u(g, lo, hi) * cw / float(cfg.reference_width)
    crop_valid = valid_depth[y0:y0 + ch, x0:x0 + cw]
    inv = float((1.0 / depth[y0:y0 + ch, x0:x0 + cw][crop_valid]).mean()) if crop_valid.any() else 0.1
    baseline = min(max(target / max(focal * inv, 1e-9), BASELINE_M[0]), BASELINE_M[1])
    ang = _u(g, -math.pi / 6, math.pi / 6) + (math.pi if _u(g, 0, 1) < 0.5 else 0.0)  # mostly horizontal
    t = np.array([math.cos(ang), math.sin(ang), _u(g, -0.2, 0.2)]) * baseline
    rot = [_u(g, -ROTATION_DEG, ROTATION_DEG) for _ in range(3)]
    moving_from_fixed = Pose.from_rpy_deg(rot[0], rot[1], rot[2], t)
    # ground truth on the fixed grid
    flow, valid = flow_through_depth(cam, cam, moving_from_fixed, np.where(valid_depth, depth, 0.0))
    # the moving image: the aligned RGB seen from the moving camera (background behind disocclusions)
    depth_moving = fill_background(reproject_depth(cam, cam, moving_from_fixed, np.where(valid_depth, depth, 0.0)))
    back, _ = flow_through_depth(cam, cam, moving_from_fixed.inverse(), depth_moving, occlusion_tol=1e9)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = np.clip(xs + back[..., 0], 0, w - 1)
    map_y = np.clip(ys + back[..., 1], 0, h - 1)
    img = moving.permute(1, 2, 0).numpy().astype(np.float32)
    warped = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if warped.ndim == 2:
        warped = warped[..., None]
    warped_t = torch.from_numpy(np.ascontiguousarray(warped)).permute(2, 0, 1).to(moving.dtype)
    flow_t = torch.from_numpy(flow[y0:y0 + ch, x0:x0 + cw]).permute(2, 0, 1).contiguous()
    valid_t = torch.from_numpy(valid[y0:y0 + ch, x0:x0 + cw])[None] & inside(flow_t)
    return CueFreePair(
        moving=warped_t[..., y0:y0 + ch, x0:x0 + cw],
        fixed=fixed[..., y0:y0 + ch, x0:x0 + cw],
        flow=flow_t,
        valid=valid_t,
        family='parallax',
    )
