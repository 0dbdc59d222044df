"""Errors of an estimated rig against a known one (the synthetic rig's rig_true.yaml): for tests and reports."""

from __future__ import annotations

import math

import numpy as np

from nmr.geometry.rig import Rig


def rig_errors(estimate: Rig, truth: Rig) -> dict[str, dict[str, float]]:
    """Per non-reference camera in both: rotation error (deg, angle of R_true^T R_est), translation error
    (mm, distance of the optical centres), focal error (%, fx) and time offset error (ms)."""
    out: dict[str, dict[str, float]] = {}
    for name in estimate.names():
        if name == 'rgb' or name not in truth.cameras:
            continue
        e, t = estimate.pose(name), truth.pose(name)
        dR = t.R.T @ e.R
        angle = math.degrees(math.acos(float(np.clip((np.trace(dR) - 1) / 2, -1.0, 1.0))))
        out[name] = {
            'rotation_deg': angle,
            'translation_mm': 1000 * float(np.linalg.norm(e.t - t.t)),
            'focal_pct': 100 * abs(estimate.camera(name).fx / truth.camera(name).fx - 1),
            'time_offset_ms': 1000 * abs(estimate.time_offset_s(name) - truth.time_offset_s(name)),
        }
    return out
