"""Per-pair outputs (registered, flow, flow_viz, overlay) built from one Registrar, shared by node and bag.

`register_node` and `nmr register-bag` both call `PairProcessor.process`, so the live topics and the
offline bag hold the same arrays for the same input frames. Inputs are checked here (encoding per fixed
kind, empty images, non-finite depth) because both callers receive them from the outside world.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nmr import flow as nmr_flow
from nmr.domain import PAIR_FIXED_KIND, PAIRS, STREAM_ENCODINGS
from nmr.errors import NmrUserError
from nmr.inference.protocol import RegistrarProtocol, Registration
from nmr.pipeline.settings import PAIR_OUTPUTS

OUTPUT_ENCODINGS: dict[str, str] = {
    'registered': 'rgb8', 'flow': '32FC2', 'flow_viz': 'rgb8', 'overlay': 'rgb8'}


class PairInputError(NmrUserError, ValueError):
    """A synchronised pair whose images cannot be registered (wrong encoding, empty, wrong shape)."""


def check_moving(moving_rgb: np.ndarray) -> None:
    """The moving image must be a non-empty HxWx3 uint8 RGB array (decoded by nmr.data.encodings.to_rgb)."""
    if moving_rgb.ndim != 3 or moving_rgb.shape[2] != 3 or moving_rgb.dtype != np.uint8:
        raise PairInputError(
            f'moving RGB image has shape {moving_rgb.shape} {moving_rgb.dtype}: expected HxWx3 uint8')
    if moving_rgb.shape[0] == 0 or moving_rgb.shape[1] == 0:
        raise PairInputError(f'moving RGB image is empty ({moving_rgb.shape[1]}x{moving_rgb.shape[0]})')


def check_fixed(kind: str, fixed_raw: np.ndarray, encoding: str) -> np.ndarray:
    """Validate a fixed image for `kind`; returns it with non-finite 32FC1 depth set to NaN (= no data)."""
    allowed = STREAM_ENCODINGS[kind]
    if encoding not in allowed:
        raise PairInputError(f'{kind} image has encoding {encoding!r}: expected one of {", ".join(allowed)}')
    if fixed_raw.ndim != 2 or fixed_raw.shape[0] == 0 or fixed_raw.shape[1] == 0:
        raise PairInputError(f'{kind} image has shape {fixed_raw.shape}: expected a non-empty HxW array')
    if encoding == '32FC1':
        finite = np.isfinite(fixed_raw)
        if not finite.all():
            fixed_raw = np.where(finite, fixed_raw, np.float32(np.nan)).astype(np.float32)
    return fixed_raw


class PairProcessor:
    """Wraps a Registrar and builds the node's outputs for one synchronised (moving, fixed) pair.

    `outputs` of `process` maps output name -> (array, ROS encoding); all arrays are on the FIXED image's
    grid, so they carry the fixed image's header.
    """

    def __init__(self, registrar: RegistrarProtocol, pair: str | None = None, overlay_alpha: float = 0.5,
                 flow_viz_max_px: float | None = None) -> None:
        self.registrar = registrar
        self.pair = pair or registrar.pair or ''
        if self.pair not in PAIRS:
            raise PairInputError(f'unknown pair {self.pair!r}: expected one of {", ".join(PAIRS)}')
        self.fixed_kind = PAIR_FIXED_KIND[self.pair]
        self.overlay_alpha = float(overlay_alpha)
        self.flow_viz_max_px = flow_viz_max_px
        self.last_timings_ms: dict[str, float] = {}

    def register(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str) -> Registration:
        """Checked inputs -> Registration (flow, registered, valid, timings_ms)."""
        check_moving(moving_rgb)
        fixed_raw = check_fixed(self.fixed_kind, fixed_raw, fixed_encoding)
        result = self.registrar.register(moving_rgb, fixed_raw, fixed_encoding)
        self.last_timings_ms = dict(result.timings_ms)
        return result

    def outputs(self, registration: Registration, fixed_raw: np.ndarray, fixed_encoding: str,
                wanted: Iterable[str] = PAIR_OUTPUTS) -> dict[str, tuple[np.ndarray, str]]:
        """The requested outputs of an existing registration (flow_viz/overlay only computed if wanted)."""
        wanted = set(wanted)
        out: dict[str, tuple[np.ndarray, str]] = {}
        flow = np.ascontiguousarray(registration.flow, dtype=np.float32)
        registered = np.ascontiguousarray(registration.registered, dtype=np.uint8)
        if 'registered' in wanted:
            out['registered'] = (registered, 'rgb8')
        if 'flow' in wanted:
            out['flow'] = (flow, '32FC2')
        if 'flow_viz' in wanted:
            out['flow_viz'] = (nmr_flow.flow_to_rgb(flow, self.flow_viz_max_px), 'rgb8')
        if 'overlay' in wanted:
            from nmr.data.preprocess import fixed_display  # torch: not for `nmr register-bag --help`

            checked = check_fixed(self.fixed_kind, fixed_raw, fixed_encoding)
            fixed_rgb = fixed_display(self.fixed_kind, checked, fixed_encoding)
            out['overlay'] = (nmr_flow.overlay(fixed_rgb, registered, self.overlay_alpha), 'rgb8')
        return out

    def process(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str,
                wanted: Iterable[str] = PAIR_OUTPUTS) -> dict[str, tuple[np.ndarray, str]]:
        """Register one pair and build the requested outputs: name -> (array, encoding)."""
        registration = self.register(moving_rgb, fixed_raw, fixed_encoding)
        return self.outputs(registration, fixed_raw, fixed_encoding, wanted)
