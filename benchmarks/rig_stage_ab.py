"""Two versions of the geometric stage in one process, called alternately: a fair A/B on a loaded machine.

Why: on the shared 2-core development machine wall-clock rows of ``rig_cost.py`` move by +-50 % between
runs, more than a code change's effect. Here the stage of another source tree (``--old-src``, e.g. ``git
archive <commit> src | tar -x -C /tmp/old``) and this tree's are loaded side by side (the ``nmr`` modules
swapped in ``sys.modules``) and called alternately on the same synthetic-rig frames at full size (RGB
640x480, LWIR 640x512, depth 848x480), so both see the same load; the CPU time of the calling thread is
reported (it excludes waiting for a CPU and includes page faults), OpenCV on one thread as in the node's
workers. Both stages share the process: heap settings made by one (nmr.geometry.heap) apply to both.

    PYTHONPATH=src .venv/bin/python benchmarks/rig_stage_ab.py --old-src /tmp/old/src [--calls 30] [--parts]

Also prints the wall-clock medians of the same calls, the ratio old / new of the CPU medians, both pairs'
outputs compared (bitwise, or the largest difference), and with ``--parts`` where each tree's stage spends
its CPU time (medians per call of its parts: the depth conversion, the reprojection into the LWIR camera,
the flow or matches through depth, the hole fill and the ground plane; the rest is glue: the flow's merge
and the plane-at-infinity's subtraction and addition), one tree after the other.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

NEW_SRC = Path(__file__).resolve().parents[1] / 'src'


def load(src: Path) -> dict[str, ModuleType]:
    """Import the stage's modules from ``src`` (with a fresh ``nmr`` package)."""
    for name in [k for k in sys.modules if k == 'nmr' or k.startswith('nmr.')]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        names = ('nmr.geometry.registration', 'nmr.geometry.rig', 'nmr.synth.cameras', 'nmr.synth.render',
                 'nmr.synth.scene')
        return {n.rsplit('.', 1)[1]: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(src))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--old-src', type=Path, required=True, help="the other tree's src folder")
    parser.add_argument('--calls', type=int, default=30)
    parser.add_argument('--parts', action='store_true', help="each tree's stage part by part (CPU ms)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    mods = {'new': load(NEW_SRC), 'old': load(args.old_src)}
    m = mods['new']
    scene = m['scene'].generate_scene(5, 1.0)
    synth = m['cameras'].default_rig(1.0)
    geom = {n: m['render'].render_geometry(scene, getattr(synth, n), 0.5) for n in ('rgb', 'lwir', 'depth')}
    depth_mm = np.round(np.where(geom['depth'].surface, geom['depth'].depth, 0.0) * 1000).astype(np.uint16)
    sizes = {'rgb_lwir': geom['lwir'].depth.shape, 'rgb_depth': depth_mm.shape}
    rgb_hw = geom['rgb'].depth.shape
    stages = {v: mm['registration'].GeometricStage(mm['rig'].Rig.from_synth(mm['cameras'].default_rig(1.0)),
                                                   log=lambda _t: None) for v, mm in mods.items()}
    load0 = os.getloadavg()[0]
    cpu: dict[tuple[str, str], list[float]] = {(v, p): [] for v in stages for p in sizes}
    wall: dict[tuple[str, str], list[float]] = {(v, p): [] for v in stages for p in sizes}
    last = {}
    for _ in range(args.calls + 1):  # the first round warms the caches and is dropped
        for pair, hw in sizes.items():
            for version in ('old', 'new'):
                t0, w0 = time.thread_time(), time.perf_counter()
                last[(version, pair)] = stages[version].flow(pair, rgb_hw, hw, depth_mm, '16UC1')
                cpu[(version, pair)].append((time.thread_time() - t0) * 1e3)
                wall[(version, pair)].append((time.perf_counter() - w0) * 1e3)
    print(f'{args.calls} alternating calls per version and pair, load average {load0:.1f} -> '
          f'{os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs')
    print('| pair | old: min / median CPU ms | new: min / median CPU ms | old / new (median CPU) '
          '| old / new: median wall ms | outputs |')
    print('|---|---|---|---|---|---|')
    for pair in sizes:
        old, new = (cpu[(v, pair)][1:] for v in ('old', 'new'))
        wo, wn = (statistics.median(wall[(v, pair)][1:]) for v in ('old', 'new'))
        print(f'| {pair} | {min(old):.1f} / {statistics.median(old):.1f} | {min(new):.1f} / '
              f'{statistics.median(new):.1f} | {statistics.median(old) / statistics.median(new):.2f}x '
              f'| {wo:.1f} / {wn:.1f} | {same(last[("old", pair)], last[("new", pair)])} |')
    if args.parts:
        for version in ('old', 'new'):
            print(f'{version}:')
            parts(mods[version]['registration'], stages[version], sizes, rgb_hw, depth_mm, args.calls)


def same(a: object, b: object) -> str:
    """How two GeoFlows compare: bitwise, or the valid masks' and the flows' differences."""
    fa, fb, va, vb = a.flow, b.flow, a.valid, b.valid  # type: ignore[attr-defined]
    if np.array_equal(va, vb) and np.array_equal(fa, fb):
        return 'bitwise equal'
    diff = np.abs(fa - fb)
    return (f'valid differs at {int(np.count_nonzero(va != vb))} px, flow by up to '
            f'{float(diff[va & vb].max(initial=0.0)):.2g} px (valid) / {float(diff.max()):.2g} px')


def parts(registration: ModuleType, stage: object, sizes: dict[str, tuple[int, int]], rgb_hw: tuple[int, int],
          depth_mm: np.ndarray, calls: int) -> None:
    """CPU ms per call of the stage's parts (the functions it calls, wrapped in its module)."""
    names = ('depth_in_metres', 'reproject_depth', 'flow_through_depth', 'match_through_depth', 'fill_holes',
             'extend_ground')
    times: dict[str, list[float]] = {}
    originals = {n: getattr(registration, n) for n in names if hasattr(registration, n)}

    def wrap(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def timed(*a: object, **k: object) -> object:
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                times.setdefault(name, []).append((time.thread_time() - t0) * 1e3)
        return timed

    for n, fn in originals.items():
        setattr(registration, n, wrap(n, fn))
    try:
        for pair, hw in sizes.items():
            times.clear()
            total = []
            for _ in range(calls):
                t0 = time.thread_time()
                stage.flow(pair, rgb_hw, hw, depth_mm, '16UC1')  # type: ignore[attr-defined]
                total.append((time.thread_time() - t0) * 1e3)
            row = ', '.join(f'{n} {statistics.median(v):.2f}' for n, v in times.items())
            print(f'{pair}: whole stage {statistics.median(total):.2f} CPU ms per call = {row} (+ glue)')
    finally:
        for n, fn in originals.items():
            setattr(registration, n, fn)


if __name__ == '__main__':
    main()
