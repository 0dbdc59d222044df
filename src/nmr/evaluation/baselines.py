"""Registrars without a learned model: the unregistered identity and classical multi-modal baselines.

They have the Registrar's `register(moving_rgb, fixed_raw, fixed_encoding) -> Registration` so that
`nmr evaluate --model identity|dis|sitk-mi` and `nmr bench` treat them like any backend:
- `identity`: no registration; the moving image is only rescaled onto the fixed grid (for different
  sizes that is the flow_to_native of a zero network flow, for equal sizes the zero flow).
- `dis`: OpenCV DIS optical flow between gradient-magnitude images (edges are roughly shared across
  RGB / thermal / depth where intensities are not).
- `sitk-mi`: SimpleITK B-spline registration with Mattes mutual information (only where SimpleITK is
  importable; it is not a project dependency).
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from nmr.errors import ConfigError
from nmr.flow import warp
from nmr.inference.protocol import Registration

BASELINES = ('identity', 'dis', 'sitk-mi')


def identity_flow(fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> np.ndarray:
    """The no-registration flow: pixel centres of the fixed grid onto the rescaled moving grid (HfxWfx2)."""
    hf, wf = fixed_hw
    hm, wm = moving_hw
    fx = (np.arange(wf, dtype=np.float64) + 0.5) * (wm / wf - 1.0)
    fy = (np.arange(hf, dtype=np.float64) + 0.5) * (hm / hf - 1.0)
    flow = np.empty((hf, wf, 2), np.float32)
    flow[..., 0] = fx[None, :]
    flow[..., 1] = fy[:, None]
    return flow


def resized_to_native(
    flow_small: np.ndarray, fixed_hw: tuple[int, int], moving_hw: tuple[int, int]
) -> np.ndarray:
    """Flow from the fixed grid into the moving image RESIZED to the fixed size -> into the native moving."""
    hf, wf = fixed_hw
    hm, wm = moving_hw
    out = np.empty_like(flow_small, dtype=np.float32)
    xs = np.arange(wf, dtype=np.float64)[None, :]
    ys = np.arange(hf, dtype=np.float64)[:, None]
    out[..., 0] = (xs + flow_small[..., 0] + 0.5) * wm / wf - 0.5 - xs
    out[..., 1] = (ys + flow_small[..., 1] + 0.5) * hm / hf - 0.5 - ys
    return out


def grey_u8(img: np.ndarray) -> np.ndarray:
    """Any image (RGB, mono8/16, depth mm or m) -> uint8 grey stretched between its 1st/99th percentiles."""
    a = np.asarray(img)
    a = a.astype(np.float32).mean(axis=2) if a.ndim == 3 else a.astype(np.float32)
    finite = np.isfinite(a) & (a != 0) if a.dtype.kind == 'f' else np.ones(a.shape, bool)
    a = np.where(np.isfinite(a), a, 0.0)
    if finite.any():
        lo, hi = np.percentile(a[finite], (1.0, 99.0))
    else:
        lo, hi = 0.0, 1.0
    return np.clip((a - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def gradient_u8(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a lightly blurred grey image, robustly scaled to uint8."""
    g = cv2.GaussianBlur(grey, (0, 0), 1.0).astype(np.float32)
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    scale = float(np.percentile(mag, 99.0)) or 1.0
    return np.clip(mag * (255.0 / scale), 0, 255).astype(np.uint8)


class BaselineRegistrar:
    """Base: the Registrar contract for flows computed in numpy on the CPU."""

    backend = 'baseline'
    device = 'cpu'

    def __init__(self, name: str) -> None:
        self.name = name
        self.pair: str | None = None  # any pair: the flow does not depend on the fixed kind
        self.metadata: dict[str, Any] = {'baseline': name}

    def describe(self) -> str:
        return f'baseline {self.name} (cpu)'

    def _flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def register(self, moving_rgb: Any, fixed_raw: Any, fixed_encoding: str = '') -> Registration:
        moving = np.asarray(moving_rgb)
        fixed = np.asarray(fixed_raw)
        t0 = time.perf_counter()
        flow = self._flow(moving, fixed)
        t1 = time.perf_counter()
        registered, valid = warp(moving, flow)
        t2 = time.perf_counter()
        return Registration(
            flow=flow,
            registered=registered,
            valid=valid,
            timings_ms={'net': (t1 - t0) * 1e3, 'postprocess': (t2 - t1) * 1e3, 'total': (t2 - t0) * 1e3},
        )


class IdentityRegistrar(BaselineRegistrar):
    def __init__(self) -> None:
        super().__init__('identity')

    def _flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray) -> np.ndarray:
        return identity_flow(fixed_raw.shape[:2], moving_rgb.shape[:2])


class DisRegistrar(BaselineRegistrar):
    """OpenCV DIS optical flow on gradient images (fixed -> moving rescaled to the fixed size)."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        super().__init__('dis')
        self.dis = cv2.DISOpticalFlow_create(preset)  # type: ignore[attr-defined]

    def _flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray) -> np.ndarray:
        hf, wf = fixed_raw.shape[:2]
        moving_small = cv2.resize(moving_rgb, (wf, hf), interpolation=cv2.INTER_AREA)
        a = gradient_u8(grey_u8(fixed_raw))
        b = gradient_u8(grey_u8(moving_small))
        flow = self.dis.calc(a, b, None)  # a(v) ~ b(v + flow(v)): on the fixed grid, into moving_small
        return resized_to_native(flow, (hf, wf), moving_rgb.shape[:2])


class SitkMiRegistrar(BaselineRegistrar):
    """SimpleITK B-spline (mesh 8x8) with Mattes mutual information, 3-level pyramid, L-BFGS-B."""

    def __init__(self, mesh: int = 8, iterations: int = 50) -> None:
        super().__init__('sitk-mi')
        try:
            import SimpleITK as sitk  # noqa: N813
        except ImportError:
            raise ConfigError('baseline sitk-mi needs SimpleITK (pip install SimpleITK)') from None
        self.sitk = sitk
        self.mesh = mesh
        self.iterations = iterations

    def _flow(self, moving_rgb: np.ndarray, fixed_raw: np.ndarray) -> np.ndarray:
        sitk = self.sitk
        hf, wf = fixed_raw.shape[:2]
        moving_small = cv2.resize(moving_rgb, (wf, hf), interpolation=cv2.INTER_AREA)
        fixed = sitk.GetImageFromArray(grey_u8(fixed_raw).astype(np.float32))
        moving = sitk.GetImageFromArray(grey_u8(moving_small).astype(np.float32))
        transform = sitk.BSplineTransformInitializer(fixed, [self.mesh, self.mesh])
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.2, seed=0)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=self.iterations)
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fixed, moving)
        # ITK registration transforms map FIXED points to MOVING points: displacement = phi on the fixed grid
        to_field = sitk.TransformToDisplacementFieldFilter()
        to_field.SetReferenceImage(fixed)
        field = sitk.GetArrayFromImage(to_field.Execute(transform)).astype(np.float32)  # HxWx2 (dx, dy)
        return resized_to_native(field, (hf, wf), moving_rgb.shape[:2])


def sitk_available() -> bool:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return True


def create_baseline(name: str) -> BaselineRegistrar:
    if name == 'identity':
        return IdentityRegistrar()
    if name == 'dis':
        return DisRegistrar()
    if name == 'sitk-mi':
        return SitkMiRegistrar()
    raise ConfigError(f'baseline {name!r} is not one of {", ".join(BASELINES)}')
