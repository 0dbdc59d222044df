"""Training pairs for the learned residual on top of registration through the rig (issue 20, deliverable 4).

Why: with a rig file the node pre-warps the moving image by the geometric flow ``g`` (nmr.geometry.
registration) and the network R_Phi only predicts what geometry leaves, composed as ``phi(v) = r(v) + g(v +
r(v))`` (nmr.flow.compose). A residual model must therefore be trained on exactly that input (the moving
image pre-warped by ``g``, on the fixed grid) with exactly that target: the ``r`` for which the composition
reproduces the exact ground truth ``f`` of the synthetic rig. These pairs are written as an ordinary manifest
with a ``flow`` column, so ``nmr train --manifest ... --set loss.objective=supervised`` trains on them as
they are (pairs that carry their own ground truth get no synthetic misalignment, nmr.training.data).

The pre-warp is ``nmr evaluate --rig``'s (nmr.evaluation.cli._RigRegistrar): ``GeometricStage.flow`` with the
row's depth frame (the fixed image itself for rgb_depth), no motion compensation (a manifest row has no
previous RGB frame), ``nmr.flow.warp`` (bilinear, zeros outside).

The residual's ground truth solves ``r(v) + g(v + r(v)) = f(v)`` by the fixed-point iteration ``r <- f - g(v +
r)`` (``g`` sampled bilinearly with edge values, as ``compose`` does; it contracts wherever ``g`` varies by
less than a pixel per pixel, which a rig's flow does except at depth edges). A pixel is valid where ``f`` is,
the iteration converged there (``|compose(r, g) - f| <= 0.01 px``) and ``v + r`` samples the pre-warped image
inside the part that came from inside the moving image. Depth holes and disocclusions of the geometry are
deliberately NOT excluded: there the filled ``g`` is wrong and the residual has the most to learn.

``jitter`` (calibration error): the geometric flow of a randomly perturbed rig (rotation, translation, focal
length, principal point of the fixed camera's pose and intrinsics) instead of the true one, so that the model
also learns to correct a slightly wrong rig file, the case of a rig estimated by ``nmr calibrate``.

``aligned`` rows (family ``aligned``, no ``flow``): the moving image warped by the exact truth (by ``g`` where
the truth is invalid), i.e. a pre-aligned pair that looks like a pre-warped one; the trainer draws a small
cue-free misalignment for it (``augment.enabled=true``, nmr.training.families), so the model also sees
residuals that no recording can teach it to memorise, and learns to answer ~0 where there is none.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from nmr import atomic
from nmr import flow as nmr_flow
from nmr.data.pairs import read_manifest
from nmr.data.types import FramePair
from nmr.domain import FIXED_KIND_PAIR
from nmr.errors import ConfigError
from nmr.geometry.registration import GeometricStage
from nmr.geometry.rig import Rig

#: the residual's ground truth is trusted where the composition reproduces the truth this well (px); cv2.remap
#: (compose's sampler) interpolates with 1/32-pixel weights, which alone leaves up to ~0.007 px on smooth flows
SOLVE_TOL_PX = 0.01
SOLVE_ITERATIONS = 40
RESIDUAL_COLUMNS = ('name', 'moving', 'fixed', 'flow', 'valid', 'fixed_kind', 'family')


@dataclass(frozen=True)
class Jitter:
    """Standard deviations of a rig perturbation (calibration error): the fixed camera's pose and intrinsics."""

    rotation_deg: float = 0.15
    translation_m: float = 0.004
    focal: float = 0.004  # relative
    principal_px: float = 0.5  # at the rig file's size

    def apply(self, rig: Rig, fixed_name: str, rng: np.random.Generator) -> Rig:
        """``rig`` with the fixed camera ``fixed_name`` (and, for lwir, nothing else) perturbed."""
        cam = rig.rig_camera(fixed_name)
        m = cam.model
        f = 1.0 + self.focal * float(rng.standard_normal())
        model = replace(m, fx=m.fx * f, fy=m.fy * f,
                        cx=m.cx + self.principal_px * float(rng.standard_normal()),
                        cy=m.cy + self.principal_px * float(rng.standard_normal()))
        rotation = tuple(float(a) + np.deg2rad(self.rotation_deg) * float(b)
                         for a, b in zip(cam.rotation, rng.standard_normal(3)))
        translation = tuple(float(a) + self.translation_m * float(b)
                            for a, b in zip(cam.translation, rng.standard_normal(3)))
        cameras = dict(rig.cameras)
        cameras[fixed_name] = replace(cam, model=model, rotation=rotation, translation=translation)  # type: ignore[arg-type]
        return replace(rig, cameras=cameras)


def solve_residual(truth: np.ndarray, prior: np.ndarray, iterations: int = SOLVE_ITERATIONS,
                   tol: float = SOLVE_TOL_PX) -> tuple[np.ndarray, np.ndarray]:
    """``r`` with ``r(v) + prior(v + r(v)) = truth(v)`` (nmr.flow.compose's rule) and where it converged.

    ``truth`` may hold NaN (invalid pixels): they stay NaN in ``r`` and unconverged. Returns ``(r HxWx2
    float32, converged HxW bool)``.
    """
    finite = np.isfinite(truth).all(axis=2)
    target = np.where(finite[..., None], truth, np.float32(0.0)).astype(np.float32)
    ident = nmr_flow.identity_positions(target)
    prior = np.ascontiguousarray(prior, dtype=np.float32)
    r = target - prior
    for _ in range(iterations):
        sampled = cv2.remap(prior, ident + r, None, interpolation=cv2.INTER_LINEAR,  # type: ignore[call-overload]
                            borderMode=cv2.BORDER_REPLICATE)
        r = target - sampled
    err = np.linalg.norm(nmr_flow.compose(r, prior) - target, axis=2)
    converged = finite & (err <= tol)
    r[~finite] = np.nan
    return r.astype(np.float32), converged


def geometric_flow(stage: GeometricStage, pair: str, fp: FramePair) -> tuple[np.ndarray, np.ndarray]:
    """(g, its valid mask) of one manifest row, as ``nmr evaluate --rig`` computes it."""
    depth = fp.fixed if pair == 'rgb_depth' else fp.depth
    encoding = fp.fixed_encoding if pair == 'rgb_depth' else '32FC1'
    geo = stage.flow(pair, fp.moving.shape[:2], fp.fixed.shape[:2], depth, encoding)
    return geo.flow, geo.valid


@dataclass(frozen=True)
class ResidualPair:
    """One training pair: the pre-warped moving image (fixed grid), the residual truth and its mask."""

    prewarped: np.ndarray  # HfxWfx3 uint8
    residual: np.ndarray  # HfxWfx2 float32, NaN where the truth is invalid
    valid: np.ndarray  # HfxWf bool
    prior: np.ndarray  # the geometric flow it was pre-warped by


def residual_pair(fp: FramePair, prior: np.ndarray) -> ResidualPair:
    """Pre-warp ``fp.moving`` by ``prior`` and solve the residual of ``fp.gt_flow`` (see the module)."""
    if fp.gt_flow is None:
        raise ConfigError(f'pair {fp.name} has no ground-truth flow: residual pairs need a manifest with a flow '
                          'column (nmr synth --export-pairs)')
    prewarped, inside = nmr_flow.warp(fp.moving, prior)
    r, converged = solve_residual(fp.gt_flow, prior)
    valid = converged.copy()
    if fp.valid is not None:
        valid &= np.asarray(fp.valid).astype(bool)
    positions = nmr_flow.identity_positions(r) + np.nan_to_num(r, nan=-1e6)
    valid &= nmr_flow.sample_mask(inside, positions)  # the residual samples real moving content
    return ResidualPair(prewarped, r, valid, prior)


def aligned_image(fp: FramePair, prior: np.ndarray) -> np.ndarray:
    """``fp.moving`` on the fixed grid by the exact truth (``prior`` where the truth is invalid or missing)."""
    truth = fp.gt_flow if fp.gt_flow is not None else prior
    ok = np.isfinite(truth).all(axis=2)
    if fp.valid is not None:
        ok &= np.asarray(fp.valid).astype(bool)
    return nmr_flow.warp(fp.moving, np.where(ok[..., None], truth, prior).astype(np.float32))[0]


def build_manifest(sources: Sequence[tuple[str, Path, Path | None]], out: Path, pair: str, jitter: int = 0,
                   jitter_cfg: Jitter | None = None, seed: int = 0, max_rows: int = 0, aligned: bool = False,
                   log: Callable[[str], None] = print) -> Path:
    """Write ``out/manifest.csv`` (+ images, flows, masks) of residual pairs from exported synthetic pairs.

    ``sources``: (tag, export root of ``nmr synth --export-pairs DIR``, rig file or None = ``DIR/rig_true.
    yaml``); the tag prefixes the row names (the trainer splits by name: rows of different recordings must not
    share one). ``jitter``: extra rows per pair with a perturbed rig (family ``rig_jitter``); the plain rows
    have family ``rig``; ``aligned``: one more row per pair, pre-aligned, without ``flow`` (module docstring).
    ``max_rows``: at most that many pairs per source, evenly spaced in time (0 = all).
    """
    if pair not in FIXED_KIND_PAIR.values():
        raise ConfigError(f'unknown pair {pair!r}: expected one of {", ".join(FIXED_KIND_PAIR.values())}')
    fixed_kind = pair.split('_', 1)[1]
    jcfg = jitter_cfg or Jitter()
    rng = np.random.default_rng(seed)
    for sub in ('moving', 'fixed', 'flow', 'valid'):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    mags: list[float] = []
    for tag, root, rig_path in sources:
        manifest = root / pair / 'manifest.csv'
        rig_file = rig_path or root / 'rig_true.yaml'
        if not manifest.is_file():
            raise ConfigError(f'{manifest} does not exist: give the folder written by nmr synth --export-pairs')
        rig = Rig.load(rig_file)
        stages = [('rig', GeometricStage(rig, log=lambda _t: None))]
        data = read_manifest(manifest, fixed_kind=fixed_kind)
        n = len(data) if max_rows <= 0 else min(max_rows, len(data))
        for i in sorted({round(float(x)) for x in np.linspace(0, len(data) - 1, n)}) if n else []:
            fp = data[i]
            variants = list(stages) + [('rig_jitter', GeometricStage(jcfg.apply(rig, fixed_kind, rng),
                                                                     log=lambda _t: None)) for _ in range(jitter)]
            for k, (family, stage) in enumerate(variants):
                prior, _ = geometric_flow(stage, pair, fp)
                rp = residual_pair(fp, prior)
                name = f'{tag}_{fp.name}' + (f'_j{k}' if k else '')
                _write_row(out, name, fp, rp)
                rows.append([name, f'moving/{name}.png', f'fixed/{name}.png', f'flow/{name}.npy',
                             f'valid/{name}.png', fixed_kind, family])
                if rp.valid.any():
                    mags.append(float(np.linalg.norm(rp.residual[rp.valid], axis=1).mean()))
                if aligned and k == 0:
                    name = f'{tag}_{fp.name}_a'
                    atomic.write_image(out / f'moving/{name}.png', cv2.cvtColor(aligned_image(fp, prior),
                                                                                cv2.COLOR_RGB2BGR))
                    atomic.write_image(out / f'fixed/{name}.png', fp.fixed)
                    rows.append([name, f'moving/{name}.png', f'fixed/{name}.png', '', '', fixed_kind, 'aligned'])
        log(f'{tag}: {n} pairs of {manifest} ({1 + jitter + int(aligned)} rows each)')
    path = out / 'manifest.csv'
    with atomic.atomic_open(path, 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(RESIDUAL_COLUMNS)
        writer.writerows(rows)
    log(f'{len(rows)} residual pairs -> {path} (mean |residual| {np.mean(mags) if mags else float("nan"):.3f} px '
        'on valid pixels)')
    return path


def _write_row(out: Path, name: str, fp: FramePair, rp: ResidualPair) -> None:
    atomic.write_image(out / f'moving/{name}.png', cv2.cvtColor(rp.prewarped, cv2.COLOR_RGB2BGR))
    atomic.write_image(out / f'fixed/{name}.png', fp.fixed)
    atomic.save_npy(out / f'flow/{name}.npy', np.nan_to_num(rp.residual, nan=0.0).astype(np.float32))
    atomic.write_image(out / f'valid/{name}.png', rp.valid.astype(np.uint8) * 255)
