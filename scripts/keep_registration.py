#!/usr/bin/env python3
"""Write a training run's `last.pt` as a model file holding only R_Phi (and the metadata).

Why: `last.pt` carries T, D and the optimiser state for `--resume`; a shipped or exported model needs only
the registration network, and the last epoch (not `best.pt`) is what the recipes ship.

    .venv/bin/python scripts/keep_registration.py runs/x/rgb_lwir/last.pt models/rgb_lwir.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmr.models.checkpoint import read_checkpoint, save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('last', type=Path, help="the run's last.pt")
    parser.add_argument('out', type=Path, help='the R_Phi-only model file to write')
    args = parser.parse_args()
    ckpt = read_checkpoint(args.last)
    save_checkpoint(args.out, {'registration': ckpt.state['registration']}, ckpt.metadata)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
