#!/usr/bin/env python3
"""The markdown table of scripts/evaluate_default_models.sh: one row per cue-free evaluation set, one column per
evaluated model (EPE as % of the unregistered EPE), and the homography oracle.

    .venv/bin/python scripts/results_table.py runs/eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAINED = {'affine', 'homography', 'nonrigid', 'distortion', 'composite'}


def _load(path: Path) -> dict | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return json.loads(path.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('eval_dir', type=Path)
    args = parser.parse_args()
    labels = sorted((p.name for p in args.eval_dir.iterdir()
                     if p.is_dir() and p.name not in ('sets', 'oracle') and any(p.glob('*.json'))),
                    key=lambda name: (name not in ('old', 'pre19'), name))  # the oldest models first
    order = ['affine', 'homography', 'nonrigid', 'distortion', 'composite', 'legacy', 'mixed', 'fov', 'parallax', 'raw',
             'lwir', 'depth']

    def key(name: str) -> tuple[int, int, str]:
        pair = 0 if name.startswith(('roadscene', 'llvip')) or name.endswith('lwir') else 1
        tail = name.split('_', 1)[-1]
        return pair, order.index(tail) if tail in order else len(order), name

    sets = sorted({j.stem for label in labels for j in (args.eval_dir / label).glob('*.json')}, key=key)
    head = ['set', 'pair', 'family', 'held back', 'pairs', 'unregistered px',
            *[f'{label} %' for label in labels], 'homography oracle %']
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for name in sets:
        reports = [_load(args.eval_dir / label / f'{name}.json') for label in labels]
        first = next(r for r in reports if r is not None)
        s = first['summary']
        pair = 'rgb_lwir' if name.startswith(('roadscene', 'llvip')) or name.endswith('lwir') else 'rgb_depth'
        family = name.split('_', 1)[1] if '_' in name else ''
        if name.startswith('rig777'):
            family = 'rig (true parallax)'
        held = ('scenes' if family in TRAINED or family == 'mixed' else 'scenes + family')
        if name.startswith('rig777'):
            held = 'rig seed'
        if family == 'legacy':
            held = 'scenes (old family)'
        if family == 'fov':
            held = 'scenes (+ family before s5)'
        if family == 'raw':
            family, held = 'real field of view (affine)', 'scenes + generator + raw thermal'
        oracle = _load(args.eval_dir / 'oracle' / f'{name}.json')
        cells = [name, pair, family, held, str(s['pairs']), f'{s["epe_identity"]:.2f}',
                 *[f'{r["summary"]["epe_ratio"]:.1f}' if r else '-' for r in reports],
                 f'{oracle["epe_ratio"]:.1f}' if oracle else '-']
        print('| ' + ' | '.join(cells) + ' |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
