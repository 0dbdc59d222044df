"""`nmr demo`: the main job on the embedded default, end to end, into one output folder.

1. `nmr synth` renders a short synthetic three-camera rig (RGB, LWIR, depth, with exact ground truth);
2. the real pipeline registers it with the default models: live (`nmr play` -> `register_node` over DDS,
   outputs recorded into a bag) or, where DDS is unavailable or `--mode offline`, `nmr register-bag`;
3. the outputs are scored against the rig's ground truth and drawn as Figure-4 contact sheets.

By default (`--rig drivers`) the pairs whose camera the bag's drivers describe are registered through
depth: the RealSense publishes its colour and depth camera_info and the depth-colour extrinsics on
/tf_static (nmr.calibration.drivers writes them as `rig_drivers.yaml`), so rgb_depth needs no calibration;
rgb_lwir stays with its network (no driver relates the LWIR camera to the RealSense). `--rig true` (the
synthetic rig's true geometry, `rig_true.yaml`) or `--rig RIG.yaml` (nmr calibrate) register both pairs
through depth; `--rig none` runs the networks alone. With a rig the node's `rig` parameter is set
(`--residual` adds the network's residual), and the networks alone are run as well (offline,
`registered_network/`), so that the summary compares the geometric flow with the network's on the same
frames.

Everything it writes goes under `--out`: `input_rig/` (the synthetic rosbag2 bag), `registered/` (rosbag2
bag, mcap storage: the node's outputs; its .mcap file opens in Foxglove), `contact_<pair>.png`,
`summary.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmr import atomic
from nmr.data.bag_reader import count_messages, iter_images
from nmr.data.encodings import to_rgb
from nmr.domain import DEFAULT_TOPICS, PAIR_FIXED_KIND, PAIRS
from nmr.errors import ConfigError, ModelFileError
from nmr.evaluation.baselines import identity_flow
from nmr.evaluation.figures import FigureRow, contact_sheet, write_flicker_gif, write_png
from nmr.evaluation.metrics import endpoint_error
from nmr.inference.model_file import read_model_info
from nmr.pipeline import register_bag
from nmr.pipeline.settings import default_model_path
from nmr.ros.demo_live import run_live_pipeline
from nmr.synth.generator import SynthConfig, generate, gt_topics

NAMESPACE = '/nmr'
DEMO_SEED = 20261124  # a seed never used for the default models' training bags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder (default out/demo)')
    parser.add_argument('--mode', choices=('auto', 'live', 'offline'), default='auto',
                        help='live: nmr play -> register_node over DDS; offline: nmr register-bag; '
                             'auto: live, falling back to offline when DDS does not come up')
    parser.add_argument('--duration', type=float, default=2.0, help='seconds of synthetic rig (default 2)')
    parser.add_argument('--size-scale', type=float, default=0.5,
                        help='camera resolution scale of the rig (default 0.5: RGB 320x240)')
    parser.add_argument('--seed', type=int, default=DEMO_SEED, help='rig seed')
    parser.add_argument('--model-rgb-lwir', type=Path, default=None, help='model (default: models/rgb_lwir)')
    parser.add_argument('--model-rgb-depth', type=Path, default=None, help='model (default: models/rgb_depth)')
    parser.add_argument('--backend', default='auto', help='auto | tensorrt | onnxruntime | torch')
    parser.add_argument('--rate', type=float, default=None,
                        help='live mode: playback rate factor (default 1; refused with --mode offline)')
    parser.add_argument('--sheets', type=int, default=4, help='frames per contact sheet (default 4)')
    parser.add_argument('--rig', default='drivers', metavar='drivers|none|true|RIG.yaml',
                        help="register through depth with a rig: 'drivers' (default) = what the bag's camera "
                             "drivers publish (RGB and depth camera_info, the RealSense's /tf_static; LWIR, which "
                             "no driver relates to the RealSense, stays with the network), 'none' = the networks "
                             "alone, 'true' = the synthetic rig's true geometry, or a rig file (nmr calibrate); "
                             'the summary compares the rig with the network alone')
    parser.add_argument('--residual', action='store_true',
                        help='with --rig: also compose the network\'s residual on the pre-warped pair')
    parser.add_argument('--overwrite', action='store_true',
                        help="replace the outputs of an earlier demo in --out (without it a non-empty --out "
                             'is refused)')


#: What a demo run writes into --out (and what --overwrite replaces); anything else there is left alone.
OUTPUT_NAMES = ('input_rig', 'registered', 'registered_network', 'rig_true.yaml', 'rig_drivers.yaml', 'summary.json',
                'register_node.log',
                'contact_*.png', 'flicker_*.gif')


def check_options(args: argparse.Namespace) -> None:
    """Options that contradict each other are refused, not resolved silently."""
    if args.rate is not None:
        if args.mode == 'offline':
            raise ConfigError('--rate sets the live playback speed and --mode offline plays nothing: drop '
                              '--rate, or use --mode live / auto')
        if not args.rate > 0:
            raise ConfigError(f'--rate {args.rate}: must be > 0')


def prepare_output(out: Path, overwrite: bool) -> None:
    """Create --out, refusing one that holds anything unless --overwrite (then the demo's own outputs go).

    Why: the demo used to delete `registered/` and `input_rig/` in whatever folder it was given, files
    the user had put there included, and a second run replaced the first without a word.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f'--out {out} is a file, not a folder: choose another --out')
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f'--out {out}: {parent} is a file, not a folder: choose another --out')
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ', '.join(held[:4]) + (f' and {len(held) - 4} more' if len(held) > 4 else '')
        raise ConfigError(f'output folder {out} is not empty (it holds {shown}): pass --overwrite to replace '
                          "an earlier demo's outputs there, or choose another --out")
    for pattern in OUTPUT_NAMES if held else ():
        for stale in out.glob(pattern):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class PairScore:
    """Alignment of one pair's published flows against the rig's ground truth."""

    frames: int = 0
    epe_before: list[float] = field(default_factory=list)
    epe_after: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        before = float(np.mean(self.epe_before)) if self.epe_before else math.nan
        after = float(np.mean(self.epe_after)) if self.epe_after else math.nan
        return {'frames': self.frames, 'epe_before_px': round(before, 3), 'epe_after_px': round(after, 3),
                'epe_percent_of_unregistered': round(100.0 * after / before, 1) if before > 0 else None}


def default_models(args: argparse.Namespace) -> dict[str, Path]:
    """The model of each pair, checked before anything is rendered: it exists, loads, and is for that pair."""
    chosen = {'rgb_lwir': args.model_rgb_lwir, 'rgb_depth': args.model_rgb_depth}
    models = {}
    for pair in PAIRS:
        option = '--model-' + pair.replace('_', '-')
        path = Path(chosen[pair]) if chosen[pair] else default_model_path(pair)
        if not path.is_file() and chosen[pair]:
            raise ModelFileError(f'{option} {path}: no such file; check the path, or leave {option} out to '
                                 'use the default model')
        if not path.is_file():
            raise ModelFileError(f'default model for {pair} not found at {path}: pass {option} or restore '
                                 'models/ from git')
        info = read_model_info(path)  # a corrupt or wrong-pair model fails here, in a second
        info.metadata.check_pair(pair, info.path)
        models[pair] = path
    return models


def make_rig(args: argparse.Namespace, bag: Path) -> None:
    if args.duration <= 0 or args.size_scale <= 0:
        raise ConfigError('--duration and --size-scale must be positive')
    print(f'[1/3] nmr synth: {args.duration:.1f} s of rig at scale {args.size_scale} -> {bag}')
    generate(SynthConfig(out=bag, duration_s=args.duration, seed=args.seed, size_scale=args.size_scale),
             log=None)


def rig_file(args: argparse.Namespace, out: Path) -> Path | None:
    """The rig file of `--rig`: 'true' writes the synthetic rig's true geometry to out/rig_true.yaml;
    'drivers' names out/rig_drivers.yaml, written from the rendered bag by `drivers_rig`."""
    from nmr.geometry.rig import Rig
    from nmr.synth.cameras import default_rig

    if args.rig is None or args.rig.lower() == 'none':
        return None
    if args.rig.lower() == 'drivers':
        return out / 'rig_drivers.yaml'
    if args.rig.lower() == 'true':
        path = out / 'rig_true.yaml'
        Rig.from_synth(default_rig(args.size_scale)).save(path)
        return path
    path = Path(args.rig)
    if not path.is_file():
        raise ConfigError(f"--rig {path}: no such file; give a RIG.yaml, 'drivers' (what the camera drivers "
                          "publish) or 'true' (the synthetic rig's own)")
    Rig.load(path)  # a bad rig file fails here, before anything is rendered (one-line ConfigError)
    return path


def drivers_rig(bag: Path, path: Path) -> None:
    """Write the rig the bag's drivers describe (nmr.calibration.drivers: camera_info and /tf_static)."""
    from nmr.calibration.drivers import rig_from_drivers

    rig, notes = rig_from_drivers([bag], DEFAULT_TOPICS)
    rig.save(path)
    print(f'[1b/3] rig from the drivers (camera_info, /tf_static) -> {path}: ' + '; '.join(notes))


def rig_cameras(rig: Path | None) -> list[str]:
    from nmr.geometry.rig import Rig

    return Rig.load(rig).names() if rig is not None else []


def run_offline(args: argparse.Namespace, bag: Path, models: dict[str, Path], out_bag: Path,
                rig: Path | None = None, step: str = '[2/3]') -> dict[str, Any]:
    what = f' through the rig {rig}' if rig is not None else ''
    print(f'{step} nmr register-bag (offline){what}: {bag} -> {out_bag}')
    bag_args = argparse.Namespace(
        inputs=[bag], out=out_bag, config=None, set=[], model_rgb_lwir=models['rgb_lwir'],
        model_rgb_depth=models['rgb_depth'], pairs=list(PAIRS), backend=args.backend, device=None,
        namespace=NAMESPACE, storage='mcap', copy_inputs=False, quiet=False, verbose=False, rig=rig,
        residual=('on' if args.residual else 'off') if rig is not None else None)
    start = time.monotonic()
    result = register_bag.register_bag(bag_args)
    counts = {pair: {'synchronised': c['synchronised'], 'processed': c['registered'], 'dropped_stale': 0,
                     'dropped_unmatched': c['unmatched_rgb'] + c['unmatched_fixed'], 'errors': 0}
              for pair, c in result['pairs'].items()}
    return {'mode': 'offline (nmr register-bag)', 'wall_s': round(time.monotonic() - start, 2),
            'backend': result['backend'], 'node_counts': counts}


def run_live(args: argparse.Namespace, bag: Path, models: dict[str, Path], out_bag: Path,
             rig: Path | None = None) -> dict[str, Any]:
    print(f'[2/3] live: nmr play {bag} -> register_node -> recorder -> {out_bag}')
    params = {'rig': str(rig.resolve()), 'residual': 'true' if args.residual else 'false'} if rig is not None else None
    return run_live_pipeline(bag, models, out_bag, NAMESPACE, args.backend, args.rate or 1.0, params)


def score_and_draw(bag: Path, out_bag: Path, out_dir: Path, sheets: int,
                   titles: dict[str, str] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """EPE of the published flows vs the rig's ground truth (matched on the fixed frame's stamp), and the
    figures: a contact sheet (`contact_<pair>.png`) and a flicker GIF (`flicker_<pair>.gif`) per pair."""
    published: dict[tuple[str, int], dict[str, Any]] = {}
    for topic, _t, arr, _enc, header in iter_images([out_bag], [f'{NAMESPACE}/{p}/{o}' for p in PAIRS
                                                                for o in ('flow', 'registered')]):
        pair, output = topic.split('/')[-2:]
        stamp = header.stamp.sec * 10**9 + header.stamp.nanosec
        entry = published.setdefault((pair, stamp), {})
        entry[output] = np.array(arr)
        entry['frame_id'] = header.frame_id

    scores = {p: PairScore() for p in PAIRS}
    gt: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    fixed_frames: dict[tuple[str, int], tuple[np.ndarray, str]] = {}
    rgb_frames: list[tuple[int, np.ndarray]] = []
    fixed_topic = {DEFAULT_TOPICS[PAIR_FIXED_KIND[p]]: p for p in PAIRS}
    gt_topic = {t: (p, kind) for p in PAIRS for t, kind in zip(gt_topics(p), ('flow', 'valid'))}
    topics = [DEFAULT_TOPICS['rgb'], *fixed_topic, *gt_topic]
    for topic, _t, arr, enc, header in iter_images([bag], topics):
        stamp = header.stamp.sec * 10**9 + header.stamp.nanosec
        if topic == DEFAULT_TOPICS['rgb']:
            rgb_frames.append((stamp, to_rgb(arr, enc)))
        elif topic in fixed_topic:
            fixed_frames[(fixed_topic[topic], stamp)] = (np.array(arr), enc)
        else:
            pair, kind = gt_topic[topic]
            gt.setdefault((pair, stamp), {})[kind] = np.array(arr)

    rgb_stamps = np.array([s for s, _ in rgb_frames], dtype=np.int64)
    candidates: dict[str, list[FigureRow]] = {p: [] for p in PAIRS}
    for (pair, stamp), outputs in sorted(published.items(), key=lambda kv: kv[0][1]):
        if 'flow' not in outputs or (pair, stamp) not in gt:
            continue
        truth = gt[(pair, stamp)]
        flow, valid = outputs['flow'], truth['valid'] > 0
        moving = rgb_frames[int(np.argmin(np.abs(rgb_stamps - stamp)))][1]
        ident = identity_flow(flow.shape[:2], moving.shape[:2])
        score = scores[pair]
        score.frames += 1
        score.epe_before.append(endpoint_error(ident, truth['flow'], valid))
        score.epe_after.append(endpoint_error(flow, truth['flow'], valid))
        if 'registered' in outputs and (pair, stamp) in fixed_frames:
            fixed_raw, enc = fixed_frames[(pair, stamp)]
            before_error = np.hypot(*(ident - truth['flow']).transpose(2, 0, 1)).astype(np.float32)
            candidates[pair].append(FigureRow(
                moving, fixed_raw, PAIR_FIXED_KIND[pair], enc, outputs['registered'], flow,
                label=f'{outputs["frame_id"]} @ {stamp / 1e9:.3f} s',
                epe_before=score.epe_before[-1], epe_after=score.epe_after[-1],
                error_map=np.where(valid, before_error, np.nan)))
    written = []
    for pair, found in candidates.items():
        rows = pick_rows(found, sheets)
        if rows:
            title = (titles or {}).get(pair, f'nmr demo: {pair}')
            written.append(write_png(out_dir / f'contact_{pair}.png', contact_sheet(rows, title)))
            written.append(write_flicker_gif(out_dir / f'flicker_{pair}.gif', rows[0]))
    return {p: s.summary() for p, s in scores.items()}, written


def pick_rows(rows: list[FigureRow], count: int) -> list[FigureRow]:
    """`count` rows spread over the run, from the frames whose fixed image has the most content.

    Why: the first frames of the rig were drawn, and a depth camera sees nothing of the sky and far
    buildings, so the depth sheet was mostly grey. Frames with at least 90 % of the best frame's valid
    fraction qualify; among them, evenly spaced ones are taken (in time order).
    """
    if count <= 0 or not rows:
        return []

    def content(row: FigureRow) -> float:
        if row.fixed_kind != 'depth':
            return 1.0
        raw = np.asarray(row.fixed_raw, np.float32)
        return float((np.isfinite(raw) & (raw > 0)).mean())

    fractions = [content(r) for r in rows]
    good = [r for r, f in zip(rows, fractions) if f >= 0.9 * max(fractions)]
    if len(good) <= count:
        return good
    picks = np.linspace(0, len(good) - 1, count).round().astype(int)
    return [good[i] for i in picks]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    check_options(args)
    bag, out_bag, net_bag = out / 'input_rig', out / 'registered', out / 'registered_network'
    models = default_models(args)
    prepare_output(out, args.overwrite)
    rig = rig_file(args, out)
    start = time.monotonic()
    make_rig(args, bag)
    if rig is not None and args.rig.lower() == 'drivers':
        drivers_rig(bag, rig)
    cameras = rig_cameras(rig)
    if args.mode == 'offline':
        run_info = run_offline(args, bag, models, out_bag, rig)
    else:
        try:
            run_info = run_live(args, bag, models, out_bag, rig)
        except RuntimeError as err:  # DDS / rclpy unavailable or nothing delivered
            if args.mode == 'live':
                raise
            ignored = f' (--rate {args.rate} does not apply offline)' if args.rate is not None else ''
            print(f'live pipeline unavailable ({err}); falling back to nmr register-bag{ignored}',
                  file=sys.stderr)
            if out_bag.exists():
                shutil.rmtree(out_bag)
            run_info = run_offline(args, bag, models, out_bag, rig)
    network_scores = None
    if rig is not None:  # the comparison: the network alone on the same frames
        run_offline(args, bag, models, net_bag, None, step='[2b/3]')
        network_scores, _ = score_and_draw(bag, net_bag, out, 0)
    print('[3/3] scoring against the rig ground truth and drawing contact sheets')
    backend = run_info.get('backend', 'see log')
    how = f'   rig {rig}' + (' + residual' if args.residual else ' (geometry)') if rig is not None else ''
    titles = {p: f'nmr demo   pair {p}   model {models[p]}   backend {backend}'
                 f'{how if PAIR_FIXED_KIND[p] in cameras else ""}' for p in PAIRS}
    scores, figures = score_and_draw(bag, out_bag, out, args.sheets, titles)
    frames = frame_counts(bag, run_info.pop('node_counts', {}), run_info.pop('processed_per_pair', {}))
    summary = {'models': {p: str(m) for p, m in models.items()}, **run_info, 'frames': frames,
               'alignment': scores,
               **({'rig': str(rig), 'rig_cameras': cameras, 'residual': bool(args.residual),
                   'alignment_network_only': network_scores}
                  if rig is not None else {}),
               'outputs': {'bag': str(out_bag), 'mcap': [str(p) for p in sorted(out_bag.glob('*.mcap'))],
                           'contact_sheets': [str(f) for f in figures if f.suffix == '.png'],
                           'flicker_gifs': [str(f) for f in figures if f.suffix == '.gif']},
               'total_s': round(time.monotonic() - start, 1)}
    atomic.write_text(out / 'summary.json', json.dumps(summary, indent=2) + '\n')
    print_summary(summary, out)
    return 0


def frame_counts(bag: Path, node_counts: dict[str, dict[str, int]],
                 processed: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per pair: frames offered (played from the rig), synchronised into sets, processed, and dropped.

    `node_counts` are the pipeline's own counters (register_node's last /diagnostics, or register-bag's);
    `processed` (flows recorded per pair) stands in where the node's counters did not arrive.
    """
    rgb = count_messages(bag, [DEFAULT_TOPICS['rgb']])
    out: dict[str, dict[str, Any]] = {}
    for pair in PAIRS:
        counts: dict[str, Any] = {'offered': count_messages(bag, [DEFAULT_TOPICS[PAIR_FIXED_KIND[pair]]]),
                                  'offered_rgb': rgb}
        counts.update(node_counts.get(pair) or {'processed': processed.get(pair, 0)})
        out[pair] = counts
    return out


DROP_REASONS = {
    'dropped_stale': 'stale: a newer set arrived while the model was still busy, and the node registers the '
                     'newest set (inference here is slower than the cameras\' frame rate)',
    'dropped_unmatched': 'unmatched: a frame with no partner of the other camera within the sync slop',
    'errors': 'errors: sets that failed (see the node log)',
}


def frames_line(pair: str, c: dict[str, Any]) -> str:
    """'rgb_lwir: 60 LWIR + 60 RGB frames -> 59 synchronised sets -> 10 registered; dropped: 49 stale, ...'."""
    fixed = PAIR_FIXED_KIND[pair].upper() if PAIR_FIXED_KIND[pair] == 'lwir' else PAIR_FIXED_KIND[pair]
    text = f'{pair}: {c["offered"]} {fixed} + {c["offered_rgb"]} RGB frames -> '
    if 'synchronised' in c:
        text += f'{c["synchronised"]} synchronised sets -> '
    text += f'{c["processed"]} registered'
    dropped = [f'{c[k]} {k.split("_", 1)[-1]}' for k in DROP_REASONS if c.get(k)]
    if dropped:
        text += '; dropped: ' + ', '.join(dropped)
    elif 'synchronised' not in c:
        text += ' (the node\'s counters did not arrive: see register_node.log)'
    return text


def verdict(percent: float | None) -> str:
    """The alignment change in words (network or rig): above 100 % the registration made it worse."""
    if percent is None or not math.isfinite(percent):
        return 'no ground truth to compare with'
    if percent > 102.0:
        return 'WORSE than no registration: registration added misalignment'
    if percent >= 98.0:
        return 'about the same as no registration: registration did not help'
    return f'registration removed {100.0 - percent:.0f} % of the misalignment'


def print_summary(summary: dict[str, Any], out: Path) -> None:
    print('\n== nmr demo summary')
    print(f'pipeline: {summary["mode"]}, backend {summary.get("backend", "see log")}, '
          f'{summary["total_s"]} s in all')
    print('frames per pair (the rig\'s frames of both cameras -> sets of one fixed-camera frame and the RGB '
          'frame nearest in time -> sets registered):')
    for pair, counts in summary['frames'].items():
        print('  ' + frames_line(pair, counts))
    reasons = [why for key, why in DROP_REASONS.items() if any(c.get(key) for c in summary['frames'].values())]
    for why in reasons:
        print(f'  {why}')
    for key in ('latency_ms_median', 'latency_ms_p99'):
        if summary.get(key) is not None:
            print(f'{key.replace("_", " ")}: {summary[key]}')
    rig = summary.get('rig')
    how = ('through the rig' + (' + residual' if summary.get('residual') else ' (geometry only)')) if rig else ''
    cameras = summary.get('rig_cameras', [])
    for pair, s in summary['alignment'].items():
        covered = bool(how) and PAIR_FIXED_KIND[pair] in cameras
        pair_how = how if covered else (
            f'by the network (the rig has no {PAIR_FIXED_KIND[pair]} camera)' if how else '')
        print(f'{pair}: {s["frames"]} frames scored, EPE {s["epe_before_px"]} px unregistered -> '
              f'{s["epe_after_px"]} px registered{" " + pair_how if pair_how else ""} '
              f'({s["epe_percent_of_unregistered"]} % of unregistered: '
              f'{verdict(s["epe_percent_of_unregistered"])})')
        net = (summary.get('alignment_network_only') or {}).get(pair)
        if net and covered:
            print(f'{" " * len(pair)}  network only: {net["epe_after_px"]} px '
                  f'({net["epe_percent_of_unregistered"]} % of unregistered)')
    print('(the demo renders its own scene: these numbers are not the evaluation of models/README.md)')
    if not rig:
        print('(the networks alone; with the rig the drivers publish, depth is registered through its own '
              'measurement: nmr demo --rig drivers (the default); a calibrated rig does LWIR too: README '
              '"Calibrate your rig")')
    names = [Path(p).name for p in summary['outputs']['contact_sheets'] + summary['outputs']['flicker_gifs']]
    mcap = ', '.join(str(Path(p).relative_to(out)) for p in summary['outputs']['mcap'])
    print(f'outputs in {out}/: {mcap} (the outputs bag: open it in Foxglove), '
          + ', '.join(names) + ', summary.json')
