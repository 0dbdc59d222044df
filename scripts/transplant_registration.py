#!/usr/bin/env python3
"""Start one pair's `corr` R_Phi from another pair's weights (e.g. rgb_depth from a trained rgb_lwir).

Why: the RGB encoder, the cost volumes' decoders and much of the fixed encoder (edges against edges) carry
over between thermal and depth, and a cue-free depth model trained from scratch on 2 CPU cores had not left
zero flow after 400 contrastive + 400 flow steps (issue 19). Every tensor is copied as it is, except the fixed encoder's
first convolution when the target has the depth validity channel: the extra input channel starts at zero
(so the transplanted network is exactly the source on valid depth). The metadata (pair, normalisation,
network size) is the target's, from `--like` (a checkpoint of the target pair) or the defaults.

    .venv/bin/python scripts/transplant_registration.py --source runs/x/rgb_lwir.pt --pair rgb_depth \
        --normalisation '{mode: robust}' --out runs/init/rgb_depth.pt
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import yaml

from nmr.data.preprocess import normalisation_dict, normalisation_for
from nmr.domain import PAIR_FIXED_KIND
from nmr.models.checkpoint import read_checkpoint, save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', type=Path, required=True, help='checkpoint of the source pair')
    parser.add_argument('--pair', required=True, choices=sorted(PAIR_FIXED_KIND), help='the target pair')
    parser.add_argument('--normalisation', default='{}', help="the target's fixed-image normalisation (YAML)")
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()
    src = read_checkpoint(args.source, map_location='cpu')
    state = {k: v.clone() for k, v in src.state['registration'].items()}
    registration = dict(src.metadata.registration)
    validity = args.pair == 'rgb_depth'
    # the fixed encoder's first layer: plain stems' first convolution, or XFeat stems' grey projection
    key = 'fixed_pyramid.to_grey.weight' if registration.get('stem') == 'xfeat' else 'fixed_pyramid.levels.0.0.weight'
    if validity and not registration.get('fixed_validity', False):
        w = state[key]
        state[key] = torch.cat((w, torch.zeros_like(w[:, :1])), dim=1)
    elif not validity and registration.get('fixed_validity', False):
        state[key] = state[key][:, :-1].contiguous()
    registration['fixed_validity'] = validity
    kind = PAIR_FIXED_KIND[args.pair]
    norm = normalisation_dict(normalisation_for(kind, yaml.safe_load(args.normalisation) or None))
    meta = dataclasses.replace(src.metadata, pair=args.pair, registration=registration, normalisation=norm,
                               train_data={'transplanted_from': str(args.source), 'source_pair': src.metadata.pair})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, {'registration': state}, meta)
    print(f'{args.source} ({src.metadata.pair}) -> {args.out} ({args.pair})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
