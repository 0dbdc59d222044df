"""Plain data records shared by the bag, folder and manifest datasets (no torch, no ROS)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FramePair:
    """One moving/fixed image pair, raw (not yet normalised), with optional ground truth.

    ``moving`` is always ``HxWx3`` RGB uint8. ``fixed`` is raw: LWIR ``HxW`` uint8/uint16, depth ``HxW``
    uint16 (mm) or float32 (m); ``fixed_encoding`` is its ROS encoding so that the pre-processing can
    tell millimetres from metres. ``gt_flow`` is ``HfxWfx2`` float32 on the fixed grid (SPEC convention),
    ``valid`` an ``HfxWf`` bool mask, ``landmarks`` ``Nx2`` (x, y) points on the fixed grid.
    """

    name: str
    moving: np.ndarray
    fixed: np.ndarray
    fixed_kind: str
    fixed_encoding: str
    stamp_ns: int = 0
    gt_flow: np.ndarray | None = None
    valid: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    depth: np.ndarray | None = None  # depth frame of the same instant (manifest column depth): float32 m, 0 = none
