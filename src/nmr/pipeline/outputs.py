"""Per-pair outputs (registered, flow, flow_viz, overlay) built from one Registrar, shared by node and bag.

`register_node` and `nmr register-bag` both call `PairProcessor.run` (through nmr.pipeline.core), so the
live topics and the offline bag hold the same arrays for the same input frames. Inputs are checked here
(encoding per fixed kind, empty images, non-finite depth) because both callers receive them from the
outside world.

`run` is a sequence of stages, each timed (`last_timings_ms`) and each skipped when nothing asks for it:

1. **prior** (optional): a flow on the fixed grid known without the network, in this order: given per set
   (`run(prior=...)`), the rig's projection through depth (`geometry`, nmr.geometry.registration, with
   the set's depth frame: `run(depth=...)`), or computed from the pair by a `prior_flow` hook. The moving
   image is pre-warped by it onto the fixed grid and the network predicts only the residual r.
   Composition (nmr.flow.compose): the pre-warped image is `W(v) = moving(v + g(v))`, and the network
   registers W by `W(v + r(v))`, so `registered(v) = moving(v + r(v) + g(v + r(v)))`, i.e.
   `phi(v) = r(v) + g(v + r(v))` (g sampled bilinearly at the residual's target, on the fixed grid); the
   registered image is sampled once from the original moving image. NaN in a given prior (no geometry
   there) stays NaN in the flow. With the geometric stage and `residual` off the network is not run at
   all: `phi = g`. The geometric stage also gives the `valid` mask (depth holes, occlusions, outside the
   RGB image): the registered image is 0 where it is 0, and it is published as `P/valid`.
2. **network**: pre-processing and R_Phi on the network grid (`Registrar.net_flow`).
3. **flow**: the net-grid flow up-sampled and rescaled to native pixels in one pass (nmr.pipeline.native).
4. **warp**: the registered image (`cv2.remap`), only when `registered`, `overlay` or the fused output
   needs it.
5. **outputs**: `flow_viz` and `overlay` only when asked for and at most `viz_max_rate_hz` per pair (by
   header stamps, so the node and register-bag make the same ones); `flow_viz` (~10 ms at 640x512) at
   `viz_scale` of the fixed size, then resized back so that every output stays on the fixed grid. The
   overlay's fixed image is the normalised one the network saw (not normalised a second time).

On CPU the network-grid path with OpenCV replaces the registrar's torch post-processing (float64
grid_sample), several times faster; registrars without `net_flow` (baselines, test stand-ins) and GPU
devices use `registrar.register` (grid_sample on the device).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from nmr import flow as nmr_flow
from nmr.domain import PAIR_FIXED_KIND, PAIRS, STREAM_ENCODINGS
from nmr.errors import NmrUserError
from nmr.geometry.registration import GeometricStage
from nmr.inference.protocol import RegistrarProtocol, Registration
from nmr.pipeline.memory import SizeChangeTrimmer
from nmr.pipeline.native import NativeGrid
from nmr.pipeline.settings import PAIR_OUTPUTS

PriorFlow = Callable[[np.ndarray, np.ndarray, str], 'np.ndarray | None']
Depth = tuple[np.ndarray, str]
"""the depth frame of a set's instant: (raw array, encoding)"""
"""(moving RGB, fixed raw, fixed encoding) -> a flow HfxWfx2 on the fixed grid, or None (no prior for this set)"""
VIZ_OUTPUTS = frozenset({'flow_viz', 'overlay'})

OUTPUT_ENCODINGS: dict[str, str] = {
    'registered': 'rgb8', 'flow': '32FC2', 'flow_viz': 'rgb8', 'overlay': 'rgb8', 'valid': 'mono8'}


class PairInputError(NmrUserError, ValueError):
    """A synchronised pair whose images cannot be registered (wrong encoding, empty, wrong shape)."""


class NonFiniteFlowError(PairInputError):
    """The model returned NaN or infinite flow values for a set: nothing of that set may be published
    (a NaN flow warps to a black image that looks like a result)."""


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


@dataclass
class PairResult:
    """One registered pair: the native flow, the registered image (None when nothing needed it), outputs."""

    flow: np.ndarray
    registered: np.ndarray | None
    outputs: dict[str, tuple[np.ndarray, str]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    valid: np.ndarray | None = None  # HxW bool where the flow is trusted (a geometric prior's), else None
    prior_source: str | None = None  # 'depth' or 'plane' when a geometric prior was used


class _Clock:
    """Stage timer: `lap(name)` adds the time since the previous lap to `timings[name]`."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now


class PairProcessor:
    """Wraps a Registrar and builds the node's outputs for one synchronised (moving, fixed) pair.

    `outputs` of `process`/`run` maps output name -> (array, ROS encoding); all arrays are on the FIXED
    image's grid, so they carry the fixed image's header. One instance per pair; `run` is not re-entrant
    (the node runs each pair on its own worker thread).
    """

    def __init__(self, registrar: RegistrarProtocol | None, pair: str | None = None, overlay_alpha: float = 0.5,
                 flow_viz_max_px: float | None = None, viz_max_rate_hz: float = 0.0, viz_scale: float = 1.0,
                 prior_flow: PriorFlow | None = None, geometry: GeometricStage | None = None,
                 residual: bool = True) -> None:
        if registrar is None and (geometry is None or residual):
            raise ValueError('PairProcessor: a registrar is needed unless a geometric stage runs without residual')
        self.registrar: Any = registrar
        self.pair = pair or (registrar.pair if registrar is not None else None) or ''
        if self.pair not in PAIRS:
            raise PairInputError(f'unknown pair {self.pair!r}: expected one of {", ".join(PAIRS)}')
        self.fixed_kind = PAIR_FIXED_KIND[self.pair]
        self.overlay_alpha = float(overlay_alpha)
        self.flow_viz_max_px = flow_viz_max_px
        self.viz_max_rate_hz = float(viz_max_rate_hz)
        self.viz_scale = float(viz_scale)
        self.prior_flow = prior_flow
        self.geometry = geometry
        self.residual = bool(residual)
        self.last_timings_ms: dict[str, float] = {}
        self._grid = NativeGrid()  # the grids of the current size only
        self._trimmer = SizeChangeTrimmer()  # memory back to the system after the size changes
        self._last_viz_ns: int | None = None
        device = getattr(registrar, 'device', None)
        # the OpenCV path: CPU registrars that can stop at the network grid
        self._fast = hasattr(registrar, 'net_flow') and str(getattr(device, 'type', device)) == 'cpu'

    # -- the reference path (evaluation, tests): the registrar's own post-processing ------------------
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
        flow = np.ascontiguousarray(registration.flow, dtype=np.float32)
        registered = np.ascontiguousarray(registration.registered, dtype=np.uint8)
        return self._outputs(set(wanted), flow, registered, lambda: self._fixed_display(fixed_raw, fixed_encoding),
                             _Clock())

    def process(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str,
                wanted: Iterable[str] = PAIR_OUTPUTS, stamp_ns: int | None = None) -> dict[str, tuple[np.ndarray, str]]:
        """Register one pair and build the requested outputs: name -> (array, encoding)."""
        return self.run(moving_rgb, fixed_raw, fixed_encoding, wanted, stamp_ns).outputs

    # -- the node's path ----------------------------------------------------------------------------
    def run(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str,
            wanted: Iterable[str] = PAIR_OUTPUTS, stamp_ns: int | None = None,
            need_registered: bool = False, prior: np.ndarray | None = None,
            depth: Depth | None = None, previous: tuple[np.ndarray, float] | None = None) -> PairResult:
        """The stages of the module docstring for one set; `need_registered`: warp even if not wanted.

        `prior`: this set's prior flow (HfxWfx2, fixed grid), else the geometric stage's, else `prior_flow`'s,
        else none. `depth`: the depth frame of the set's instant for the geometric stage (rgb_lwir; rgb_depth
        uses its fixed image); None: the geometric stage falls back to its plane model. `previous`: (the RGB
        frame before this one as HxWx3 RGB, alpha = (t_fixed - t_rgb) / (t_previous - t_rgb)) for the geometric
        stage's motion compensation.
        """
        wanted = set(wanted)
        clock = _Clock()
        check_moving(moving_rgb)
        fixed_raw = check_fixed(self.fixed_kind, fixed_raw, fixed_encoding)
        self._trimmer.observe((moving_rgb.shape, fixed_raw.shape))
        clock.lap('check')
        if wanted & VIZ_OUTPUTS and not self._viz_due(stamp_ns):
            wanted -= VIZ_OUTPUTS
        warp_needed = need_registered or bool(wanted & {'registered', 'overlay'})
        prior, prior_valid, source = self._prior(moving_rgb, fixed_raw, fixed_encoding, depth, prior, previous)
        if prior is not None and prior.shape != (*fixed_raw.shape[:2], 2):
            raise PairInputError(f'prior flow has shape {prior.shape}: expected {(*fixed_raw.shape[:2], 2)} '
                                 '(the fixed image\'s grid)')
        clock.lap('prior')
        if prior is not None and prior_valid is not None and not self.residual:
            return self._geometric_only(moving_rgb, fixed_raw, fixed_encoding, wanted, prior, prior_valid,
                                        source, warp_needed, clock)
        if not self._fast:
            registration = self.registrar.register(
                self._grid.warp(moving_rgb, prior) if prior is not None else moving_rgb, fixed_raw, fixed_encoding)
            clock.timings.update({f'registrar.{k}': v for k, v in registration.timings_ms.items()})
            clock.lap('network')
            flow = np.ascontiguousarray(registration.flow, dtype=np.float32)
            fixed_full: Any = None
            registered = np.ascontiguousarray(registration.registered, dtype=np.uint8) if prior is None else None
        else:
            net_input = self._grid.warp(moving_rgb, prior) if prior is not None else moving_rgb
            clock.lap('prior')
            net = self.registrar.net_flow(net_input, fixed_raw, fixed_encoding)  # type: ignore[attr-defined]
            clock.timings.update(net.timings_ms)
            clock.lap('network')
            flow = self._grid.flow(net.flow_n, net.fixed_hw, net.moving_hw)
            fixed_full = net.fixed_full
            registered = None
            clock.lap('flow')
        valid = None
        if prior is not None:
            positions = self._grid.positions(flow)
            flow = self._compose(flow, prior, positions)
            if prior_valid is not None:  # trusted where the residual's target is a valid prior pixel
                valid = nmr_flow.sample_mask(prior_valid, positions)
            clock.lap('prior')
        if not np.isfinite(flow).all():  # ~0.3 ms at 640x512: a NaN flow warps to black, which looks like a result
            bad = int(flow.size - np.count_nonzero(np.isfinite(flow)))
            raise NonFiniteFlowError(f'{self.pair}: the model returned a flow with {bad} of {flow.size} values NaN '
                                     'or infinite; the set is not published (check the model file)')
        if registered is None and warp_needed:
            registered = self._grid.warp(moving_rgb, flow)
            if valid is not None:
                _zero_where_invalid(registered, valid)
            clock.lap('warp')

        def display() -> np.ndarray:
            if fixed_full is None:
                return self._fixed_display(fixed_raw, fixed_encoding)
            return _grey_rgb(fixed_full)

        out_valid = valid
        if out_valid is None and 'valid' in wanted:  # the network's flow: wherever it samples inside the image
            out_valid = self._grid.valid(flow, (int(moving_rgb.shape[0]), int(moving_rgb.shape[1])))
        outputs = self._outputs(wanted, flow, registered, display, clock, out_valid)
        self.last_timings_ms = clock.timings
        return PairResult(flow, registered, outputs, clock.timings, valid, source)

    def _prior(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str, depth: Depth | None,
               given: np.ndarray | None = None, previous: tuple[np.ndarray, float] | None = None,
               ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        """(prior flow, its valid mask, its source): the given one, the geometric stage's or the hook's."""
        if given is not None:
            return given, None, None
        if self.geometry is not None:
            if self.fixed_kind == 'depth':
                depth = (fixed_raw, fixed_encoding)
            moving_hw = (int(moving_rgb.shape[0]), int(moving_rgb.shape[1]))
            fixed_hw = (int(fixed_raw.shape[0]), int(fixed_raw.shape[1]))
            depth_raw, depth_encoding = depth if depth is not None else (None, '16UC1')
            motion = (moving_rgb, previous[0], previous[1]) if previous is not None else None
            geo = self.geometry.flow(self.pair, moving_hw, fixed_hw, depth_raw, depth_encoding, motion=motion)
            return geo.flow, geo.valid, geo.source
        if self.prior_flow is not None:
            return self.prior_flow(moving_rgb, fixed_raw, fixed_encoding), None, None
        return None, None, None

    def _geometric_only(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray, fixed_encoding: str,
                        wanted: set[str], flow: np.ndarray, valid: np.ndarray, source: str | None,
                        warp_needed: bool, clock: _Clock) -> PairResult:
        """`phi = g` (residual off): no network; registered is 0 where `valid` is 0."""
        registered = None
        if warp_needed:
            registered = self._grid.warp(moving_rgb, flow)
            _zero_where_invalid(registered, valid)
            clock.lap('warp')
        outputs = self._outputs(wanted, flow, registered, lambda: self._fixed_display(fixed_raw, fixed_encoding),
                                clock, valid)
        self.last_timings_ms = clock.timings
        return PairResult(flow, registered, outputs, clock.timings, valid, source)

    # -- stages -------------------------------------------------------------------------------------
    def _viz_due(self, stamp_ns: int | None) -> bool:
        """At most `viz_max_rate_hz` visualisations per pair, by header stamp (0 = every set).

        A tenth of a period of slack keeps a 30 Hz camera's jittered stamps at 10 Hz, not 7.5 Hz; a stamp
        that went backwards (bag loop) starts over.
        """
        if self.viz_max_rate_hz <= 0 or stamp_ns is None:
            return True
        last = self._last_viz_ns
        if last is not None and 0 <= stamp_ns - last < 0.9e9 / self.viz_max_rate_hz:
            return False
        self._last_viz_ns = stamp_ns
        return True

    def _compose(self, residual: np.ndarray, prior: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """`phi(v) = r(v) + prior(v + r(v))` (nmr.flow.compose): the residual moves within the pre-warped image."""
        return nmr_flow.compose(residual, prior, self._grid.positions(residual) if positions is None else positions)

    def _fixed_display(self, fixed_raw: np.ndarray, fixed_encoding: str) -> np.ndarray:
        from nmr.data.preprocess import fixed_display  # torch: not for `nmr register-bag --help`

        checked = check_fixed(self.fixed_kind, fixed_raw, fixed_encoding)
        return fixed_display(self.fixed_kind, checked, fixed_encoding)

    def _outputs(self, wanted: set[str], flow: np.ndarray, registered: np.ndarray | None,
                 fixed_rgb: Callable[[], np.ndarray], clock: _Clock,
                 valid: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, str]]:
        out: dict[str, tuple[np.ndarray, str]] = {}
        if 'valid' in wanted:
            assert valid is not None, 'run() computes valid when it is wanted'
            out['valid'] = (valid.view(np.uint8) * np.uint8(255), 'mono8')
        if 'registered' in wanted and registered is not None:
            out['registered'] = (registered, 'rgb8')
        if 'flow' in wanted:
            out['flow'] = (flow, '32FC2')
        if 'flow_viz' in wanted:
            out['flow_viz'] = (self._at_viz_scale(lambda f: nmr_flow.flow_to_rgb(f, self.flow_viz_max_px), flow,
                                                  cv2.INTER_AREA), 'rgb8')
            clock.lap('flow_viz')
        if 'overlay' in wanted and registered is not None:
            out['overlay'] = (nmr_flow.overlay(fixed_rgb(), registered, self.overlay_alpha), 'rgb8')
            clock.lap('overlay')
        return out

    def _at_viz_scale(self, make: Callable[[np.ndarray], np.ndarray], source: np.ndarray,
                      shrink: int) -> np.ndarray:
        """`make(source)` computed at `viz_scale` of the size and resized back to the fixed grid."""
        h, w = source.shape[:2]
        scale = self.viz_scale
        if scale >= 1.0:
            return make(source)
        small_hw = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = make(cv2.resize(source, small_hw, interpolation=shrink))
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _zero_where_invalid(image: np.ndarray, valid: np.ndarray) -> None:
    """``image[~valid] = 0`` in place; for uint8 images as one AND with a 0/255 mask (numpy's masked write on
    HxWx3 uint8 cost ~2.5 ms at 640x512, this ~0.1 ms)."""
    if image.dtype != np.uint8 or not image.flags.c_contiguous:
        image[~valid] = 0
        return
    mask: np.ndarray = valid.astype(np.uint8)  # any bool mask (a view of a non-contiguous one would fail)
    mask *= np.uint8(255)
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels > 1:
        mask = cv2.merge([mask] * channels)
    cv2.bitwise_and(image, mask.reshape(image.shape), dst=image)


def _grey_rgb(fixed_full: Any) -> np.ndarray:
    """The normalised fixed image (1xHxW tensor in [-1, 1]) as HxWx3 uint8 grey: `fixed_display`'s numbers."""
    x = fixed_full[0] if fixed_full.ndim == 3 else fixed_full
    import torch

    grey = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
