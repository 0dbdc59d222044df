"""Cost per set of registration through the rig (issue 20) next to the network's, in-process, per pair.

The synthetic rig at full size (RGB 640x480, LWIR 640x512, depth 848x480) at one instant, exact depth; each
row is the median and the minimum of `--repeats` runs of `PairProcessor.run` (the node's stages) with the
outputs registered + flow (+ valid with the rig), plus the geometric stage alone. The network rows use the
shipped ONNX models on ONNX Runtime (CPU). OpenCV runs on `--cv-threads` threads (default 1: what the node
gives each pair's worker with both pairs on 2 cores, nmr.pipeline.settings.configure_threads). Prints the
1-minute load average before and after: on a shared machine the medians are only comparable within one run;
the minimum is the better estimate of the cost without other jobs.

    PYTHONPATH=src .venv/bin/python benchmarks/rig_cost.py [--repeats 20] [--threads 2] [--cv-threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from nmr.geometry.registration import GeometricStage
from nmr.geometry.rig import Rig
from nmr.pipeline.outputs import PairProcessor
from nmr.synth.cameras import default_rig
from nmr.synth.render import render_geometry
from nmr.synth.scene import generate_scene

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, minimum) wall ms of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()  # warm-up: caches (rays, plane flows), ORT session
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads (0 = its default)')
    parser.add_argument('--cv-threads', type=int, default=1, help='OpenCV threads (the node: cores / pairs)')
    args = parser.parse_args()
    cv2.setNumThreads(args.cv_threads)
    load0 = os.getloadavg()[0]
    scene = generate_scene(5, 1.0)
    synth = default_rig(1.0)
    geom = {n: render_geometry(scene, getattr(synth, n), 0.5) for n in ('rgb', 'lwir', 'depth')}
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*geom['rgb'].depth.shape, 3), dtype=np.uint8)
    lwir = rng.integers(1000, 30000, geom['lwir'].depth.shape, dtype=np.uint16)
    depth_mm = np.round(np.where(geom['depth'].surface, geom['depth'].depth, 0.0) * 1000).astype(np.uint16)
    fixed = {'rgb_lwir': (lwir, 'mono16'), 'rgb_depth': (depth_mm, '16UC1')}
    stage = GeometricStage(Rig.from_synth(synth), log=lambda _t: None)
    rows = []
    for pair in ('rgb_lwir', 'rgb_depth'):
        fixed_raw, enc = fixed[pair]
        depth = (depth_mm, '16UC1') if pair == 'rgb_lwir' else None
        rows.append((pair, 'geometric stage only (flow + valid)', median_ms(
            lambda p=pair, f=fixed_raw: stage.flow(p, rgb.shape[:2], f.shape, depth_mm, '16UC1'), args.repeats)))
        proc = PairProcessor(None, pair, geometry=stage, residual=False)
        rows.append((pair, 'rig, geometry only: run() registered+flow+valid', median_ms(
            lambda pr=proc, f=fixed_raw, e=enc, d=depth: pr.run(rgb, f, e, ['registered', 'flow', 'valid'], depth=d),
            args.repeats)))
        if pair == 'rgb_lwir':  # with the previous RGB frame: the motion compensation (rig_motion) runs too
            previous = (np.roll(rgb, 2, axis=1), -0.2)
            rows.append((pair, 'rig, geometry only + motion compensation: run() registered+flow+valid', median_ms(
                lambda pr=proc, f=fixed_raw, e=enc, d=depth, p=previous: pr.run(
                    rgb, f, e, ['registered', 'flow', 'valid'], depth=d, previous=p), args.repeats)))
        from nmr.inference.select import create_registrar

        registrar = create_registrar(ROOT / 'models' / f'{pair}.onnx', backend='onnxruntime', device='cpu',
                                     log=lambda _t: None, expected_pair=pair,
                                     **({'threads': args.threads} if args.threads else {}))
        net = PairProcessor(registrar, pair)
        rows.append((pair, 'network only (shipped ONNX): run() registered+flow', median_ms(
            lambda pr=net, f=fixed_raw, e=enc: pr.run(rgb, f, e, ['registered', 'flow']), args.repeats)))
        both = PairProcessor(registrar, pair, geometry=stage, residual=True)
        rows.append((pair, 'rig + network residual: run() registered+flow+valid', median_ms(
            lambda pr=both, f=fixed_raw, e=enc, d=depth: pr.run(rgb, f, e, ['registered', 'flow', 'valid'], depth=d),
            args.repeats)))
    load1 = os.getloadavg()[0]
    print(f'| pair | path | median ms per set | min ms (load {load0:.1f} -> {load1:.1f}, {os.cpu_count()} CPUs) |')
    print('|---|---|---|---|')
    for pair, what, (med, low) in rows:
        print(f'| {pair} | {what} | {med:.1f} | {low:.1f} |')


if __name__ == '__main__':
    main()
