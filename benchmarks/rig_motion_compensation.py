"""Experiment (issue 20): does compensating the rig's motion between the LWIR exposure
and its paired RGB frame remove the error the geometric flow leaves on RGB-LWIR?

The streams are not triggered together, so the paired RGB frame is exposed a few ms before or after the
LWIR frame, and the rig moves meanwhile (docs/results.md: the geometric EPE grows 0.13 px per ms of that
gap). The geometric flow g puts each LWIR pixel where it would be in an RGB image exposed with the LWIR
frame; the RGB content moves between frames j and k by the mono-modal optical flow F_jk (OpenCV DIS), so
at the LWIR time it sits at m_j + alpha F_jk(m_j), alpha = (t_lwir - t_j) / (t_k - t_j). Hence
phi ~ g - alpha F_jk(v + g) (F sampled at the geometric target): nmr.geometry.registration.compensate_motion,
which the node runs with the previous RGB frame (`rig_motion`). Scored against the bag's ground truth.

    PYTHONPATH=src .venv/bin/python benchmarks/rig_motion_compensation.py runs/eval/synth_val_bag \
        runs/eval/synth_val/rig_true.yaml [--previous]

`--previous` uses the RGB frame before the paired one only (what a live node has without waiting).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nmr.data.bag_reader import iter_images
from nmr.data.encodings import stamp_ns, to_rgb
from nmr.geometry.registration import (
    MOTION_FINEST_SCALE,
    MOTION_MAX_WIDTH,
    MOTION_PRESET,
    GeometricStage,
    compensate_motion,
)
from nmr.geometry.rig import Rig

TOPICS = {'/camera/camera/color/image_raw': 'rgb', '/flir_boson/image_raw': 'lwir',
          '/camera/camera/depth/image_rect_raw': 'depth', '/nmr_gt/rgb_lwir/flow': 'gt',
          '/nmr_gt/rgb_lwir/valid': 'valid'}


Frames = dict[str, dict[int, tuple[np.ndarray, str]]]


def read_rig_bag(bag: str) -> tuple[Frames, np.ndarray, np.ndarray]:
    """Every frame of the synthetic rig's bag by kind and stamp (ns), and the sorted RGB and depth stamps:
    the pairing both rig benchmarks do (this one and rig_error_breakdown.py)."""
    frames: Frames = {k: {} for k in TOPICS.values()}
    for topic, _r, arr, enc, header in iter_images([bag], list(TOPICS)):
        frames[TOPICS[topic]][stamp_ns(header)] = (np.array(arr), enc)
    return frames, np.array(sorted(frames['rgb'])), np.array(sorted(frames['depth']))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag')
    parser.add_argument('rig')
    parser.add_argument('--previous', action='store_true', help='only the RGB frame before the paired one')
    parser.add_argument('--max-width', type=int, default=MOTION_MAX_WIDTH, help='optical flow at most this wide')
    parser.add_argument('--preset', type=int, default=MOTION_PRESET, help='DIS preset: 0 ultrafast, 1 fast, 2 medium')
    parser.add_argument('--finest-scale', type=int, default=MOTION_FINEST_SCALE, help="DIS's finest pyramid level")
    args = parser.parse_args()
    frames, rgb_stamps, depth_stamps = read_rig_bag(args.bag)
    stage = GeometricStage(Rig.load(args.rig), log=lambda _t: None)
    before: list[float] = []
    after: list[float] = []
    cost: list[float] = []
    for stamp, (lwir, _enc) in sorted(frames['lwir'].items()):
        j = int(np.argmin(np.abs(rgb_stamps - stamp)))
        if args.previous:
            k = j - 1 if j > 0 else j + 1
        else:  # the neighbour on the LWIR frame's side (interpolation)
            k = j + 1 if (stamp >= rgb_stamps[j] and j + 1 < len(rgb_stamps)) or j == 0 else j - 1
        rgb = [to_rgb(*frames['rgb'][rgb_stamps[i]]) for i in (j, k)]
        alpha = float((stamp - rgb_stamps[j]) / (rgb_stamps[k] - rgb_stamps[j]))
        depth = frames['depth'][depth_stamps[int(np.argmin(np.abs(depth_stamps - stamp)))]]
        geo = stage.flow('rgb_lwir', rgb[0].shape[:2], lwir.shape, *depth)
        gt, valid = frames['gt'][stamp][0], frames['valid'][stamp][0] > 0
        before.append(float(np.linalg.norm(geo.flow - gt, axis=-1)[valid].mean()))
        t0 = time.perf_counter()
        compensate_motion(geo.flow, rgb[0], rgb[1], alpha, args.max_width, args.preset, args.finest_scale)
        cost.append((time.perf_counter() - t0) * 1e3)
        after.append(float(np.linalg.norm(geo.flow - gt, axis=-1)[valid].mean()))
    print(f'{len(before)} LWIR frames: geometric {np.mean(before):.3f} px -> motion-compensated '
          f'{np.mean(after):.3f} px ({"previous RGB frame" if args.previous else "interpolated"}, '
          f'max width {args.max_width}, preset {args.preset}, finest scale {args.finest_scale}: '
          f'{np.median(cost):.1f} ms median)')


if __name__ == '__main__':
    main()
