"""Registration accuracy: end-point error over valid pixels and landmark error (the paper's eq. 7).

Both compare flows on the FIXED grid (SPEC convention). The landmark error of eq. 7 is the mean distance
between where the prediction and the ground truth send each fixed-grid landmark p:
|phi_pred(p) - phi_gt(p)| = |(p + phi_pred(p)) - (p + phi_gt(p))|, with flows sampled bilinearly at p.
Each is also computed for the identity prediction (no registration), and the ratio pred / identity in
percent says how much of the misalignment is left (100 % = nothing registered, 0 % = perfect).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def endpoint_error(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean |pred - gt| (pixels) over valid pixels; NaN when no pixel is valid."""
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f'flow shapes differ or are not HxWx2: {pred.shape} vs {gt.shape}')
    err = np.linalg.norm(pred.astype(np.float64) - gt.astype(np.float64), axis=-1)
    mask = np.isfinite(err)
    if valid is not None:
        if valid.shape != err.shape:
            raise ValueError(f'valid mask {valid.shape} does not match flow {err.shape[:2]}')
        mask &= valid.astype(bool)
    return float(err[mask].mean()) if mask.any() else math.nan


def sample_flow(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear flow at sub-pixel points Nx2 (x, y) on its grid (pixel centres at integers; edges clamped)."""
    h, w = flow.shape[:2]
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x = np.clip(pts[:, 0], 0, w - 1)
    y = np.clip(pts[:, 1], 0, h - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(int), 0, max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    f = flow.astype(np.float64)
    top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
    bottom = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def landmark_error(pred: np.ndarray, gt: np.ndarray, landmarks: np.ndarray) -> float:
    """Eq. 7: mean over landmarks p of |phi_pred(p) - phi_gt(p)| (pixels); NaN without landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return math.nan
    d = sample_flow(pred, pts) - sample_flow(gt, pts)
    return float(np.linalg.norm(d, axis=1).mean())


def grid_landmarks(
    hw: tuple[int, int], valid: np.ndarray | None = None, nx: int = 10, ny: int = 8
) -> np.ndarray:
    """A regular nx x ny lattice of fixed-grid points (cell centres), keeping those on valid pixels.

    Used when the manifest gives no landmarks: eq. 7 is then evaluated at evenly spread points, which is
    what the paper's "general points from the scene" annotation approximates.
    """
    h, w = hw
    xs = (np.arange(nx) + 0.5) * w / nx - 0.5
    ys = (np.arange(ny) + 0.5) * h / ny - 0.5
    pts = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    if valid is not None:
        keep = valid[
            np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1),
            np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1),
        ]
        pts = pts[keep.astype(bool)]
    return pts


def ratio_percent(pred_error: float, identity_error: float) -> float:
    """100 * pred / identity: the share of the original misalignment that is left (NaN if undefined)."""
    if not (math.isfinite(pred_error) and math.isfinite(identity_error)) or identity_error <= 0:
        return math.nan
    return 100.0 * pred_error / identity_error


@dataclass
class PairResult:
    name: str
    fixed_hw: tuple[int, int]
    moving_hw: tuple[int, int]
    runtime_ms: float
    epe: float = math.nan
    epe_identity: float = math.nan
    epe_ratio: float = math.nan
    landmark: float = math.nan
    landmark_identity: float = math.nan
    landmark_ratio: float = math.nan
    landmark_count: int = 0
    landmark_source: str = ''  # 'manifest' | 'grid' | ''
    family: str = ''  # the manifest's misalignment family ('' = none given)
    valid_fraction: float = math.nan
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def evaluate_pair(
    name: str,
    pred: np.ndarray,
    identity: np.ndarray,
    gt: np.ndarray | None,
    valid: np.ndarray | None,
    landmarks: np.ndarray | None,
    moving_hw: tuple[int, int],
    runtime_ms: float,
    timings_ms: dict[str, float] | None = None,
) -> PairResult:
    """All metrics of one pair; without ground truth only the run time (and sizes) are filled."""
    fixed_hw = (int(pred.shape[0]), int(pred.shape[1]))
    result = PairResult(
        name=name,
        fixed_hw=fixed_hw,
        moving_hw=moving_hw,
        runtime_ms=runtime_ms,
        timings_ms=dict(timings_ms or {}),
    )
    if gt is None:
        return result
    if gt.shape != pred.shape:
        raise ValueError(f'{name}: ground-truth flow is {gt.shape[:2]}, the fixed image {fixed_hw}')
    result.epe = endpoint_error(pred, gt, valid)
    result.epe_identity = endpoint_error(identity, gt, valid)
    result.epe_ratio = ratio_percent(result.epe, result.epe_identity)
    result.valid_fraction = float(valid.mean()) if valid is not None else 1.0
    if landmarks is not None and len(landmarks):
        pts, result.landmark_source = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2), 'manifest'
    else:
        pts, result.landmark_source = grid_landmarks(fixed_hw, valid), 'grid'
    result.landmark_count = len(pts)
    result.landmark = landmark_error(pred, gt, pts)
    result.landmark_identity = landmark_error(identity, gt, pts)
    result.landmark_ratio = ratio_percent(result.landmark, result.landmark_identity)
    return result


def summarise(results: Sequence[PairResult]) -> dict[str, Any]:
    """Means over pairs (NaNs skipped), overall ratios from the means, and run-time percentiles."""

    def mean(values: Iterable[float]) -> float:
        vals = [v for v in values if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    runtimes = np.array([r.runtime_ms for r in results], dtype=np.float64)
    epe, epe_id = mean(r.epe for r in results), mean(r.epe_identity for r in results)
    lm, lm_id = mean(r.landmark for r in results), mean(r.landmark_identity for r in results)
    families = sorted({r.family for r in results if r.family})
    per_family: dict[str, dict[str, float]] = {}
    for fam in families:
        rs = [r for r in results if r.family == fam]
        e, e_id = mean(r.epe for r in rs), mean(r.epe_identity for r in rs)
        per_family[fam] = {'pairs': len(rs), 'epe': e, 'epe_identity': e_id, 'epe_ratio': ratio_percent(e, e_id)}
    summary: dict[str, Any] = {
        'pairs': len(results),
        'pairs_with_ground_truth': sum(1 for r in results if math.isfinite(r.epe)),
        'epe': epe,
        'epe_identity': epe_id,
        'epe_ratio': ratio_percent(epe, epe_id),
        'landmark': lm,
        'landmark_identity': lm_id,
        'landmark_ratio': ratio_percent(lm, lm_id),
        'runtime_ms_median': float(np.median(runtimes)) if len(runtimes) else math.nan,
        'runtime_ms_mean': float(runtimes.mean()) if len(runtimes) else math.nan,
        'runtime_ms_p99': float(np.percentile(runtimes, 99)) if len(runtimes) else math.nan,
    }
    if per_family:
        summary['families'] = per_family
    return {k: _json_number(v) for k, v in summary.items()}


def _json_number(v: Any) -> Any:
    """NaN -> None (JSON has no NaN); tuples -> lists; floats rounded for readable files."""
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return {k: _json_number(x) for k, x in v.items()}
    return v


def format_table(results: Sequence[PairResult], summary: dict[str, Any]) -> str:
    """A fixed-width table: one row per pair, then the mean row."""

    def f(v: Any, nd: int = 2) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return '-'
        return f'{v:.{nd}f}'

    head = (
        f'{"pair":24s} {"fixed":>9s} {"EPE":>7s} {"EPE id":>7s} {"EPE %":>6s} {"LM":>7s} {"LM id":>7s} '
        f'{"LM %":>6s} {"ms":>8s}'
    )
    lines = [head, '-' * len(head)]
    for r in results:
        size = f'{r.fixed_hw[1]}x{r.fixed_hw[0]}'
        lines.append(
            f'{r.name[:24]:24s} {size:>9s} {f(r.epe):>7s} {f(r.epe_identity):>7s} {f(r.epe_ratio, 1):>6s} '
            f'{f(r.landmark):>7s} {f(r.landmark_identity):>7s} {f(r.landmark_ratio, 1):>6s} '
            f'{f(r.runtime_ms, 1):>8s}'
        )
    s = summary
    families = s.get('families') or {}
    if families:  # one line per misalignment family (the manifest's `family` column), then the mean
        lines.append('-' * len(head))
    for fam, fs in families.items():
        lines.append(
            f'{"family " + fam + " (" + str(fs["pairs"]) + ")":24s} {"":>9s} {f(fs["epe"]):>7s} '
            f'{f(fs["epe_identity"]):>7s} {f(fs["epe_ratio"], 1):>6s}'
        )
    lines.append('-' * len(head))
    lines.append(
        f'{"mean (" + str(s["pairs"]) + " pairs)":24s} {"":>9s} {f(s["epe"]):>7s} {f(s["epe_identity"]):>7s} '
        f'{f(s["epe_ratio"], 1):>6s} {f(s["landmark"]):>7s} {f(s["landmark_identity"]):>7s} '
        f'{f(s["landmark_ratio"], 1):>6s} {f(s["runtime_ms_median"], 1):>8s}'
    )
    return '\n'.join(lines)
