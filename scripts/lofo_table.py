#!/usr/bin/env python3
"""The leave-one-family-out table of scripts/evaluate_lofo.sh: one row per model (the family it never saw), one
column per evaluation set, EPE as % of the unregistered EPE; the held-back family's cell is marked.

    .venv/bin/python scripts/lofo_table.py runs/eval/lofo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = ('roadscene_affine', 'roadscene_homography', 'roadscene_nonrigid', 'roadscene_distortion',
        'roadscene_composite', 'roadscene_parallax', 'llvip_mixed')


def percent(path: Path) -> float | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return float(json.loads(path.read_text())['summary']['epe_ratio'])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('lofo_dir', type=Path)
    args = parser.parse_args()
    rows = sorted((p for p in args.lofo_dir.iterdir() if p.is_dir()), key=lambda p: (p.name == 'none', p.name))
    print('| model (family held back) | ' + ' | '.join(s.replace('roadscene_', '') for s in SETS) + ' |')
    print('|---' * (len(SETS) + 1) + '|')
    for row in rows:
        cells = []
        for s in SETS:
            value = percent(row / f'{s}.json')
            text = 'n/a' if value is None else f'{value:.1f}'
            cells.append(f'**{text}** (held back)' if s.endswith(row.name) else text)
        name = 'every family (control)' if row.name == 'none' else f'without {row.name}'
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
