"""Experiment (issue 20, not in the product yet): does compensating the rig's motion between the LWIR exposure
and its paired RGB frame remove the error the geometric flow leaves on RGB-LWIR?

The streams are not triggered together, so the paired RGB frame is exposed a few ms before or after the
LWIR frame, and the rig moves meanwhile (docs/results.md: the geometric EPE grows 0.13 px per ms of that
gap). The geometric flow g puts each LWIR pixel where it would be in an RGB image exposed with the LWIR
frame; the RGB content moves between frames j and k by the mono-modal optical flow F_jk (OpenCV DIS), so
at the LWIR time it sits at m_j + alpha F_jk(m_j), alpha = (t_lwir - t_j) / (t_k - t_j). Hence
phi ~ g - alpha F_jk(v + g) (F sampled at the geometric target). Scored against the bag's ground truth.

    PYTHONPATH=src .venv/bin/python benchmarks/rig_motion_compensation.py runs/eval/synth_val_bag \
        runs/eval/synth_val/rig_true.yaml [--previous]

`--previous` uses the RGB frame before the paired one only (what a live node has without waiting).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from nmr.data.bag_reader import iter_images
from nmr.data.encodings import stamp_ns, to_rgb
from nmr.geometry.registration import GeometricStage
from nmr.geometry.rig import Rig

TOPICS = {'/camera/camera/color/image_raw': 'rgb', '/flir_boson/image_raw': 'lwir',
          '/camera/camera/depth/image_rect_raw': 'depth', '/nmr_gt/rgb_lwir/flow': 'gt',
          '/nmr_gt/rgb_lwir/valid': 'valid'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag')
    parser.add_argument('rig')
    parser.add_argument('--previous', action='store_true', help='only the RGB frame before the paired one')
    args = parser.parse_args()
    frames: dict[str, dict[int, tuple[np.ndarray, str]]] = {k: {} for k in TOPICS.values()}
    for topic, _r, arr, enc, header in iter_images([args.bag], list(TOPICS)):
        frames[TOPICS[topic]][stamp_ns(header)] = (np.array(arr), enc)
    rgb_stamps = np.array(sorted(frames['rgb']))
    depth_stamps = np.array(sorted(frames['depth']))
    stage = GeometricStage(Rig.load(args.rig), log=lambda _t: None)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    before, after = [], []
    for stamp, (lwir, _enc) in sorted(frames['lwir'].items()):
        j = int(np.argmin(np.abs(rgb_stamps - stamp)))
        if args.previous:
            k = j - 1 if j > 0 else j + 1
        else:  # the neighbour on the LWIR frame's side (interpolation)
            k = j + 1 if (stamp >= rgb_stamps[j] and j + 1 < len(rgb_stamps)) or j == 0 else j - 1
        grey = [cv2.cvtColor(to_rgb(*frames['rgb'][rgb_stamps[i]]), cv2.COLOR_RGB2GRAY) for i in (j, k)]
        motion = dis.calc(grey[0], grey[1], None)  # I_k(x + F(x)) ~ I_j(x)
        alpha = np.float32((stamp - rgb_stamps[j]) / (rgb_stamps[k] - rgb_stamps[j]))
        depth = frames['depth'][depth_stamps[int(np.argmin(np.abs(depth_stamps - stamp)))]]
        geo = stage.flow('rgb_lwir', grey[0].shape, lwir.shape, *depth)
        h, w = lwir.shape
        grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
        moved = cv2.remap(motion, grid + geo.flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        gt, valid = frames['gt'][stamp][0], frames['valid'][stamp][0] > 0
        before.append(float(np.linalg.norm(geo.flow - gt, axis=-1)[valid].mean()))
        after.append(float(np.linalg.norm(geo.flow - alpha * moved - gt, axis=-1)[valid].mean()))
    print(f'{len(before)} LWIR frames: geometric {np.mean(before):.3f} px -> motion-compensated '
          f'{np.mean(after):.3f} px ({"previous RGB frame" if args.previous else "interpolated"})')


if __name__ == '__main__':
    main()
