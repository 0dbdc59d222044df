"""Cost of the geometry layer at 640x512: ``flow_through_depth`` and ``reproject_depth`` per call.

A realistic pair: LWIR 640x512 with a wide lens (strong barrel distortion) as the fixed camera, the RGB
camera 6 cm beside it, rotated by about a degree, with its own mild distortion, as the moving one; the
depth is a floor plane receding upwards with a box in front and a few holes, like a RealSense frame
reprojected to the fixed camera. Reports the median and minimum of wall and CPU time over ``--runs``
calls after one warm-up call (the warm-up builds the cached rays) and the load average before and after.
Pin one thread (``OMP_NUM_THREADS=1``; numpy's element-wise work is single-threaded anyway).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/geometry_cost.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from nmr.geometry import CameraModel, Pose, flow_through_depth, reproject_depth


def scene(width: int, height: int) -> np.ndarray:
    yy, _ = np.mgrid[0:height, 0:width]
    depth = (3.0 + 4.0 * (height - yy) / height).astype(np.float32)
    depth[height // 5 : height // 2, width // 3 : width // 2] = 1.5
    depth[: height // 25] = 0.0  # a band of no depth (sky / out of range)
    depth[height * 4 // 5 : height * 4 // 5 + 10, ::7] = 0.0  # speckle holes
    return depth


def timed(fn: Callable[[], object], runs: int) -> dict[str, float]:
    fn()  # warm-up: cached rays
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        'wall_ms_median': round(float(np.median(wall)) * 1e3, 2),
        'wall_ms_min': round(min(wall) * 1e3, 2),
        'cpu_ms_median': round(float(np.median(cpu)) * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--size', default='640x512', help='WxH of both cameras')
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    fixed = CameraModel(w, h, 0.78 * w, 0.78 * w, w / 2 - 0.5, h / 2 - 0.5, (-0.3, 0.1, 0.0006, -0.0004, -0.015))
    moving = CameraModel(w, h, 0.75 * w, 0.75 * w, w / 2 + 1.8, h / 2 - 2.1, (0.08, -0.03, 0.0, 0.0, 0.0))
    plain_f = CameraModel(fixed.width, fixed.height, fixed.fx, fixed.fy, fixed.cx, fixed.cy)
    plain_m = CameraModel(moving.width, moving.height, moving.fx, moving.fy, moving.cx, moving.cy)
    pose = Pose.from_rpy_deg(0.6, -0.8, 0.3, (0.06, -0.04, 0.01))
    depth = scene(w, h)
    out: dict[str, object] = {'size': args.size, 'runs': args.runs, 'load_before': os.getloadavg()}
    out['flow_through_depth'] = timed(lambda: flow_through_depth(fixed, moving, pose, depth), args.runs)
    out['flow_through_depth_no_distortion'] = timed(
        lambda: flow_through_depth(plain_f, plain_m, pose, depth), args.runs
    )
    out['reproject_depth'] = timed(lambda: reproject_depth(fixed, moving, pose, depth), args.runs)
    out['load_after'] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
