"""`nmr train`: learn R (with T and D) from rosbag2 bags, a manifest CSV or two folders of image pairs.

nmr train --config config/train.yaml --bag run1 run2 --pair rgb_lwir --out runs/lwir
nmr train --manifest pairs.csv --pair rgb_lwir --out runs/lwir --set augment.enabled=true
nmr train --pairs rgb_dir/ lwir_dir/ --pair rgb_lwir --out runs/lwir --resume
nmr train --pairs rgb_dir/ lwir_dir/ --bag rig1 rig2 --pair rgb_lwir --out runs/mix   # sources mix
torchrun --nproc_per_node 4 -m nmr.cli.main train ...        # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nmr.domain import PAIR_FIXED_KIND, PAIRS
from nmr.errors import ConfigError
from nmr.resources import share_path

DEFAULT_CONFIG = share_path('config', 'train.yaml')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--config',
        type=Path,
        default=None,
        help=f'training YAML (default: {DEFAULT_CONFIG.name} shipped with nmr, if present)',
    )
    src = parser.add_argument_group(
        'training data (one or more sources; their pairs are pooled, each split on its own)'
    )
    src.add_argument('--bag', nargs='+', type=Path, metavar='BAG', help='rosbag2 bag folder(s) or file(s)')
    src.add_argument(
        '--manifest',
        type=Path,
        metavar='CSV',
        help='CSV with columns name,moving,fixed[,flow,valid,landmarks] (paths relative to it)',
    )
    src.add_argument(
        '--pairs',
        nargs='+',
        action='append',
        metavar='DIR',
        help='MOVING_DIR FIXED_DIR [SCENE_PREFIX [VAL_FRACTION]]: two folders of images matched by file stem; '
        'repeat for more sources (the optional values override data.scene_prefix / data.val_fraction for this '
        'source, e.g. 2 0.3 for llvip: its scene 01 held out)',
    )
    parser.add_argument(
        '--val-manifest',
        type=Path,
        default=None,
        metavar='CSV',
        help='validation pairs instead of the sources\' own validation split (which is still left out '
        'of training; set data.val_fraction=0 to train on all of it)',
    )
    parser.add_argument(
        '--pair',
        choices=PAIRS,
        default=None,
        help='which model to train (overrides data.pair)',
    )
    parser.add_argument('--out', type=Path, required=True, help='output folder (checkpoints, logs)')
    parser.add_argument(
        '--moving-suffix', default='', help='--pairs: suffix cut from moving stems (e.g. _RGB)'
    )
    parser.add_argument(
        '--fixed-suffix', default='', help='--pairs: suffix cut from fixed stems (e.g. _HR_gt)'
    )
    parser.add_argument('--resume', action='store_true', help='continue from OUT/last.pt')
    parser.add_argument(
        '--init',
        type=Path,
        default=None,
        metavar='CKPT',
        help='warm start: R_Phi (architecture and weights) from this checkpoint (e.g. a supervised model), '
        'then train with the configured objective (NeMAR fine-tuning: loss.objective=nemar or mixed)',
    )
    parser.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='override a config value, e.g. --set optim.lr=2e-4 (repeatable)',
    )
    parser.add_argument('--print-config', action='store_true', help='print the resolved config and exit')


def pair_sources(
    values: list[list[str]] | None, scene_prefix: int, val_fraction: float
) -> list[tuple[Path, Path, int, float]]:
    """--pairs occurrences -> (moving_dir, fixed_dir, scene_prefix, val_fraction) each; ConfigError on a
    malformed one."""
    out = []
    usage = 'give MOVING_DIR FIXED_DIR [SCENE_PREFIX (an integer) [VAL_FRACTION (0..1)]]'
    for v in values or []:
        if len(v) not in (2, 3, 4) or (len(v) >= 3 and not v[2].isdigit()):
            raise ConfigError(f'--pairs {" ".join(v)}: {usage}')
        try:
            fraction = float(v[3]) if len(v) == 4 else val_fraction
        except ValueError:
            raise ConfigError(f'--pairs {" ".join(v)}: {usage}') from None
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f'--pairs {" ".join(v)}: VAL_FRACTION must be in [0, 1)')
        out.append((Path(v[0]), Path(v[1]), int(v[2]) if len(v) >= 3 else scene_prefix, fraction))
    return out


def build_data(args: argparse.Namespace, cfg: Any) -> Any:
    """The train / val FramePair datasets of every given source (nmr.data), each split as the config says,
    pooled. Pre-aligned pairs (no ground truth) get the synthetic misalignment in training; pairs with
    ground truth (rig bags, manifests with `flow`) are used as they are (nmr.training.data)."""
    from torch.utils.data import ConcatDataset, Subset

    from nmr.training.trainer import TrainData

    d = cfg.data
    kind = PAIR_FIXED_KIND[d.pair]
    # The sources are split even when --val-manifest replaces their validation pairs, so that scenes held
    # out by the split never reach training (data.val_fraction=0 trains on everything).
    split_val = d.val_fraction > 0
    parts: list[tuple[Any, Any, dict[str, Any]]] = []
    if args.bag:
        from nmr.data.bag_reader import BagPairDataset

        kw: dict[str, Any] = {
            'pair': d.pair,
            'topics': d.topics,
            'val_fraction': d.val_fraction,
            'block_s': d.block_s,
            'slop_s': d.slop_s,
        }
        # One dataset per bag: each bag is its own recording (own clock, own time blocks). Read as one,
        # bags recorded over the same time span would pair one bag's RGB with another's LWIR.
        for bag in args.bag:
            bag_train = BagPairDataset(bag, split='train' if split_val else 'all', **kw)
            parts.append((
                bag_train,
                BagPairDataset(bag, split='val', **kw) if split_val else None,
                {'source': 'bags', **bag_train.summary()},
            ))
    if args.manifest:
        from nmr.data.pairs import ManifestDataset

        parts.append((
            ManifestDataset(args.manifest, kind, 'train' if split_val else 'all', d.val_fraction),
            ManifestDataset(args.manifest, kind, 'val', d.val_fraction) if split_val else None,
            {'source': 'manifest', 'manifest': str(args.manifest)},
        ))
    for source in pair_sources(args.pairs, d.scene_prefix, d.val_fraction):
        from nmr.data.pairs import FolderPairDataset

        moving_dir, fixed_dir, prefix, fraction = source
        fkw: dict[str, Any] = {
            'moving_suffix': args.moving_suffix,
            'fixed_suffix': args.fixed_suffix,
            'val_fraction': fraction,
            'scene_prefix': prefix,
        }
        folder_split = 'train' if split_val else 'all'
        parts.append((
            FolderPairDataset(moving_dir, fixed_dir, kind, split=folder_split, **fkw),
            FolderPairDataset(moving_dir, fixed_dir, kind, split='val', **fkw) if split_val else None,
            {'source': 'folders', 'moving_dir': str(moving_dir), 'fixed_dir': str(fixed_dir), 'scene_prefix': prefix,
             'val_fraction': fraction},
        ))
    train = parts[0][0] if len(parts) == 1 else ConcatDataset([p[0] for p in parts])
    vals = [p[1] for p in parts if p[1] is not None and len(p[1]) > 0]
    val: Any = None if not vals else (vals[0] if len(vals) == 1 else ConcatDataset(vals))
    summary: dict[str, Any] = (
        dict(parts[0][2])
        if len(parts) == 1
        else {'source': 'mixed', 'sources': [{**p[2], 'train_pairs': len(p[0])} for p in parts]}
    )
    if args.val_manifest:
        from nmr.data.pairs import ManifestDataset

        val = ManifestDataset(args.val_manifest, kind)
        summary['val_manifest'] = str(args.val_manifest)
    if d.max_pairs > 0 and len(train) > d.max_pairs:
        train = Subset(train, range(d.max_pairs))
    summary['split'] = f'val_fraction {d.val_fraction}' if split_val else 'explicit or none'
    return TrainData(train=train, val=val, summary=summary)


def run(args: argparse.Namespace) -> int:
    from nmr.training.config import dump_config, load_config

    overrides = list(args.overrides)
    if args.pair:
        overrides.append(f'data.pair={args.pair}')
    config_path = (
        args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    )
    cfg = load_config(config_path, overrides)
    if args.print_config:
        print(dump_config(cfg), end='')
        return 0
    if not (args.bag or args.manifest or args.pairs):
        raise ConfigError('nmr train needs training data: --bag, --manifest and/or --pairs')
    folders = [p for src in pair_sources(args.pairs, cfg.data.scene_prefix, cfg.data.val_fraction) for p in src[:2]]
    for p in (args.bag or []) + ([args.manifest] if args.manifest else []) + folders:
        if not Path(p).exists():
            raise ConfigError(f'training data {p} does not exist; check the path')
    from nmr.training.trainer import Trainer

    data = build_data(args, cfg)
    if data.val is None or len(data.val) == 0:
        import sys

        print('nmr train: warning: 0 validation pairs: no validation score, and best.pt will be the last '
              "epoch's model; pass --val-manifest CSV, or set data.val_fraction (bags are split in blocks of "
              'data.block_s seconds: shorter blocks for a short bag; folders: data.scene_prefix=N splits by '
              'scene, the first N characters of each stem)', file=sys.stderr)
    try:
        result = Trainer(cfg, data, args.out, resume=args.resume, init=args.init).fit()
    except KeyboardInterrupt:  # SIGINT or SIGTERM (nmr.cli.main): checkpoints are whole (written atomically)
        last = Path(args.out) / 'last.pt'
        kept = f'{last} holds the last completed epoch: continue with --resume' if last.is_file() else \
            'no epoch was completed, nothing was saved'
        raise KeyboardInterrupt(kept) from None
    best = result.get('best')
    print(
        f'done: {result["steps"]} steps; best validation score {f"{best:.4g}" if best is not None else "n/a"}; '
        f'model {args.out / "best.pt"}'
    )
    return 0
