"""`nmr synth`: render a synthetic RGB + LWIR + depth rig into a rosbag2 bag with exact ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from nmr.data.bag_writer import bag_folder
from nmr.domain import DEFAULT_TOPICS, PAIRS
from nmr.errors import ConfigError
from nmr.synth.generator import RIG_TRUE_FILE, SynthConfig, generate, gt_topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, type=Path,
                        help='output bag folder, e.g. rig (it holds metadata.yaml and rig.mcap); a name '
                             'ending in .mcap names the file: rig.mcap -> folder rig/ with rig.mcap inside')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--frames', type=int, help='number of RGB frames (duration = frames / RGB rate)')
    length.add_argument('--duration', type=float, help='seconds of recording (default 3)')
    parser.add_argument('--seed', type=int, default=0, help='scene and noise seed; same seed, same bag')
    parser.add_argument(
        '--rig-seed', type=int, default=None, metavar='S',
        help='draw the rig itself from S (lenses, distortion, poses 2-15 cm / up to 3 deg apart, an LWIR '
             'time offset); without it, the default rig. The true rig is written to BAG/rig_true.yaml',
    )
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage')
    parser.add_argument(
        '--size-scale',
        type=float,
        default=1.0,
        help='scale every camera resolution (and intrinsics), e.g. 0.25 for tests',
    )
    parser.add_argument(
        '--lwir-rate', type=float, default=30.0, help='LWIR frame rate, Hz (Boson: 30, 60 or 9)'
    )
    parser.add_argument('--rgb-rate', type=float, default=30.0, help='RGB frame rate, Hz')
    parser.add_argument('--depth-rate', type=float, default=30.0, help='depth frame rate, Hz')
    parser.add_argument(
        '--export-pairs',
        type=Path,
        metavar='DIR',
        help='also write DIR/rgb_lwir/manifest.csv and DIR/rgb_depth/manifest.csv for nmr evaluate',
    )
    parser.add_argument(
        '--workers',
        type=int,
        default=0,
        help='processes rendering in parallel (default 0: one per core, at most 4)',
    )
    parser.add_argument('--overwrite', action='store_true', help='replace an existing bag at --out')


def output_folder(out: Path, overwrite: bool) -> Path:
    """The bag folder to write for `--out` (see bag_folder); ConfigError if it exists and may not be replaced."""
    folder = bag_folder(out)
    if folder.exists() and not overwrite:
        raise ConfigError(f'output bag {folder} already exists: pass --overwrite to replace it, or choose '
                          'another --out')
    return folder


def run(args: argparse.Namespace) -> int:
    out = output_folder(args.out, args.overwrite)

    if args.frames is not None:
        if args.frames < 1:
            raise ConfigError(f'--frames {args.frames}: give at least 1')
        duration = args.frames / args.rgb_rate
    else:
        duration = 3.0 if args.duration is None else args.duration
    cfg = SynthConfig(
        out=out,
        duration_s=duration,
        seed=args.seed,
        storage=args.storage,
        size_scale=args.size_scale,
        rgb_rate=args.rgb_rate,
        lwir_rate=args.lwir_rate,
        depth_rate=args.depth_rate,
        export_pairs=args.export_pairs,
        overwrite=args.overwrite,
        workers=args.workers,
        rig_seed=args.rig_seed,
    )
    result = generate(cfg, log=print)
    storage_file = result.path / f'{result.path.name}.{"mcap" if cfg.storage == "mcap" else "db3"}'
    print(
        f'nmr synth: wrote bag folder {result.path} ({storage_file} inside; seed {cfg.seed}, {duration:.2f} s, '
        f'{result.scene_objects} scene objects) in {result.elapsed_s:.1f} s with {result.workers} worker(s)'
    )
    rig_note = 'default rig' if cfg.rig_seed is None else f'rig drawn from --rig-seed {cfg.rig_seed}'
    print(f'  true rig ({rig_note}): {result.path / RIG_TRUE_FILE}')
    print('  /tf_static: the RealSense depth-colour extrinsics (the true depth pose), latched, as realsense2_camera '
          'publishes them')
    for name, cam in result.rig.cameras().items():
        topic = DEFAULT_TOPICS[name]
        print(
            f'  {topic}: {result.counts.get(topic, 0)} frames {cam.width}x{cam.height}, '
            f'render {result.render_ms[name]:.0f} ms/frame'
        )
    for pair, stats in result.pairs.items():
        flow_topic, valid_topic = gt_topics(pair)
        print(
            f'  {flow_topic} + {valid_topic}: {stats.frames} frames, '
            f'valid {100 * stats.valid_fraction:.0f} %, '
            f'|flow| mean {stats.mean_magnitude:.1f} max {stats.max_magnitude:.1f} px, '
            f'after plain resize mean {stats.mean_residual:.1f} max {stats.max_residual:.1f} px'
        )
    print(
        f'  ground truth: {result.gt_ms:.0f} ms/frame; each fixed frame is paired with the RGB frame '
        f'nearest in stamp'
    )
    if cfg.export_pairs is not None:
        for pair in PAIRS:
            print(f'  manifest: {cfg.export_pairs / pair / "manifest.csv"}')
        print(f"  true rig: {cfg.export_pairs / 'rig_true.yaml'} (for nmr evaluate --rig)")
    return 0
