#!/usr/bin/env python3
"""Turn a split of PRE-ALIGNED image pairs into an `nmr evaluate` manifest with exact ground truth, cue-free.

Each pair (moving RGB, fixed LWIR/depth, already aligned by the dataset's authors) gets a random smooth
misalignment of one named family (`nmr.training.families`: affine, homography, nonrigid, distortion,
composite, legacy; `--family mixed` draws one of the trainer's default families per pair), mean |phi| drawn
from `--mean-px` (px at 640 px width), from a fixed seed. The field is drawn on the whole image and BOTH
images are cropped to their centre (1 / 1.25 of each side), so no warping wedge or border tells the field
(issue 19); the misaligned RGB crop is the moving image, the fixed crop the fixed one, the exact flow the
ground truth, and the manifest's `family` column names the family. The split is the trainer's (same hash,
same `val_fraction`, same `scene_prefix`), so `--split val` scenes were never trained on.

    .venv/bin/python scripts/make_misaligned_manifest.py --pairs ../shared/data/roadscene/crop_LR_visible \
        ../shared/data/roadscene/cropinfrared --kind lwir --family homography --out runs/eval/roadscene_homography
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from nmr.data.pairs import SPLITS, FolderPairDataset, write_manifest
from nmr.training.config import AugmentConfig
from nmr.training.families import FAMILIES, cue_free_pair


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pairs', nargs=2, type=Path, required=True, metavar=('MOVING_DIR', 'FIXED_DIR'))
    parser.add_argument('--kind', choices=('lwir', 'depth'), required=True, help='fixed image kind')
    parser.add_argument('--moving-suffix', default='')
    parser.add_argument('--fixed-suffix', default='')
    parser.add_argument('--scene-prefix', type=int, default=0, help='as data.scene_prefix in training')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='as data.val_fraction in training')
    parser.add_argument('--seed', type=int, default=2026, help='misalignment seed')
    parser.add_argument('--family', default='mixed', choices=('mixed', *FAMILIES, 'parallax'),
                        help='misalignment family (mixed: one of the default training families per pair; '
                             'parallax: a second camera through the depth map, nmr.training.parallax: '
                             "depth pairs' own depth, a random layered depth for LWIR pairs)")
    parser.add_argument('--mean-px', type=float, nargs=2, default=(5.0, 30.0), metavar=('LOW', 'HIGH'),
                        help='mean |phi| drawn uniformly from this range, px at 640 px width')
    parser.add_argument('--split', choices=SPLITS, default='val',
                        help='val: held-out scenes; select / report: the held-out scenes for choosing '
                             'between models / for the numbers reported (a partition of val); train: '
                             'training scenes; all: every pair')
    parser.add_argument('--max-pairs', type=int, default=0, help='first N pairs of the split (0 = all)')
    parser.add_argument('--out', type=Path, required=True, help='folder for images, flows and manifest.csv')
    args = parser.parse_args()

    data = FolderPairDataset(args.pairs[0], args.pairs[1], args.kind, args.moving_suffix, args.fixed_suffix,
                             split=args.split, val_fraction=args.val_fraction, scene_prefix=args.scene_prefix)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = AugmentConfig(enabled=True, mean_px=list(args.mean_px))
    generator = torch.Generator().manual_seed(args.seed)
    rows: list[dict[str, str | Path]] = []
    count = len(data) if args.max_pairs <= 0 else min(len(data), args.max_pairs)
    for i in range(count):
        pair = data[i]
        h, w = pair.fixed.shape[:2]
        moving = cv2.resize(pair.moving, (w, h), interpolation=cv2.INTER_AREA) \
            if pair.moving.shape[:2] != (h, w) else pair.moving
        fixed = torch.from_numpy(pair.fixed.astype(np.float32))[None]
        moving_t = torch.from_numpy(moving).permute(2, 0, 1).float()
        if args.family == 'parallax':
            from nmr.training.parallax import layered_depth, parallax_pair

            depth = pair.fixed.astype(np.float32) / 1000.0 if args.kind == 'depth' else layered_depth(h, w, generator)
            cut = parallax_pair(moving_t, fixed, depth, cfg, generator)
        else:
            cut = cue_free_pair(moving_t, fixed, cfg, generator, family=None if args.family == 'mixed' else args.family)
        moving_out = cut.moving.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        fixed_out = cut.fixed[0].numpy().astype(pair.fixed.dtype)
        flow_np = cut.flow.permute(1, 2, 0).numpy().astype(np.float32)
        valid = cut.valid[0].numpy().astype(np.uint8) * 255
        stem = args.out / pair.name
        cv2.imwrite(f'{stem}_moving.png', cv2.cvtColor(moving_out, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f'{stem}_fixed.png', fixed_out)
        np.save(f'{stem}_flow.npy', flow_np)
        cv2.imwrite(f'{stem}_valid.png', valid)
        rows.append({'name': pair.name, 'moving': f'{stem}_moving.png', 'fixed': f'{stem}_fixed.png',
                     'flow': f'{stem}_flow.npy', 'valid': f'{stem}_valid.png', 'fixed_kind': pair.fixed_kind,
                     'family': cut.family})
    write_manifest(args.out / 'manifest.csv', rows)
    mags = [np.linalg.norm(np.load(str(r['flow'])), axis=2).mean() for r in rows]
    what = {'val': 'held-out', 'select': 'held-out selection', 'report': 'held-out report',
            'train': 'training-scene', 'all': ''}[args.split]
    print(f'{len(rows)} {what} pairs -> {args.out / "manifest.csv"} ({args.family}, mean misalignment '
          f'{np.mean(mags):.1f} px, cue-free centre crops)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
