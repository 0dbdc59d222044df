"""Registration through the rig: each pair's flow from the rig file and the depth of the same instant.

Why: the misalignment between the rig's cameras is fixed geometry (intrinsics, poses, distortion) seen
through the scene's depth, and the depth camera measures that depth every frame, so the flow follows from
projection (nmr.geometry) without a network; R_Phi then only predicts what geometry leaves (the residual,
nmr.pipeline.outputs). Used by the node and register-bag (nmr.pipeline) and by `nmr evaluate --rig`.

Per pair (flows on the FIXED grid, SPEC convention):

- ``rgb_depth``: ``flow_through_depth(depth camera, rgb camera, T_rgb_depth, depth)`` on the depth grid.
- ``rgb_lwir``: the depth frame nearest in time (an auxiliary input of the set, nmr.pipeline.core) is
  reprojected into the LWIR camera (``reproject_depth``, z-buffer), then ``flow_through_depth(lwir, rgb,
  T_rgb_lwir, depth in lwir)``.

Validity: a pixel is valid when it has depth, lands inside the RGB image and is not occluded there
(nmr.geometry.reproject's rule). Invalid pixels still get a finite flow, so that the registered image and
the network's pre-warp stay sensible: the parallax (flow minus the flow of a plane at infinity, i.e. what
depth adds) is filled in from the valid neighbours by a push-pull pyramid (cheap, smooth; beyond the depth
camera's range it tends to the far surfaces' parallax, which is small), and below the depth camera's
vertical field of view the plane of its lowest rows (the road) is continued (``extend_ground``). The
reference "plane at infinity" is kept where it leaves the RGB image. Consumers must honour ``valid``:
the node publishes it (``P/valid``, mono8 255/0) and sets the registered image to 0 where it is 0.

Without depth for a set (no depth topic, no depth frame within ``depth_max_age_s``, a rig without a depth
camera) the flow is that of a fronto-parallel plane at ``plane_distance_m`` in front of the fixed camera
(a homography plus both lenses' distortion); every pixel landing inside the RGB image is valid. Said once
per pair (and again when depth comes back).

Image sizes: a stream published at another size than the rig file's (a scaled synthetic rig, a binned
camera) uses the rig's camera resized to it (``CameraModel.resized``), said once per camera and size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from nmr.errors import ConfigError
from nmr.geometry.camera import CameraModel, cached_rays
from nmr.geometry.heap import retain_freed_blocks
from nmr.geometry.pose import Pose
from nmr.geometry.reproject import BORDER_EPS, flow_through_depth, match_through_depth, pixel_coords, reproject_depth
from nmr.geometry.rig import Rig

#: the plane of the "no parallax" reference used to fill holes (far enough to count as infinity)
FAR_M = 1.0e4
#: the push-pull pyramid stops at this size (pixels, smaller side)
_PYRAMID_MIN = 4
#: its first level is this much smaller than the image: 4 rather than 2 saves the half-size level's passes
#: (hole fill 2.2 -> 1.4 ms at 640x512) for no measurable loss (seed-777 rig, filled pixels: 0.332 ->
#: 0.333 px; benchmarks/rig_error_breakdown.py)
_FILL_FIRST_STEP = 4


@dataclass(frozen=True)
class GeoFlow:
    """A geometric flow on the fixed grid: ``flow`` HxWx2 float32 (finite everywhere), ``valid`` HxW bool,
    and where it came from: ``'depth'`` or ``'plane'`` (the plane-at-distance fallback)."""

    flow: np.ndarray
    valid: np.ndarray
    source: str


def depth_in_metres(depth_raw: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1 millimetres (0 = none) or 32FC1 metres (NaN/0/inf = none) -> float32 metres, 0 where none."""
    if encoding == '16UC1' or depth_raw.dtype == np.uint16:
        return depth_raw.astype(np.float32) * np.float32(1e-3)
    out = np.asarray(depth_raw, dtype=np.float32)
    bad = ~(np.isfinite(out) & (out > 0))
    return np.where(bad, np.float32(0.0), out) if bad.any() else out


def fill_holes(flow: np.ndarray, valid: np.ndarray, holes_are_zero: bool = False) -> np.ndarray:
    """Where ``valid`` is False, the mean of the valid values around it (push-pull pyramid); in place.

    Down: area averages of ``valid`` and of ``flow * valid`` (normalised convolution), from quarter size on;
    up: each level keeps its own average where it has any valid pixel and takes the bilinearly up-sampled
    coarser result elsewhere; a cell of the coarsest level (a few pixels across) without any valid pixel
    gets 0 (for the parallax that is filled here: far away). The holes get the finest level's result
    up-sampled; valid pixels keep their values exactly. Nothing valid at all: returned unchanged.

    Cost: a few passes over the full-size image (the mask, the area down-sampling of ``flow * valid`` and
    of ``valid``, the masked copy back); everything else works on the pyramid, whose finest level is a
    quarter of the image (``_FILL_FIRST_STEP``). The holes' values in ``flow`` may be anything (NaN too);
    ``holes_are_zero``: the caller has made them 0 already (one masked pass fewer).
    """
    if not flow.flags.c_contiguous:  # cv2.copyTo writes in place only into a contiguous array
        raise ValueError('fill_holes: flow must be a C-contiguous HxWx2 array')
    if valid.all() or not valid.any():
        return flow
    h, w = valid.shape
    ok = valid.view(np.uint8)
    # (flow * valid, valid) down-sampled apart (merging them full size first costs a pass more) and merged
    # at the first level's size: the holes' values do not count (they are replaced)
    f = _FILL_FIRST_STEP
    size = ((w + f - 1) // f, (h + f - 1) // f)
    sums = cv2.resize(flow if holes_are_zero else cv2.copyTo(flow, ok), size, interpolation=cv2.INTER_AREA)
    weight = cv2.resize(ok.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    level = cv2.merge([sums, weight])
    pyramid: list[np.ndarray] = [level]
    while min(level.shape[:2]) > _PYRAMID_MIN:
        size = ((level.shape[1] + 1) // 2, (level.shape[0] + 1) // 2)
        level = cv2.resize(level, size, interpolation=cv2.INTER_AREA)
        pyramid.append(level)
    out = _normalised(pyramid[-1], None)
    for lv in reversed(pyramid[:-1]):
        up = cv2.resize(out, (lv.shape[1], lv.shape[0]), interpolation=cv2.INTER_LINEAR)
        out = _normalised(lv, up) if lv.shape[0] * lv.shape[1] > _SMALL_LEVEL else _normalised_small(lv, up)
    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    cv2.copyTo(out, (~valid).view(np.uint8), flow)  # the holes only (numpy's masked copy is ~10x slower)
    return flow


def extend_ground(parallax: np.ndarray, valid: np.ndarray, max_residual_px: float = 0.25) -> bool:
    """Below the depth's lowest rows, continue the plane seen there (the road, on a driving rig); in place.

    A depth camera with a narrower vertical field of view than the fixed camera leaves the bottom rows
    (the nearest ground) without depth; the push-pull fill would repeat the parallax of the last row,
    far too small for the nearer ground. A plane's parallax is (nearly) affine in the pixel coordinates,
    so an affine fit (least squares, refit without outliers) to the lowest well-covered band of valid
    pixels is extrapolated to the holes below each column's last valid pixel. Nothing is done (False) when
    the band is not a plane (median residual above ``max_residual_px``) or too few pixels cover it.
    """
    if not parallax.flags.c_contiguous:  # cv2.copyTo writes in place only into a contiguous array
        raise ValueError('extend_ground: parallax must be a C-contiguous HxWx2 array')
    h, w = valid.shape
    # valid pixels per row (cv2.reduce on the 0/1 bytes: ~20x cheaper than np.count_nonzero along an axis)
    counts = cv2.reduce(valid.view(np.uint8), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).reshape(-1)
    covered = np.flatnonzero(counts > 0.3 * w)
    if covered.size == 0 or covered[-1] >= h - 2:
        return False
    y1 = int(covered[-1])
    y0 = max(0, y1 - max(8, h // 16))
    step = max(1, (y1 + 1 - y0) * w // 4000)  # a few thousand samples fix three coefficients per channel
    flat = np.flatnonzero(valid[y0:y1 + 1])[::step]  # (np.nonzero of a 2-D block costs ~2x more)
    if flat.size < 50:
        return False
    ys, xs = np.divmod(flat, w)
    ys += y0
    target = parallax[ys, xs]
    x, y = xs.astype(np.float64), ys.astype(np.float64)
    tx, ty = target[:, 0].astype(np.float64), target[:, 1].astype(np.float64)
    coef = _fit_affine(x, y, tx, ty)
    res = _residuals(coef, x, y, tx, ty)
    keep = np.flatnonzero(res <= max(3.0 * float(np.median(res)), 0.05))
    x, y, tx, ty = x[keep], y[keep], tx[keep], ty[keep]
    coef = _fit_affine(x, y, tx, ty)
    if float(np.median(_residuals(coef, x, y, tx, ty))) > max_residual_px:
        return False
    # only the rows from the band down can change: work on that block
    block = valid[y0:]
    last = block.shape[0] - 1 - np.argmax(block[::-1], axis=0)  # each column's last valid row (in the block)
    rows = np.arange(block.shape[0])[:, None]
    below = (rows > last[None, :]) & np.asarray(block.any(axis=0))[None, :]
    if below.any():
        col = np.arange(w, dtype=np.float32)[None, :]
        row = np.arange(y0, h, dtype=np.float32)[:, None]
        plane = np.empty((h - y0, w, 2), np.float32)
        for c in range(2):
            plane[..., c] = np.float32(coef[0, c]) * col + np.float32(coef[1, c]) * row + np.float32(coef[2, c])
        target_block = parallax[y0:]
        cv2.copyTo(plane, below.view(np.uint8), target_block)
    return True


def _residuals(coef: np.ndarray, x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Per sample, the length of the affine fit's miss ``|coef(x, y) - (tx, ty)|``."""
    rx = coef[0, 0] * x + coef[1, 0] * y + (coef[2, 0] - tx)
    ry = coef[0, 1] * x + coef[1, 1] * y + (coef[2, 1] - ty)
    return np.hypot(rx, ry)


def _fit_affine(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Least squares ``(tx, ty) ~ coef^T (x, y, 1)`` (3x2 ``coef``): the 3x3 normal equations from dot
    products of the 1-D samples (float64; pixel coordinates keep them well conditioned). A few thousand
    samples: the Python-level calls are the cost, so no (N, 3) design matrix is built."""
    n = float(x.size)
    sx, sy = float(x.sum()), float(y.sum())
    sxy = float(x @ y)
    m = np.array([[float(x @ x), sxy, sx], [sxy, float(y @ y), sy], [sx, sy, n]])
    rhs = np.array([[float(x @ tx), float(x @ ty)], [float(y @ tx), float(y @ ty)], [float(tx.sum()), float(ty.sum())]])
    return np.linalg.solve(m, rhs)


#: the RGB images' optical flow is computed at most this wide (cost: DIS at 640x480 is 4-8x that at 320x240)
MOTION_MAX_WIDTH = 320
MOTION_PRESET = 1  # cv2.DISOPTICAL_FLOW_PRESET_FAST (its own finest scale 2: 0.243 px vs MEDIUM 0.229 px, 1/3 the cost)
#: DIS's finest pyramid level (FAST's own: 2, a quarter of the image): at 2 the flow under-estimates the
#: rig's image motion (the best gain on it was 1.15-1.25); at 1 the seed-777 rig scene goes 0.243 -> 0.230 px
#: and the demo scene (7.4 ms LWIR lag) 0.508 -> 0.468 px (benchmarks/rig_error_breakdown.py), for about
#: twice the optical flow's cost (6.8 -> 14.8 ms per set at 320x240, load ~10; MEDIUM's accuracy, half its cost)
MOTION_FINEST_SCALE = 1


def compensate_motion(flow: np.ndarray, rgb: np.ndarray, rgb_previous: np.ndarray, alpha: float,
                      max_width: int = MOTION_MAX_WIDTH, preset: int = MOTION_PRESET,
                      finest_scale: int = MOTION_FINEST_SCALE) -> np.ndarray:
    """Move the flow's targets from the fixed frame's exposure time to the paired RGB frame's; in place.

    The streams are not triggered together, so the paired RGB frame is exposed some ms away from the fixed
    frame and the rig moves meanwhile (docs/results.md: 0.13 px per ms on the synthetic rig). The geometric
    flow puts a fixed pixel where it is in an RGB image exposed WITH the fixed frame; the RGB content moves
    between the paired frame and the one before by F (OpenCV DIS optical flow, mono-modal: ``I_prev(x +
    F(x)) = I(x)``), linearly in time, so at the fixed exposure it sits at ``m + alpha F(m)`` with ``alpha =
    (t_fixed - t_rgb) / (t_prev - t_rgb)``: ``phi = g - alpha F(v + g)`` (F sampled at the target). Exact for
    uniform motion; moving objects are compensated by their own image motion. Wrong only where F is (RGB
    occlusions, textureless areas: DIS interpolates there).
    """
    if rgb.shape != rgb_previous.shape or alpha == 0.0:
        return flow
    grey = [cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) for img in (rgb, rgb_previous)]
    hm, wm = grey[0].shape
    scale = min(1.0, max_width / wm)
    if scale < 1.0:  # the image motion is smooth: a coarser flow, scaled back, is as good and far cheaper
        size = (max(1, round(wm * scale)), max(1, round(hm * scale)))
        grey = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in grey]
    dis = cv2.DISOpticalFlow_create(preset)  # type: ignore[attr-defined]
    dis.setFinestScale(finest_scale)
    motion = dis.calc(grey[0], grey[1], None)
    if scale < 1.0:  # back to RGB pixels (pixel centres: x_full = (x + 0.5) / s - 0.5)
        motion = cv2.resize(motion, (wm, hm), interpolation=cv2.INTER_LINEAR)
        motion[..., 0] *= np.float32(wm / grey[0].shape[1])
        motion[..., 1] *= np.float32(hm / grey[0].shape[0])
    h, w = flow.shape[:2]
    targets = flow.copy()
    targets[..., 0] += np.arange(w, dtype=np.float32)[None, :]
    targets[..., 1] += np.arange(h, dtype=np.float32)[:, None]
    moved = cv2.remap(motion, targets, None,  # type: ignore[call-overload]
                      interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    flow -= np.float32(alpha) * moved
    return flow


#: pyramid levels up to this many pixels take :func:`_normalised_small` (fewer calls; on larger ones
#: numpy's broadcasting over the last axis costs more than the calls it saves)
_SMALL_LEVEL = 4096


def _normalised_small(level: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """:func:`_normalised` for a small level, in four calls (the same values: the same divide per element)."""
    weight = level[..., 2:]
    ratio = level[..., :2] / np.maximum(weight, np.float32(1e-12))
    return np.where(weight > 0, ratio, fallback)


def _normalised(level: np.ndarray, fallback: np.ndarray | None) -> np.ndarray:
    """A pyramid level's (sum, sum, weight) -> ``sum / weight`` where ``weight > 0``; ``fallback`` (None:
    0) elsewhere. One divide per channel (numpy broadcasting over a last axis of 2 is ~5x slower)."""
    weight = level[..., 2]
    out = np.zeros((*weight.shape, 2), np.float32) if fallback is None else fallback
    ratio = np.empty_like(out)
    safe = np.maximum(weight, np.float32(1e-12))
    np.divide(level[..., 0], safe, out=ratio[..., 0])
    np.divide(level[..., 1], safe, out=ratio[..., 1])
    cv2.copyTo(ratio, (weight > 0).view(np.uint8), out)
    return out


class GeometricStage:
    """The rig's flow per pair (module docstring); one instance shared by the pairs (its caches are locked).

    ``log`` receives the one-time messages (size scaling, fallback to the plane model).
    """

    def __init__(self, rig: Rig, plane_distance_m: float = 10.0, log: Callable[[str], None] = print,
                 fill: bool = True, motion: bool = True) -> None:
        if 'depth' not in rig.cameras and 'lwir' not in rig.cameras:
            raise ConfigError('rig file describes neither lwir nor depth: add the fixed cameras to it')
        if not plane_distance_m > 0:
            raise ConfigError(f'plane distance {plane_distance_m} m: must be > 0')
        retain_freed_blocks()  # per-set temporaries reuse the heap instead of page-faulting (nmr.geometry.heap)
        self.rig = rig
        self.plane_distance_m = float(plane_distance_m)
        self.fill = fill
        self.motion = motion
        self._log = log
        self._lock = threading.Lock()
        self._said: set[tuple[object, ...]] = set()
        self._planes: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = {}
        # the rig's poses, composed once (Rig.pose builds the matrix from the rotation vector on every call)
        self._moving_from: dict[str, Pose] = {}
        self._between: dict[tuple[str, str], Pose] = {}
        self._fallback: dict[str, bool] = {}

    def covers(self, pair: str) -> bool:
        """Whether the rig has the fixed camera of `pair` (a rig file may hold only the depth camera, e.g.
        from the RealSense's /tf_static; the other pair is then registered by its network)."""
        return pair.split('_', 1)[1] in self.rig.cameras

    def check_pairs(self, pairs: tuple[str, ...] | list[str]) -> None:
        """ConfigError when the rig lacks the fixed camera of a configured pair."""
        for pair in pairs:
            fixed = pair.split('_', 1)[1]
            if fixed not in self.rig.cameras:
                raise ConfigError(f'rig file has no {fixed} camera but pair {pair} is configured: add cameras.'
                                  f'{fixed} to the rig file (see config/rig.example.yaml) or drop the pair')

    # -- cameras --------------------------------------------------------------------------------------
    def _moving_from_fixed(self, fixed_name: str) -> Pose:
        pose = self._moving_from.get(fixed_name)
        if pose is None:
            pose = self._moving_from.setdefault(fixed_name, self.rig.moving_from_fixed(fixed_name))
        return pose

    def _pose_between(self, dst: str, src: str) -> Pose:
        pose = self._between.get((dst, src))
        if pose is None:
            pose = self._between.setdefault((dst, src), self.rig.between(dst, src))
        return pose

    def _say_once(self, key: tuple[object, ...], text: str) -> None:
        with self._lock:
            if key in self._said:
                return
            self._said.add(key)
        self._log(text)

    def camera(self, name: str, hw: tuple[int, int]) -> CameraModel:
        """The rig's camera ``name`` at image size ``hw`` (resized when the stream's size differs)."""
        cam = self.rig.camera(name)
        h, w = int(hw[0]), int(hw[1])
        if cam.hw == (h, w):
            return cam
        self._say_once(('size', name, h, w), f'rig: {name} images are {w}x{h}, the rig file says {cam.width}x'
                       f'{cam.height}: its intrinsics are scaled to the images\' size')
        return cam.resized(w, h)

    # -- flows ----------------------------------------------------------------------------------------
    def _plane(self, fixed: CameraModel, moving: CameraModel, fixed_name: str,
               distance: float) -> tuple[np.ndarray, np.ndarray]:
        """Cached (flow, valid) of a fronto-parallel plane at ``distance`` metres (read-only arrays).

        Unlike flow_through_depth's, the flow is kept where the plane lands outside the RGB image (only
        ``valid`` says so): it is the reference the holes' parallax is filled against, which must be
        right at every pixel (a hole near the border may see a nearer surface that does land inside).
        """
        key = (fixed, moving, fixed_name, distance)
        with self._lock:
            hit = self._planes.get(key)
        if hit is not None:
            return hit
        pose = self._moving_from_fixed(fixed_name)
        points = cached_rays(fixed).astype(np.float64) * distance  # z = distance along the fixed optical axis
        m = moving.project(points @ pose.R.T + pose.t)
        h, w = fixed.hw
        flow = np.empty((h, w, 2), np.float32)
        flow[..., 0] = m[..., 0] - np.arange(w)[None, :]
        flow[..., 1] = m[..., 1] - np.arange(h)[:, None]
        with np.errstate(invalid='ignore'):
            valid = ((m[..., 0] >= -BORDER_EPS) & (m[..., 0] <= moving.width - 1 + BORDER_EPS)
                     & (m[..., 1] >= -BORDER_EPS) & (m[..., 1] <= moving.height - 1 + BORDER_EPS))
        flow[~np.isfinite(flow)] = 0.0  # behind the moving camera (not for a rig's planes in front)
        flow.setflags(write=False)
        valid.setflags(write=False)
        with self._lock:
            if len(self._planes) > 16:
                self._planes.clear()
            self._planes[key] = (flow, valid)
        return flow, valid

    def flow(self, pair: str, moving_hw: tuple[int, int], fixed_hw: tuple[int, int],
             depth_raw: np.ndarray | None = None, depth_encoding: str = '16UC1',
             motion: tuple[np.ndarray, np.ndarray, float] | None = None) -> GeoFlow:
        """The flow of one set of ``pair``; ``depth_raw`` is the depth frame of the same instant (for
        ``rgb_depth`` the fixed image itself), None when there is none (plane fallback).

        ``motion``: (the paired RGB image, the RGB image before it, alpha = (t_fixed - t_rgb) /
        (t_previous - t_rgb)) to compensate the rig's motion between the fixed exposure and the paired RGB
        frame (``compensate_motion``; rgb_lwir only, and only with ``self.motion``).
        """
        geo = self._flow(pair, moving_hw, fixed_hw, depth_raw, depth_encoding)
        if motion is not None and self.motion and pair == 'rgb_lwir':
            compensate_motion(geo.flow, *motion)
        return geo

    def _flow(self, pair: str, moving_hw: tuple[int, int], fixed_hw: tuple[int, int],
              depth_raw: np.ndarray | None, depth_encoding: str) -> GeoFlow:
        fixed_name = pair.split('_', 1)[1]
        moving = self.camera('rgb', moving_hw)
        fixed = self.camera(fixed_name, fixed_hw)
        if depth_raw is None or 'depth' not in self.rig.cameras:
            self._note_fallback(pair, True, 'no depth camera in the rig file' if 'depth' not in self.rig.cameras
                                else 'no depth frame of the same instant')
            flow, valid = self._plane(fixed, moving, fixed_name, self.plane_distance_m)
            return GeoFlow(flow.copy(), valid.copy(), 'plane')
        self._note_fallback(pair, False, '')
        depth_m = depth_in_metres(depth_raw, depth_encoding)
        pose = self._moving_from_fixed(fixed_name)
        if fixed_name == 'depth':
            if depth_m.shape != fixed.hw:
                raise ValueError(f'depth frame {depth_m.shape} is not the fixed image {fixed.hw}')
            in_fixed = depth_m
        else:
            depth_cam = self.camera('depth', depth_m.shape[:2])
            # inf, not 0, where LWIR sees no depth: "no depth" to match_through_depth as well, one pass fewer
            in_fixed = reproject_depth(depth_cam, fixed, self._pose_between(fixed_name, 'depth'), depth_m, np.inf)
        if not self.fill:
            flow, valid = flow_through_depth(fixed, moving, pose, in_fixed)
            return GeoFlow(flow, valid, 'depth')
        # the holes are filled below, so the flow is taken before flow_through_depth zeroes them (two passes)
        u, v, valid = match_through_depth(fixed, moving, pose, in_fixed)
        xs, ys = pixel_coords(*fixed.hw)
        flow = cv2.merge([np.subtract(u, xs, out=u), np.subtract(v, ys, out=v)])  # NaN or anything at holes
        if not valid.any():
            flow[...] = 0.0  # as flow_through_depth gives
        elif not valid.all():
            far, _ = self._plane(fixed, moving, fixed_name, FAR_M)
            # what depth adds to the flow of infinity, 0 in the holes (as fill_holes needs them: no copy there)
            parallax = np.zeros_like(flow)
            cv2.subtract(flow, far, dst=parallax, mask=valid.view(np.uint8))
            fill_holes(parallax, valid, holes_are_zero=True)  # every hole
            extend_ground(parallax, valid)
            flow = np.add(parallax, far, out=parallax)
        return GeoFlow(flow, valid, 'depth')

    def _note_fallback(self, pair: str, fallback: bool, why: str) -> None:
        with self._lock:
            before = self._fallback.get(pair)
            self._fallback[pair] = fallback
        if before == fallback or (before is None and not fallback):
            return
        if fallback:
            self._log(f'rig: {pair}: {why}: using the plane-at-distance model ({self.plane_distance_m:g} m) until '
                      'depth arrives; parallax of nearer or farther objects is not corrected')
        else:
            self._log(f'rig: {pair}: depth frames arrived: registering through depth again')

