"""Two versions of the geometric stage in one process, called alternately: a fair A/B on a loaded machine.

Why: on the shared 2-core development machine wall-clock rows of ``rig_cost.py`` move by +-50 % between
runs, more than a code change's effect. Here the stage of another source tree (``--old-src``, e.g. ``git
archive <commit> src | tar -x -C /tmp/old``) and this tree's are loaded side by side (the ``nmr`` modules
swapped in ``sys.modules``) and called alternately on the same synthetic-rig frames at full size (RGB
640x480, LWIR 640x512, depth 848x480), so both see the same load; the CPU time of the calling thread is
reported (it excludes waiting for a CPU and includes page faults), OpenCV on one thread as in the node's
workers. Both stages share the process: heap settings made by one (nmr.geometry.heap) apply to both.

    PYTHONPATH=src .venv/bin/python benchmarks/rig_stage_ab.py --old-src /tmp/old/src [--calls 30]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
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
    times: dict[tuple[str, str], list[float]] = {(v, p): [] for v in stages for p in sizes}
    for _ in range(args.calls + 1):  # the first round warms the caches and is dropped
        for pair, hw in sizes.items():
            for version in ('old', 'new'):
                t0 = time.thread_time()
                stages[version].flow(pair, rgb_hw, hw, depth_mm, '16UC1')
                times[(version, pair)].append((time.thread_time() - t0) * 1e3)
    print(f'{args.calls} alternating calls per version and pair, load average {os.getloadavg()[0]:.1f}')
    print('| pair | old: min / median CPU ms | new: min / median CPU ms |')
    print('|---|---|---|')
    for pair in sizes:
        old, new = (times[(v, pair)][1:] for v in ('old', 'new'))
        print(f'| {pair} | {min(old):.1f} / {statistics.median(old):.1f} | {min(new):.1f} / '
              f'{statistics.median(new):.1f} |')


if __name__ == '__main__':
    main()
