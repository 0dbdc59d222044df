"""Frame stamps of free-running cameras: own rate, phase offset and jitter per stream.

Why: real cameras on a rig are not triggered together; the synchroniser pairs frames whose stamps are
only close, and objects (and the rig) move in between, which is part of the misalignment the ground
truth must include. Stamps are integer nanoseconds (design.md); each frame is rendered at its stamp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the recording starts at this wall-clock time (2023-11-14T22:13:20Z), like a real bag
START_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class StreamTiming:
    rate_hz: float
    phase_s: float
    jitter_s: float


def frame_stamps(timing: StreamTiming, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 stamps (ns) of the frames exposed in ``[0, duration_s)`` after ``START_NS``."""
    period = 1.0 / timing.rate_hz
    n = max(0, math.ceil((duration_s - timing.phase_s) / period))
    jitter = np.clip(rng.normal(0.0, timing.jitter_s, n), -3 * timing.jitter_s, 3 * timing.jitter_s)
    t = timing.phase_s + np.arange(n) * period + jitter
    t = t[(t >= 0) & (t < duration_s)]
    stamps = START_NS + np.rint(t * 1e9).astype(np.int64)
    return np.unique(stamps)


def seconds(stamp_ns: int) -> float:
    """Scene time (s since the start) of a stamp."""
    return (int(stamp_ns) - START_NS) / 1e9
