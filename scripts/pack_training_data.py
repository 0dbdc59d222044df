#!/usr/bin/env python3
"""Copy the TRAINING split of the development data into one small folder, for a GPU machine that can only
receive a few tens of MiB (the device tool carries at most 64 MiB with the working tree).

Why a copy and not the data: the held-out scenes never need to travel (evaluation runs here), and the
network sees at most its canvas (160 x 200 at net 128 x 160), so images wider than `--max-width` are
downscaled (colour / thermal: area average, re-encoded as JPEG quality 95; depth: nearest neighbour, 16-bit
PNG, so no depth is invented across edges). The split is the trainer's own (`nmr.data.pairs.in_split` on
each source's scene prefix and validation fraction), so training on the copy with `data.val_fraction=0`
sees exactly the pairs `scripts/train_default_models.sh` trains on.

    usage: scripts/pack_training_data.py --data ../shared/data --out gpu_pack/data [--max-width 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2

from nmr import atomic
from nmr.data.pairs import FolderPairDataset


@dataclass(frozen=True)
class Source:
    name: str
    moving: str
    fixed: str
    kind: str
    scene_prefix: int
    val_fraction: float
    moving_suffix: str = ''
    fixed_suffix: str = ''


# The sources and splits of scripts/train_default_models.sh.
SOURCES = (
    Source('roadscene', 'roadscene/crop_LR_visible', 'roadscene/cropinfrared', 'lwir', 0, 0.2),
    Source('llvip', 'llvip/visible', 'llvip/infrared', 'lwir', 2, 0.3),
    Source('rgbdd', 'rgbdd/RGB', 'rgbdd/Depth', 'depth', 11, 0.2, '_RGB', '_HR_gt'),
)


def _copy_image(src: Path, dst: Path, max_width: int, depth: bool) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f'{src}: not a readable image')
    h, w = image.shape[:2]
    if w <= max_width:
        shutil.copyfile(src, dst)
        return
    size = (max_width, round(h * max_width / w))
    small = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if depth else cv2.INTER_AREA)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if dst.suffix.lower() == '.png' else [cv2.IMWRITE_JPEG_QUALITY, 95]
    ok, data = cv2.imencode(dst.suffix, small, params)
    if not ok:
        raise SystemExit(f'{dst}: could not encode')
    dst.write_bytes(data.tobytes())


def pack(data: Path, out: Path, max_width: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in SOURCES:
        pairs = FolderPairDataset(data / s.moving, data / s.fixed, s.kind, s.moving_suffix, s.fixed_suffix,
                                  split='train', val_fraction=s.val_fraction, scene_prefix=s.scene_prefix)
        for sub in ('moving', 'fixed'):
            (out / s.name / sub).mkdir(parents=True, exist_ok=True)
        for _key, moving, fixed in pairs.items:
            _copy_image(moving, out / s.name / 'moving' / moving.name, max_width, depth=False)
            _copy_image(fixed, out / s.name / 'fixed' / fixed.name, max_width, depth=s.kind == 'depth')
        counts[s.name] = len(pairs.items)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', type=Path, required=True, help='the development data (../shared/data)')
    ap.add_argument('--out', type=Path, required=True, help='a new folder')
    ap.add_argument('--max-width', type=int, default=400, help='downscale wider images to this width')
    args = ap.parse_args()
    if args.out.exists():
        print(f'{args.out} exists: remove it or choose another --out', file=sys.stderr)
        return 2
    staging = args.out.with_name(args.out.name + '.partial')
    shutil.rmtree(staging, ignore_errors=True)
    counts = pack(args.data, staging, args.max_width)
    atomic.write_text(staging / 'pack.json', json.dumps({'training_pairs': counts, 'max_width': args.max_width,
                                                         'sources': [s.__dict__ for s in SOURCES]}, indent=1))
    staging.rename(args.out)
    print(f'{args.out}: training pairs {counts}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
