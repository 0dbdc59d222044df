#!/usr/bin/env python3
"""Does R_Phi have a training signal yet? NeMAR's losses along the path from identity to the true flow.

R learns only through T: `L_recon = |R_S(T(a), phi) - b|_1 + |T(R_S(a, phi)) - b|_1`. If, with the current T,
that loss is not lower at the ground-truth flow than at zero flow, no gradient can lead R towards alignment
(T is still blurry or content-blind) and more R steps are wasted. This script loads a training checkpoint
(`last.pt`, which holds T), takes pairs of the TRAINING split with the trainer's synthetic misalignment
(validation seed) and prints both reconstruction terms (plain mean and masked to where R_S sampled inside the
image, `loss.mask_invalid`) and lambda_S x smoothness for flow = alpha x ground truth, alpha from 0
(unregistered) to 1.25.

    .venv/bin/python benchmarks/nemar_signal.py --checkpoint runs/x/last.pt \
        --pairs ../shared/data/roadscene/crop_LR_visible ../shared/data/roadscene/cropinfrared
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nmr.data.pairs import FolderPairDataset
from nmr.domain import PAIR_FIXED_KIND
from nmr.models.checkpoint import read_checkpoint
from nmr.models.resampler import resize_flow_same_size, warp
from nmr.training.config import config_from_dict
from nmr.training.data import TrainingPairs, collate
from nmr.training.losses import bilateral_smoothness, reconstruction_l1
from nmr.training.step import NemarSystem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, required=True, help='a training last.pt (with T)')
    parser.add_argument('--pairs', nargs=2, type=Path, required=True, metavar=('MOVING_DIR', 'FIXED_DIR'))
    parser.add_argument('--moving-suffix', default='')
    parser.add_argument('--fixed-suffix', default='')
    parser.add_argument('--scene-prefix', type=int, default=0)
    parser.add_argument('--count', type=int, default=12, help='training pairs to average over')
    args = parser.parse_args()

    ckpt = read_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt.extra['config'])
    system = NemarSystem(cfg, 'cpu')
    system.load(ckpt.state)
    system.train(False)
    assert system.T is not None, 'a NeMAR checkpoint (not a baseline) is needed'
    kind = PAIR_FIXED_KIND[cfg.data.pair]
    data = FolderPairDataset(args.pairs[0], args.pairs[1], kind, args.moving_suffix, args.fixed_suffix,
                             split='train', val_fraction=cfg.data.val_fraction, scene_prefix=args.scene_prefix)
    items = TrainingPairs(data, kind, cfg.data.net_hw, cfg.data.normalisation, cfg.augment, deterministic=True)
    batch = collate([items[i] for i in range(min(args.count, len(items)))])
    moving, fixed = batch['moving'], batch['fixed']
    gt = torch.cat([resize_flow_same_size(g[None], cfg.data.net_hw) for g in batch['gt_flow']])
    lam_s = cfg.loss.lambda_smooth
    print(f'{args.checkpoint} (step {ckpt.extra.get("global_step")}), {moving.shape[0]} training pairs, '
          f'mean |gt| {float(gt.norm(dim=1).mean()):.2f} net px')
    print('L1 of each fake over all pixels (plain, the paper) and over R_S-valid pixels (masked, ours)')
    print('alpha  R_S(T(a)) plain masked  T(R_S(a)) plain masked  lambda_R x masked sum  lambda_S x smooth')
    with torch.no_grad():
        translated = system.T(moving)
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25):
            phi = alpha * gt
            registered, valid = warp(moving, phi)
            fake_rt, fake_tr = warp(translated, phi)[0], system.T(registered)
            rt = [float(reconstruction_l1(fake_rt, fixed, m)) for m in (None, valid)]
            tr = [float(reconstruction_l1(fake_tr, fixed, m)) for m in (None, valid)]
            smooth = float(bilateral_smoothness(phi, registered, cfg.loss.bilateral_alpha, cfg.loss.bilateral))
            print(f'{alpha:5.2f}  {rt[0]:15.4f} {rt[1]:6.4f}  {tr[0]:15.4f} {tr[1]:6.4f}  '
                  f'{cfg.loss.lambda_recon * (rt[1] + tr[1]):21.3f}  {lam_s * smooth:16.3f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
