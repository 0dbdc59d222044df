"""The calibration stages: coarse search, then coarse-to-fine Adam on the pooled objective, then the spread.

Stages (each saved atomically when done, so an interrupted run resumes after the last finished stage):

1. ``rgb_depth``: the depth camera's pose ``T_rgb_depth`` (6 parameters), when ``/tf_static`` does not
   give it: the near sides of the depth discontinuities matched to RGB edges, pooled over the moments
   (nmr.calibration.edges: a rotation grid, then point-to-line ICP). The NGF of RGB vs inverse depth,
   which this stage used to maximise, ranks wrong poses above the true one (docs/results.md); it is
   still the fallback when fewer than 3 moments show depth edges, and what ``--refine-extrinsics``
   refines a given pose with.
2. ``lwir``: the LWIR pose ``T_rgb_lwir`` through the depth (RGB vs depth is fixed now), its focal scale
   (``refine_intrinsics``) and its time offset. The time offset is first searched on a grid of
   ``TIME_GRID_S`` (each candidate gets a short pose fit at the coarsest level: the offset and a shift
   along the motion look alike, see docs), then refined continuously with the rest.
   Without depth: ``lwir_plane``, the rotation only, every LWIR pixel on a plane at 20 m.
3. ``blocks``: the moments split into three consecutive blocks, each refined alone from the result at
   the two finest levels: the parameters' spread across blocks is the reported uncertainty.

After each level, moments whose score is an outlier (below median - 3 MAD: a moving object filling the
view, a bad depth frame) are dropped for the following levels.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmr.atomic import write_text
from nmr.calibration import edges
from nmr.calibration.bagdata import Moment
from nmr.calibration.objective import (
    Cameras,
    LevelMoment,
    freeze_visibility,
    moment_scores,
    param_unit,
    params_from_pose,
    pose_of,
    prepare,
    thaw_visibility,
)
from nmr.geometry.pose import Pose, matrix_to_rotvec, rotvec_to_matrix

LEVELS = (8.0, 4.0, 2.0, 1.0)
ITERS = (40, 40, 60, 80)
LR = (0.3, 0.15, 0.07, 0.03)
ROT_GRID_DEG = np.arange(-5.0, 5.01, 0.5)
TIME_GRID_S = np.arange(-0.05, 0.0501, 0.005)
BLOCKS = 3
BLOCK_ITERS = 25
MAX_POINTS = 60_000  # per moment and level: the grid step grows for bigger depth images
SCORE_SCALE = 100.0  # the score moves ~0.01 per parameter unit: scaled, the gradients are O(1) for L-BFGS
#: the translation prior's weight: a deviation of ``k`` sigma from the given translation costs as much as a
#: drop of ``PRIOR_SCORE_PER_SIGMA2 * k^2 / 2`` of the mean NGF score. Why this size: the score's translation
#: signal is weak (truth vs the zero-baseline fit 0.003 apart at the finest level on the development rig,
#: 4 cm apart), so the prior should dominate beyond a sigma or two but leave the data room within one
PRIOR_SCORE_PER_SIGMA2 = 0.002


class Progress:
    """One-line progress bar with ETA on stderr."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = max(total, 1), quiet
        self.done, self.start, self.last, self.label = 0, time.monotonic(), 0.0, ''

    def step(self, n: int = 1, label: str | None = None) -> None:
        self.done += n
        if label is not None:
            self.label = label
        now = time.monotonic()
        interval = 0.5 if sys.stderr.isatty() else 30.0  # a log file gets a line now and then
        if self.quiet or (now - self.last < interval and self.done < self.total):
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        eta = (now - self.start) * (1 - frac) / frac if frac > 0 else 0.0
        end = '' if sys.stderr.isatty() else '\n'
        sys.stderr.write(f'\r[{"#" * int(30 * frac):<30}] {100 * frac:3.0f} % {self.label:<28} ETA {eta:5.0f} s{end}')
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write('\n')


@dataclass
class Options:
    refine_intrinsics: bool = False
    time_offset: bool = True
    seed: int = 0
    quiet: bool = False
    #: cameras whose pose is given (``/tf_static``) and kept as it is; with ``refine_extrinsics`` it is the
    #: start of a fit at the two finest levels instead (no search: the given pose is close)
    given_poses: set[str] = field(default_factory=set)
    refine_extrinsics: bool = False
    #: a known LWIR translation (metres, RGB optical frame; e.g. from the CAD drawing or a tape measure) and
    #: its standard deviation: the start of the fit and a Gaussian prior on it (:meth:`Solver.prior`)
    lwir_translation: tuple[float, float, float] | None = None
    lwir_translation_sigma: float = 0.01

    def pose_fixed(self, cam: str) -> bool:
        return cam in self.given_poses and not self.refine_extrinsics

    def pose_given(self, cam: str) -> bool:
        return cam in self.given_poses


@dataclass
class Problem:
    moments: list[Moment]
    cams: Cameras
    options: Options
    kept: list[int] = field(default_factory=list)  # moment indices still used

    @property
    def has_depth(self) -> bool:
        return self.cams.depth is not None

    @property
    def has_lwir(self) -> bool:
        return self.cams.lwir is not None


def write_json_atomic(path: Path, doc: Any) -> None:
    """State and report files: written to a temporary name, then renamed (nmr.atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=1))


def initial_params() -> dict[str, list[float]]:
    return {'depth_rot': [0.0] * 3, 'depth_trans': [0.0] * 3, 'lwir_rot': [0.0] * 3, 'lwir_trans': [0.0] * 3,
            'lwir_logf': [0.0], 'lwir_dt': [0.0]}


def _tensors(params: dict[str, list[float]], free: Sequence[str]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32, requires_grad=k in free) for k, v in params.items()}


def _lists(p: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v.detach().reshape(-1)] for k, v in p.items()}


#: plausible bounds (in parameter units) beyond which a quadratic barrier pulls back: rotations 11 deg,
#: translations 40 cm, focal 20 %, time offset 100 ms (a line search may otherwise leap to nonsense)
BOUNDS = {'rot': 20.0, 'trans': 40.0, 'logf': 20.0, 'dt': 10.0}


def _barrier(p: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for k, v in p.items():
        if v.requires_grad:
            over = torch.relu(v.abs() - BOUNDS[k.split('_', 1)[1]])
            total = total + 100.0 * (over * over).sum()
    return total


class Solver:
    """Runs the stages on a :class:`Problem`; ``progress`` counts objective evaluations."""

    def __init__(self, problem: Problem, progress: Progress, log: Callable[[str], None]) -> None:
        self.pb = problem
        self.progress = progress
        self.log = log
        self._levels: dict[tuple[float, tuple[int, ...]], list[LevelMoment]] = {}
        self._edges: list[Any] | None = None
        self._edges_failed = False

    # ------------------------------------------------------------------ plumbing
    def level(self, lev: float, which: Sequence[int] | None = None) -> list[LevelMoment]:
        ids = tuple(self.pb.kept if which is None else which)
        key = (lev, ids)
        if key not in self._levels:
            self._levels = {k: v for k, v in self._levels.items() if k[0] == lev}  # keep memory bounded
            rng = np.random.default_rng(self.pb.options.seed)
            cache = {k[1][i]: lm for k, v in self._levels.items() for i, lm in enumerate(v)}
            self._levels[key] = [cache.get(i) or prepare(self.pb.moments[i], self.pb.cams, lev, MAX_POINTS, rng)
                                 for i in ids]
        return self._levels[key]

    def scores(self, params: dict[str, list[float]], pairs: Sequence[str], lev: float,
               which: Sequence[int] | None = None) -> np.ndarray:
        with torch.no_grad():
            s = moment_scores(self.level(lev, which), self.pb.cams, _tensors(params, ()), pairs)
        return s.numpy()

    def adam(self, params: dict[str, list[float]], free: Sequence[str], pairs: Sequence[str], lev: float,
             iters: int, lr: float, which: Sequence[int] | None = None, label: str = '') -> dict[str, list[float]]:
        """Maximise the mean moment score over ``free`` with L-BFGS (strong Wolfe line search).

        Why not Adam: Adam normalises each parameter's gradient, so a weakly determined parameter (a
        translation seen mostly through far scenes) random-walks at full step size; L-BFGS steps by the
        curvature and only ever accepts a step that improves the score. ``lr`` is kept for the interface
        (the line search chooses the steps). The z-buffer visibility is fixed at ``params`` for the run
        (objective.freeze_visibility)."""
        p = _tensors(params, free)
        opt = torch.optim.LBFGS([p[k] for k in free], lr=1.0, max_iter=iters, max_eval=iters + iters // 2,
                                history_size=10, line_search_fn='strong_wolfe', tolerance_grad=1e-9,
                                tolerance_change=1e-12)
        lms = self.level(lev, which)
        freeze_visibility(lms, self.pb.cams, p)  # a smooth objective within the run (see there)
        calls = [0]

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -SCORE_SCALE * moment_scores(lms, self.pb.cams, p, pairs).mean() + _barrier(p) + self.prior(p)
            loss.backward()
            calls[0] += 1
            if calls[0] <= iters:
                self.progress.step(1, label)
            return loss

        try:
            opt.step(closure)
        finally:
            thaw_visibility(lms)
        if calls[0] < iters:
            self.progress.step(iters - calls[0], label)
        return _lists(p)

    def prior(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """The Gaussian prior on the LWIR translation (``Options.lwir_translation``), in loss units:
        ``SCORE_SCALE * PRIOR_SCORE_PER_SIGMA2 * |t - t0|^2 / sigma^2 / 2``; 0 when none is given or the
        translation is not free."""
        opt = self.pb.options
        t = p.get('lwir_trans')
        if opt.lwir_translation is None or t is None or not t.requires_grad:
            return torch.zeros(())
        d = (t * param_unit('lwir_trans') - torch.tensor(opt.lwir_translation, dtype=t.dtype))
        d = d / opt.lwir_translation_sigma
        return 0.5 * SCORE_SCALE * PRIOR_SCORE_PER_SIGMA2 * (d * d).sum()

    def reject_outliers(self, params: dict[str, list[float]], pairs: Sequence[str], lev: float) -> None:
        s = self.scores(params, pairs, lev)
        med = float(np.median(s))
        mad = 1.4826 * float(np.median(np.abs(s - med)))
        keep = [i for i, v in zip(self.pb.kept, s) if v >= med - 3.0 * mad]
        if len(keep) >= max(3, len(self.pb.kept) // 2) and len(keep) < len(self.pb.kept):
            self.log(f'  dropped {len(self.pb.kept) - len(keep)} outlier moment(s) (score below median - 3 MAD)')
            self.pb.kept = keep

    def rotation_search(self, params: dict[str, list[float]], cam: str, pairs: Sequence[str],
                        ) -> dict[str, list[float]]:
        """Grid over small rotations about the RGB x and y axes (pan/tilt) at the coarsest level."""
        grid = ROT_GRID_DEG
        R0 = rotvec_to_matrix(np.asarray(params[f'{cam}_rot']) * 0.01)
        best, best_s = params, -np.inf
        for ax in grid:
            for ay in grid:
                trial = dict(params)
                dR = rotvec_to_matrix(np.radians([ax, ay, 0.0]))
                trial[f'{cam}_rot'] = list(matrix_to_rotvec(dR @ R0) / 0.01)
                s = float(self.scores(trial, pairs, LEVELS[0]).mean())
                self.progress.step(1, f'{cam}: rotation search')
                if s > best_s:
                    best, best_s = trial, s
        return best

    def coarse_to_fine(self, params: dict[str, list[float]], free: Sequence[str], pairs: Sequence[str],
                       label: str, start: int = 0) -> dict[str, list[float]]:
        for li in range(start, len(LEVELS)):
            params = self.adam(params, free, pairs, LEVELS[li], ITERS[li], LR[li], label=f'{label} level {li + 1}')
            self.reject_outliers(params, pairs, LEVELS[li])
        return params

    # ------------------------------------------------------------------ stages
    def edge_moments(self) -> list[Any]:
        """The moments prepared for the edge measure (nmr.calibration.edges), once."""
        if self._edges is None:
            rgb, depth = self.pb.cams.rgb, self.pb.cams.depth
            assert depth is not None
            out = []
            for m in self.pb.moments:
                assert m.depth is not None
                alpha = (m.t - m.rgb_t[0]) / max(m.rgb_t[1] - m.rgb_t[0], 1e-6)
                out.append(edges.prepare(m.depth, m.rgb[0], m.rgb_flow, alpha, depth, rgb))
                self.progress.step(1, 'rgb-depth: edges')
            self._edges = out
        return self._edges

    def depth_by_edges(self) -> bool:
        """Whether the depth pose is estimated by the edge measure (not given by /tf_static)."""
        return self.pb.has_depth and not self.pb.options.pose_given('depth') and not self._edges_failed

    def ngf_depth_blocks(self) -> bool:
        """Whether the blocks refit the depth pose by NGF (a given pose refined, or the edge fit failed)."""
        opt = self.pb.options
        if not self.pb.has_depth or opt.pose_fixed('depth'):
            return False
        return opt.pose_given('depth') or self._edges_failed

    def work_units(self) -> dict[str, int]:
        fit = sum(ITERS)
        opt = self.pb.options
        search = len(ROT_GRID_DEG) ** 2
        units = {'rgb_depth': 0}
        if self.pb.has_depth and not opt.pose_fixed('depth'):
            units['rgb_depth'] = sum(ITERS[2:]) if opt.pose_given('depth') else len(self.pb.moments) + edges.FIT_STEPS
        if self.pb.has_lwir:
            units['lwir'] = (sum(ITERS[2:]) if opt.pose_given('lwir') else search + fit) if self.lwir_free() else 0
            if 'lwir_dt' in self.lwir_free():
                units['lwir'] += len(TIME_GRID_S)
        fits = int(self.ngf_depth_blocks())
        fits += int(self.pb.has_lwir and bool(self.lwir_free()))
        units['blocks'] = BLOCKS * BLOCK_ITERS * 2 * fits + (BLOCKS * edges.FIT_STEPS if self.depth_by_edges() else 0)
        return units

    def stage_rgb_depth(self, params: dict[str, list[float]]) -> dict[str, list[float]]:
        pairs = ['rgb_depth']
        free = ['depth_rot', 'depth_trans']
        if self.pb.options.pose_fixed('depth'):
            return params
        if self.pb.options.pose_given('depth'):  # --refine-extrinsics: from the given pose, fine levels only
            return self.coarse_to_fine(params, free, pairs, 'rgb-depth (refine)', start=2)
        ems = self.edge_moments()
        try:
            pose, kept = edges.fit_depth_pose(ems, self.pb.cams.rgb,
                                              step=lambda: self.progress.step(1, 'rgb-depth: edges'))
        except ValueError as err:
            self._edges_failed = True
            self.log(f'  rgb-depth: {err}; falling back to the NGF of RGB vs inverse depth (less reliable)')
            return self.stage_rgb_depth_ngf(params)
        tau = edges.TAUS[-1] * self.pb.cams.rgb.width / 640.0
        before = edges.chamfer_score([ems[i] for i in kept], self.pb.cams.rgb, Pose.identity(), tau)
        after = edges.chamfer_score([ems[i] for i in kept], self.pb.cams.rgb, pose, tau)
        self.log(f'  rgb-depth from depth edges on {len(kept)} of {len(ems)} moments: mean distance to the '
                 f'nearest RGB edge {before:.2f} -> {after:.2f} px (truncated at {tau:.1f} px)')
        out = dict(params)
        out['depth_rot'], out['depth_trans'] = params_from_pose(pose.rotvec().tolist(), pose.t.tolist())
        return out

    def stage_rgb_depth_ngf(self, params: dict[str, list[float]]) -> dict[str, list[float]]:
        """The depth pose by the NGF of RGB vs inverse depth: a rotation search, then coarse to fine."""
        params = self.rotation_search(params, 'depth', ['rgb_depth'])
        return self.coarse_to_fine(params, ['depth_rot', 'depth_trans'], ['rgb_depth'], 'rgb-depth')

    def lwir_free(self) -> list[str]:
        if self.pb.options.pose_fixed('lwir'):
            free = []
            if self.pb.has_depth and self.pb.options.refine_intrinsics:
                free.append('lwir_logf')
            if self.pb.has_depth and self.pb.options.time_offset:
                free.append('lwir_dt')
            return free
        if not self.pb.has_depth:
            return ['lwir_rot']
        free = ['lwir_rot', 'lwir_trans']
        if self.pb.options.refine_intrinsics:
            free.append('lwir_logf')
        if self.pb.options.time_offset:
            free.append('lwir_dt')
        return free

    def lwir_pairs(self) -> list[str]:
        # LWIR vs inverse depth is left out: thermal edges follow depth edges too loosely (it biased the pose);
        # with the exact depth pose from /tf_static it helped a little on three development rigs but made
        # the LWIR rotation worse on two of the three held-out ones (docs/results.md)
        return ['lwir_rgb'] if self.pb.has_depth else ['rgb_lwir_plane']

    def stage_lwir(self, params: dict[str, list[float]]) -> dict[str, list[float]]:
        pairs = self.lwir_pairs()
        free = self.lwir_free()
        if not free:
            return params
        given = self.pb.options.pose_given('lwir')
        if not given:
            params = self.rotation_search(params, 'lwir', pairs)
        pose = [k for k in free if k != 'lwir_dt']
        if 'lwir_dt' not in free:
            return self.coarse_to_fine(params, free, pairs, 'lwir', start=2 if given else 0)
        # the pose at the two coarse levels with the offset at 0 (a few frames' worth of motion is within
        # their blur), then the offset on a grid at the next level, then everything together; a given pose
        # (tf_static) needs no coarse levels
        for li in range(0 if pose and not given else 2, 2):
            params = self.adam(params, pose, pairs, LEVELS[li], ITERS[li], LR[li], label=f'lwir level {li + 1}')
            self.reject_outliers(params, pairs, LEVELS[li])
        best, best_s = params, -np.inf
        for dt in TIME_GRID_S:
            trial = dict(params, lwir_dt=[float(dt / 0.01)])
            s = float(self.scores(trial, pairs, LEVELS[2]).mean())
            self.progress.step(1, 'lwir: time offset search')
            if s > best_s:
                best, best_s = trial, s
        params = best
        self.log(f'  time offset search: best {params["lwir_dt"][0] * 10:+.0f} ms on the coarse grid')
        return self.coarse_to_fine(params, free, pairs, 'lwir', start=2)

    def stage_blocks(self, params: dict[str, list[float]]) -> list[dict[str, list[float]]]:
        kept = list(self.pb.kept)
        out = []
        for b in range(BLOCKS):
            ids = kept[b * len(kept) // BLOCKS:(b + 1) * len(kept) // BLOCKS]
            p = dict(params)
            if self.depth_by_edges():  # the edge measure on the block's moments, from the result
                p['depth_rot'], p['depth_trans'] = self.edge_block(params, ids)
            for lev in LEVELS[-2:]:
                if self.ngf_depth_blocks():
                    p = self.adam(p, ['depth_rot', 'depth_trans'], ['rgb_depth'], lev, BLOCK_ITERS, LR[-1], ids,
                                  f'block {b + 1}/{BLOCKS}')
                if self.pb.has_lwir and self.lwir_free():
                    p = self.adam(p, self.lwir_free(), self.lwir_pairs(), lev, BLOCK_ITERS, LR[-1], ids,
                                  f'block {b + 1}/{BLOCKS}')
            out.append(p)
        return out

    def edge_block(self, params: dict[str, list[float]], ids: Sequence[int]) -> tuple[list[float], list[float]]:
        """The depth pose refitted by the edge measure on the moments ``ids`` from ``params``' pose."""
        with torch.no_grad():
            R, t = pose_of(_tensors(params, ()), 'depth')
        start = Pose(R.double().numpy(), t.double().numpy())
        ems = self.edge_moments()
        try:
            pose, _ = edges.fit_depth_pose([ems[i] for i in ids], self.pb.cams.rgb, start, search=False,
                                           step=lambda: self.progress.step(1, 'blocks: depth edges'))
        except ValueError:  # too few moments with edges in this block: no spread from it
            return params['depth_rot'], params['depth_trans']
        return params_from_pose(pose.rotvec().tolist(), pose.t.tolist())

    def pair_scores(self, params: dict[str, list[float]]) -> dict[str, float]:
        """Mean NGF score per compared pair at the finest level over the kept moments."""
        pairs = (['rgb_depth'] if self.pb.has_depth else []) + (self.lwir_pairs() if self.pb.has_lwir else [])
        return {k: float(self.scores(params, [k], LEVELS[-1]).mean()) for k in pairs}
