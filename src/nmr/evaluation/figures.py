"""Per-pair contact sheet in the paper's Figure 4 layout, written as PNG with OpenCV only.

Columns: moving (input A), fixed (input B), registered, deformation field (Middlebury colours),
overlay before and overlay after registration. The paper overlays a segmented salient object at 25 %
opacity; without segmentations we blend the whole fixed image at 50 %, which shows misalignment as
double edges before and their absence after.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from nmr.flow import flow_to_rgb, overlay, warp

PANEL_TITLES = ('moving', 'fixed', 'registered', 'flow', 'overlay before', 'overlay after')


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    out = panel.copy()
    scale = max(0.4, panel.shape[0] / 500)
    thick = max(1, round(scale * 2))
    cv2.putText(
        out,
        text,
        (6, int(22 * scale) + 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (0, 0, 0),
        thick + 2,
        cv2.LINE_AA,
    )
    cv2.putText(
        out,
        text,
        (6, int(22 * scale) + 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thick,
        cv2.LINE_AA,
    )
    return out


def contact_sheet(
    moving_rgb: np.ndarray,
    fixed_display: np.ndarray,
    registered: np.ndarray,
    flow: np.ndarray,
    identity: np.ndarray,
    height: int = 256,
    alpha: float = 0.5,
    titles: Sequence[str] = PANEL_TITLES,
) -> np.ndarray:
    """One RGB row of six panels, each scaled to `height` pixels (aspect ratio kept)."""
    before, _ = warp(moving_rgb, identity)
    fixed = _rgb(fixed_display)
    panels = [
        moving_rgb,
        fixed,
        registered,
        flow_to_rgb(flow),
        overlay(fixed, before, alpha),
        overlay(fixed, registered, alpha),
    ]
    scaled = []
    for panel, title in zip(panels, titles):
        panel = _rgb(np.asarray(panel, dtype=np.uint8))
        w = max(1, round(panel.shape[1] * height / panel.shape[0]))
        scaled.append(_label(cv2.resize(panel, (w, height), interpolation=cv2.INTER_AREA), title))
    gap = np.full((height, 4, 3), 255, np.uint8)
    row = [scaled[0]]
    for panel in scaled[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {path}')
    return path
