#!/usr/bin/env python3
"""How fast can R_Phi learn at all? The mono-modal upper bound of NeMAR's registration signal.

NeMAR trains R through T: R gets a useful gradient only once T translates RGB into the fixed modality well.
This benchmark removes T: the fixed image is the grey version of the ALIGNED RGB image, the moving image is
the same RGB with the trainer's synthetic misalignment, and R is trained on the L1 between the grey warped
moving image and the fixed one (+ lambda_S x bilateral smoothness), as if T were perfect. The ground-truth
flow only scores the held-back pairs. Whatever EPE this reaches after N steps bounds what full NeMAR
training can reach after N steps: run it before spending GPU hours on an architecture or optimiser change.

    .venv/bin/python benchmarks/r_learning_speed.py --pairs ../shared/data/roadscene/crop_LR_visible \
        ../shared/data/roadscene/cropinfrared --steps 400 --lr 5e-4
Prints `step, EPE (net px), % of the identity's EPE, seconds` every --every steps (training scenes only:
the scene split's held-out pairs are never read).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nmr.data import preprocess
from nmr.data.pairs import FolderPairDataset
from nmr.data.preprocess import resize_to
from nmr.models.registration import RegistrationConfig, RegistrationNet
from nmr.models.resampler import resize_flow_same_size, warp
from nmr.training.augment import misalign, sample_misalignment
from nmr.training.config import AugmentConfig
from nmr.training.losses import bilateral_smoothness, grey


def mono_pair(
    rgb: torch.Tensor, seed: int, net_hw: tuple[int, int], cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(misaligned RGB, grey aligned RGB, ground-truth flow), all at network size."""
    mis = sample_misalignment(rgb.shape[-2], rgb.shape[-1], cfg, torch.Generator().manual_seed(seed))
    moving, gt = misalign(rgb, mis, stride=4)
    fixed = rgb.mean(0, keepdim=True)
    return (
        resize_to(moving[None], net_hw)[0],
        resize_to(fixed[None], net_hw)[0],
        resize_flow_same_size(gt[None], net_hw)[0],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pairs', nargs=2, type=Path, required=True, metavar=('MOVING_DIR', 'FIXED_DIR'))
    parser.add_argument('--moving-suffix', default='')
    parser.add_argument('--fixed-suffix', default='')
    parser.add_argument('--arch', default='fast', choices=('fast', 'paper'))
    parser.add_argument('--net-hw', type=int, nargs=2, default=(128, 160), metavar=('H', 'W'))
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--lambda-recon', type=float, default=100.0)
    parser.add_argument('--lambda-smooth', type=float, default=200.0)
    parser.add_argument('--every', type=int, default=50)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net_hw = (int(args.net_hw[0]), int(args.net_hw[1]))
    data = FolderPairDataset(args.pairs[0], args.pairs[1], 'lwir', args.moving_suffix, args.fixed_suffix,
                             split='train')
    rgbs = [preprocess.rgb_input(data[i].moving) for i in range(len(data))]
    n_probe = min(16, len(rgbs) // 5)
    train, probe = rgbs[n_probe:], rgbs[:n_probe]
    cfg = AugmentConfig(enabled=True)
    probe_set = [mono_pair(rgb, 10_000 + i, net_hw, cfg) for i, rgb in enumerate(probe)]
    pm, pf, pg = (torch.stack([p[k] for p in probe_set]) for k in range(3))
    identity = float(pg.norm(dim=1).mean())
    net = RegistrationNet(RegistrationConfig(arch=args.arch))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999))
    started = time.perf_counter()
    print(f'{len(train)} training images, {n_probe} probe images, identity EPE {identity:.3f} net px')
    for step in range(1, args.steps + 1):
        batch = [mono_pair(train[(step * args.batch + k) % len(train)], step * args.batch + k, net_hw, cfg)
                 for k in range(args.batch)]
        moving, fixed = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        flow = net(moving, fixed)
        registered, _ = warp(moving, flow)
        loss = args.lambda_recon * (grey(registered) - fixed).abs().mean()
        loss = loss + args.lambda_smooth * bilateral_smoothness(flow, registered)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                epe = float((net(pm, pf) - pg).norm(dim=1).mean())
            print(f'step {step} EPE {epe:.3f} px ({100 * epe / identity:.1f} % of identity) '
                  f'{time.perf_counter() - started:.0f} s', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
