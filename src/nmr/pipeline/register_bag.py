"""`nmr register-bag IN... --out OUT_BAG`: the register node's processing, offline, bag in -> bag out.

Same parameters (config/register.yaml format, `--config`, `--set NAME=VALUE`), same synchroniser (one
ApproxTimeSynchronizer per pair, fed in bag order), same PairProcessor and same fused resampling as
`register_node`, so the output topics, encodings, headers and arrays are those the node would publish.
One difference by design: offline nothing is late, so EVERY synchronised set is registered (the node
drops stale sets when inference cannot keep up).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nmr.errors import BagError, ConfigError
from nmr.pipeline.fused import fuse
from nmr.pipeline.outputs import PairProcessor
from nmr.pipeline.settings import (
    PAIRS,
    NodeSettings,
    create_registrar,
    model_path,
    read_params_file,
    validate,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('inputs', nargs='+', type=Path, metavar='IN', help='input rosbag2 bag(s)')
    parser.add_argument('--out', required=True, type=Path, metavar='OUT_BAG',
                        help='output rosbag2 bag folder (metadata.yaml + OUT_BAG.mcap inside); a name ending '
                             'in .mcap names the file: out.mcap -> folder out/ with out.mcap inside')
    parser.add_argument('--config', type=Path, default=None,
                        help='register_node parameters file (default: the built-in defaults = '
                             'config/register.yaml)')
    parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                        help='override one parameter, e.g. --set sync.slop_s=0.05 --set pairs=[rgb_lwir]')
    parser.add_argument('--model-rgb-lwir', type=Path, default=None, help='model for rgb_lwir')
    parser.add_argument('--model-rgb-depth', type=Path, default=None, help='model for rgb_depth')
    parser.add_argument('--pairs', nargs='+', choices=sorted(PAIRS), default=None, help='pairs to run')
    parser.add_argument('--backend', default=None, help='auto | tensorrt | onnxruntime | torch')
    parser.add_argument('--device', default=None, help='auto | cpu | cuda | cuda:N')
    parser.add_argument('--namespace', default='/nmr',
                        help="topic prefix of the outputs (the launch file's default namespace: /nmr)")
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output storage')
    parser.add_argument('--copy-inputs', action='store_true', help='also write the input images')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='also say which inference backends were passed over, and why')


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    """Parameters file, then --set, then the dedicated options (each later one wins)."""
    values: dict[str, Any] = read_params_file(args.config) if args.config else {}
    for item in args.set:
        name, sep, text = item.partition('=')
        if not sep:
            raise ConfigError(f'--set {item!r}: expected NAME=VALUE')
        values[name.strip()] = yaml.safe_load(text)
    for option, name in (('model_rgb_lwir', 'models.rgb_lwir'), ('model_rgb_depth', 'models.rgb_depth'),
                         ('backend', 'backend'), ('device', 'device')):
        value = getattr(args, option)
        if value is not None:
            values[name] = str(value)
    if args.pairs:
        values['pairs'] = list(args.pairs)
    return validate(values)


@dataclass
class PairCounts:
    """What happened to one pair's frames: offered -> synchronised -> registered, and why the rest went."""

    offered_rgb: int = 0
    offered_fixed: int = 0
    synchronised: int = 0
    registered: int = 0
    unmatched_rgb: int = 0     # RGB frames with no fixed frame within the slop (or left over at the end)
    unmatched_fixed: int = 0   # fixed frames with no RGB frame within the slop (or left over at the end)

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class BackendLog:
    """Log of backend selection: the chosen backend always, the ones passed over only with --verbose.

    create_registrar prefixes its lines with 'nmr: '; this log prints them under one prefix instead.
    """

    def __init__(self, prefix: str, verbose: bool) -> None:
        self.prefix, self.verbose = prefix, verbose
        self.chosen: list[str] = []

    def __call__(self, text: str) -> None:
        text = text.removeprefix('nmr: ')
        chosen = text.startswith('backend ') and ' chosen: ' in text
        if chosen:  # 'backend onnxruntime-cpu chosen: <details>' -> 'onnxruntime-cpu'
            self.chosen.append(text.split(' chosen: ', 1)[0].removeprefix('backend '))
        if self.verbose or not (chosen or (text.startswith('backend ') and ' skipped: ' in text)):
            print(f'{self.prefix}: {text}', file=sys.stderr)

    def summary(self, pairs: list[str]) -> str:
        """'backend onnxruntime-cpu for rgb_lwir, rgb_depth' (per pair where they differ)."""
        if len(set(self.chosen)) == 1:
            return f'backend {self.chosen[0]} for {", ".join(pairs)}'
        return 'backends ' + '; '.join(f'{p}: {c}' for p, c in zip(pairs, self.chosen))


@dataclass
class _Result:
    flow: np.ndarray
    registered: np.ndarray
    fixed: tuple[np.ndarray, str, Any, int]   # array, encoding, header, stamp_ns
    rgb_hw: tuple[int, int]
    rgb_stamp: int


class _Progress:
    """A one-line progress bar on stderr (no tqdm dependency)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = max(total, 1), quiet
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def step(self, sets: int) -> None:
        self.done += 1
        now = time.monotonic()
        if self.quiet or (now - self.last < 0.2 and self.done < self.total):
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        eta = (now - self.start) * (1 - frac) / frac if frac > 0 else 0.0
        bar = '#' * int(30 * frac)
        sys.stderr.write(f'\r[{bar:<30}] {self.done}/{self.total} msgs, {sets} sets registered, '
                         f'ETA {eta:5.0f} s')
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write('\n')


def count_messages(paths: Iterable[Path], topics: Iterable[str]) -> int:
    """Messages on `topics` (bag metadata only, for the progress bar)."""
    from rosbags.highlevel import AnyReader

    wanted = set(topics)
    try:
        with AnyReader(list(paths)) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic in wanted)
    except Exception:
        return 0


def make_processors(settings: NodeSettings, log: Any = print) -> dict[str, PairProcessor]:
    """One PairProcessor per configured pair (ModelFileError naming a missing or wrong model)."""
    from nmr.errors import ModelFileError

    processors = {}
    for pair in settings.pairs:
        path = model_path(settings, pair)
        if not path.is_file():
            option = '--model-' + pair.replace('_', '-')
            raise ModelFileError(f'model file {path} for {pair} does not exist: pass {option} or run only '
                                 'the other pair (--pairs)')
        registrar = create_registrar(path, settings, pair, log)
        processors[pair] = PairProcessor(registrar, pair, settings.overlay_alpha, settings.flow_viz_max_px)
    return processors


def register_bag(args: argparse.Namespace) -> dict[str, Any]:
    """Register every synchronised set of the input bag(s) into `args.out`; returns counts per pair."""
    from nmr.data.bag_reader import iter_images, list_topics
    from nmr.data.bag_writer import BagWriter, bag_folder
    from nmr.data.encodings import stamp_ns, to_rgb
    from nmr.data.sync import ApproxTimeSynchronizer

    settings = settings_from_args(args)
    out_bag = bag_folder(args.out)
    ns = '/' + args.namespace.strip('/') if args.namespace.strip('/') else ''
    streams = {'rgb': 0, **{PAIRS[p]: 1 for p in settings.pairs}}
    topic_stream = {settings.inputs[s].topic: s for s in streams}
    available = list_topics(args.inputs)
    missing = [t for t in topic_stream if t not in available]
    if missing:
        raise BagError(f'input topic {missing[0]} is not in {", ".join(map(str, args.inputs))} (it has '
                       f'{", ".join(sorted(available))}); set topics.* with --config or --set')
    if out_bag.exists():
        raise ConfigError(f'output {out_bag} already exists: remove it or choose another --out')
    backend_log = BackendLog('nmr register-bag', getattr(args, 'verbose', False))
    processors = make_processors(settings, log=backend_log)
    if not backend_log.verbose:
        print(f'nmr register-bag: {backend_log.summary(list(settings.pairs))} (-v: the backends passed over)',
              file=sys.stderr)
    syncs = {p: ApproxTimeSynchronizer(2, settings.sync_slop_ns, settings.sync_queue_size)
             for p in settings.pairs}
    counts = {p: PairCounts() for p in settings.pairs}
    last: dict[str, _Result] = {}
    fused_done: tuple[int, int] | None = None
    last_stamp: dict[str, int] = {}
    progress = _Progress(count_messages(args.inputs, topic_stream), args.quiet)
    sets = 0
    with BagWriter(out_bag, storage=args.storage) as writer:
        for topic, _t, arr, encoding, header in iter_images(args.inputs, list(topic_stream)):
            stream = topic_stream[topic]
            stamp = stamp_ns(header)
            if args.copy_inputs:
                writer.write_image(topic, stamp, header.frame_id, arr, encoding)
            if stamp < last_stamp.get(stream, stamp):  # time went backwards (concatenated bags): as the node
                for sync in syncs.values():
                    sync.reset()
                last.clear()
                last_stamp.clear()
            last_stamp[stream] = stamp
            frame = (arr, encoding, header, stamp)
            for pair in settings.pairs:
                if stream not in ('rgb', PAIRS[pair]):
                    continue
                if stream == 'rgb':
                    counts[pair].offered_rgb += 1
                else:
                    counts[pair].offered_fixed += 1
                for rgb, fixed in syncs[pair].add(0 if stream == 'rgb' else 1, stamp, frame):
                    sets += 1
                    counts[pair].synchronised += 1
                    moving = to_rgb(rgb[0], rgb[1])
                    proc = processors[pair]
                    registration = proc.register(moving, fixed[0], fixed[1])
                    counts[pair].registered += 1
                    for name, (out, enc) in proc.outputs(registration, fixed[0], fixed[1],
                                                         settings.pair_outputs).items():
                        writer.write_image(f'{ns}/{pair}/{name}', fixed[3], fixed[2].frame_id, out, enc)
                    last[pair] = _Result(registration.flow, registration.registered, fixed,
                                         (int(moving.shape[0]), int(moving.shape[1])), rgb[3])
            if settings.fused and 'rgb_lwir' in last and 'rgb_depth' in last:
                a, b = last['rgb_lwir'], last['rgb_depth']
                key = (a.rgb_stamp, a.fixed[3])
                if a.rgb_stamp == b.rgb_stamp and key != fused_done:
                    fused_done = key
                    for name, (out, enc) in fuse(a.fixed[0], a.fixed[1], a.flow, a.registered, b.fixed[0],
                                                 b.fixed[1], b.flow, a.rgb_hw).items():
                        writer.write_image(f'{ns}/{name}', a.fixed[3], a.fixed[2].frame_id, out, enc)
            progress.step(sets)
    progress.close()
    for c in counts.values():  # whatever was not used in a set found no partner within the slop
        c.unmatched_rgb = c.offered_rgb - c.synchronised
        c.unmatched_fixed = c.offered_fixed - c.synchronised
    return {'out': out_bag, 'sets': sets, 'pairs': {p: c.as_json() for p, c in counts.items()},
            'backend': ', '.join(sorted(set(backend_log.chosen))) or 'none',
            'slop_ms': settings.sync_slop_ns / 1e6}


def run(args: argparse.Namespace) -> int:
    result = register_bag(args)
    print(f'nmr register-bag: {result["sets"]} synchronised sets registered -> {result["out"]}')
    return 0
