#!/usr/bin/env python3
"""Residual training pairs from exported synthetic rig recordings (nmr.training.residual_pairs, issue 20).

Each row of DIR/<pair>/manifest.csv (written by `nmr synth --rig-seed S --export-pairs DIR`) becomes the moving
image pre-warped by the rig's geometric flow (as `nmr evaluate --rig` does) and the exact residual ground truth
(what the synthetic rig's true flow leaves after the geometric flow, SPEC convention, with its valid mask);
`--jitter N` adds N rows per pair pre-warped by a perturbed rig (calibration error), `--aligned` one row per
pair pre-aligned by the exact truth, without flow (the trainer misaligns it: augment.enabled=true). The manifest trains
with `nmr train --manifest OUT/manifest.csv --set loss.objective=supervised` unchanged.

    .venv/bin/python scripts/make_residual_manifest.py --pair rgb_lwir --out runs/residual/rgb_lwir \
        --source r12=runs/residual/pairs_r12 --source r13=runs/residual/pairs_r13 --jitter 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmr.training.residual_pairs import Jitter, build_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--pair', choices=('rgb_lwir', 'rgb_depth'), required=True)
    parser.add_argument('--source', action='append', required=True, metavar='TAG=DIR[:RIG.yaml]',
                        help='an nmr synth --export-pairs folder, tagged (row names are TAG_<name>); the rig is '
                             'DIR/rig_true.yaml unless given (e.g. one estimated by nmr calibrate)')
    parser.add_argument('--out', type=Path, required=True, help='folder for images, flows and manifest.csv')
    parser.add_argument('--jitter', type=int, default=0, help='extra rows per pair with a perturbed rig')
    parser.add_argument('--jitter-rotation-deg', type=float, default=Jitter.rotation_deg)
    parser.add_argument('--jitter-translation-m', type=float, default=Jitter.translation_m)
    parser.add_argument('--jitter-focal', type=float, default=Jitter.focal)
    parser.add_argument('--jitter-principal-px', type=float, default=Jitter.principal_px)
    parser.add_argument('--aligned', action='store_true',
                        help='one more row per pair: pre-aligned by the exact truth, without flow (train with '
                             'augment.enabled=true: the trainer draws a small misalignment for it)')
    parser.add_argument('--max-rows', type=int, default=0, help='at most N pairs per source, evenly spaced (0 = all)')
    parser.add_argument('--seed', type=int, default=0, help='jitter seed')
    args = parser.parse_args()
    sources = []
    for spec in args.source:
        tag, sep, rest = spec.partition('=')
        if not sep or not tag:
            parser.error(f'--source {spec}: expected TAG=DIR[:RIG.yaml]')
        folder, _, rig = rest.partition(':')
        sources.append((tag, Path(folder), Path(rig) if rig else None))
    jitter = Jitter(args.jitter_rotation_deg, args.jitter_translation_m, args.jitter_focal, args.jitter_principal_px)
    build_manifest(sources, args.out, args.pair, jitter=args.jitter, jitter_cfg=jitter, seed=args.seed,
                   max_rows=args.max_rows, aligned=args.aligned)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
