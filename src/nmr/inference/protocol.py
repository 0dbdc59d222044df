"""What every registrar is to its callers: `RegistrarProtocol`, and the `Registration` it returns.

Torch-free on purpose: the pipeline (node and `nmr register-bag`) and the evaluation type their seams
with these names without importing torch, so `--help` stays fast. The model backends (subclasses of
`nmr.inference.registrar.Registrar`) and the classical baselines (`nmr.evaluation.baselines`) both
satisfy the protocol structurally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Registration:
    """One registered pair at the FIXED image's native size (numpy, SPEC conventions)."""

    flow: np.ndarray  # HfxWfx2 float32, fixed grid, pixels, ch0 = dx
    registered: np.ndarray  # moving warped into the fixed frame, HfxWfx3 uint8
    valid: np.ndarray  # HfxWf bool: the sample fell inside the moving image
    timings_ms: dict[str, float] = field(default_factory=dict)


class RegistrarProtocol(Protocol):
    """Registers (moving RGB, raw fixed) pairs of one pair kind; results at the fixed image's native size.

    `pair` is the model's pair (`rgb_lwir` / `rgb_depth`, nmr.domain; None for a pair-agnostic baseline);
    `backend` and `device` say where it runs, for logs and diagnostics. Read-only here, so that a class
    attribute, an instance attribute or a property all satisfy the protocol.
    """

    @property
    def pair(self) -> str | None: ...

    @property
    def backend(self) -> str: ...

    @property
    def device(self) -> Any: ...

    def register(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str) -> Registration: ...

    def describe(self) -> str: ...
