#!/usr/bin/env python3
"""Turn the held-out split of PRE-ALIGNED image pairs into an `nmr evaluate` manifest with exact ground truth.

Each validation pair (moving RGB, fixed LWIR/depth, already aligned by the dataset's authors) gets a
random smooth misalignment (the trainer's `nmr.training.augment`, same magnitudes as config/train.yaml,
~15 px mean at 640 px width), drawn from a fixed seed: the misaligned RGB is written as the moving image
and the exact flow as ground truth. The split is the trainer's (same hash, same `val_fraction`,
same `scene_prefix`), so these scenes were never trained on.

    .venv/bin/python scripts/make_misaligned_manifest.py --pairs ../shared/data/roadscene/crop_LR_visible \
        ../shared/data/roadscene/cropinfrared --kind lwir --out runs/eval/roadscene_val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from nmr.data.pairs import FolderPairDataset, write_manifest
from nmr.training.augment import misalign, sample_misalignment
from nmr.training.config import AugmentConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pairs', nargs=2, type=Path, required=True, metavar=('MOVING_DIR', 'FIXED_DIR'))
    parser.add_argument('--kind', choices=('lwir', 'depth'), required=True, help='fixed image kind')
    parser.add_argument('--moving-suffix', default='')
    parser.add_argument('--fixed-suffix', default='')
    parser.add_argument('--scene-prefix', type=int, default=0, help='as data.scene_prefix in training')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='as data.val_fraction in training')
    parser.add_argument('--seed', type=int, default=2026, help='misalignment seed')
    parser.add_argument('--split', choices=('val', 'train'), default='val',
                        help='val: held-out scenes (evaluation); train: training scenes (for tuning '
                             'optimisation settings without touching the held-out ones)')
    parser.add_argument('--max-pairs', type=int, default=0, help='first N pairs of the split (0 = all)')
    parser.add_argument('--out', type=Path, required=True, help='folder for images, flows and manifest.csv')
    args = parser.parse_args()

    data = FolderPairDataset(args.pairs[0], args.pairs[1], args.kind, args.moving_suffix, args.fixed_suffix,
                             split=args.split, val_fraction=args.val_fraction, scene_prefix=args.scene_prefix)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg, generator, rows = AugmentConfig(enabled=True), torch.Generator().manual_seed(args.seed), []
    count = len(data) if args.max_pairs <= 0 else min(len(data), args.max_pairs)
    for i in range(count):
        pair = data[i]
        h, w = pair.fixed.shape[:2]
        moving = cv2.resize(pair.moving, (w, h), interpolation=cv2.INTER_AREA) \
            if pair.moving.shape[:2] != (h, w) else pair.moving
        mis = sample_misalignment(h, w, cfg, generator)
        warped, flow = misalign(torch.from_numpy(moving).permute(2, 0, 1).float(), mis, fill=0.0)
        moving_out = warped.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        flow_np = flow.permute(1, 2, 0).numpy().astype(np.float32)
        xs, ys = np.meshgrid(np.arange(w), np.arange(h))
        mx, my = xs + flow_np[..., 0], ys + flow_np[..., 1]
        valid = ((mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)).astype(np.uint8) * 255
        stem = args.out / pair.name
        cv2.imwrite(f'{stem}_moving.png', cv2.cvtColor(moving_out, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f'{stem}_fixed.png', pair.fixed)
        np.save(f'{stem}_flow.npy', flow_np)
        cv2.imwrite(f'{stem}_valid.png', valid)
        rows.append({'name': pair.name, 'moving': f'{stem}_moving.png', 'fixed': f'{stem}_fixed.png',
                     'flow': f'{stem}_flow.npy', 'valid': f'{stem}_valid.png', 'fixed_kind': pair.fixed_kind})
    write_manifest(args.out / 'manifest.csv', rows)
    mags = [np.linalg.norm(np.load(r['flow']), axis=2).mean() for r in rows]
    what = 'held-out' if args.split == 'val' else 'training-scene'
    print(f'{len(rows)} {what} pairs -> {args.out / "manifest.csv"} (mean misalignment {np.mean(mags):.1f} px)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
