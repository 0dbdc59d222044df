"""`nmr register-bag IN... --out OUT_BAG`: the register node's processing, offline, bag in -> bag out.

The bag adapter of nmr.pipeline.core.FrameSetCore (`register_node` is the ROS adapter): same parameters
(config/register.yaml format, `--config`, `--set NAME=VALUE`), and the same core for synchronisation
(frames fed in bag record order), time jumps (concatenated bags), registration and fused pairing, so the
output topics, encodings, headers and arrays are those the node would publish. One difference by design:
offline nothing is late, so the core keeps EVERY synchronised set (keep='all'; the node keeps the newest
and drops stale sets when inference cannot keep up).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from nmr.data.bag_reader import count_messages, iter_images, list_topics, missing_messages, missing_text, open_bag
from nmr.data.bag_writer import BagWriter, bag_folder, header_msg
from nmr.data.encodings import stamp_ns
from nmr.domain import BACKEND_CHOICES, PAIR_FIXED_KIND, PAIRS, STREAM_ENCODINGS
from nmr.errors import DISK_FULL, BagError, ConfigError, ModelFileError, NmrUserError
from nmr.geometry.registration import GeometricStage
from nmr.pipeline.core import Frame, FrameSetCore, Outputs
from nmr.pipeline.geometric import core_rig_options
from nmr.pipeline.outputs import NonFiniteFlowError, PairInputError, PairProcessor
from nmr.pipeline.settings import (
    NodeSettings,
    camera_info_topic,
    create_registrar,
    geometry_for,
    load_geometry,
    make_processor,
    model_path,
    read_params_file,
    validate,
)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
#: metadata.yaml custom_data key: 'complete', or 'partial: ...' when the run ended early
STATUS_KEY = 'nmr.register_bag'


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
    parser.add_argument('--pairs', nargs='+', choices=PAIRS, default=None, help='pairs to run')
    parser.add_argument('--backend', default=None, help=' | '.join(BACKEND_CHOICES))
    parser.add_argument('--device', default=None, help='auto | cpu | cuda | cuda:N')
    parser.add_argument('--rig', type=Path, default=None, metavar='RIG.yaml',
                        help='register through depth with this rig file (geometric flow; P/valid added); needs '
                             'the depth topic in the bag (else a plane model, said once)')
    parser.add_argument('--residual', choices=('on', 'off'), default=None,
                        help='with --rig: also compose the network\'s residual (on) or geometry only (off, '
                             'the default: parameter residual)')
    parser.add_argument('--namespace', default='/nmr',
                        help="topic prefix of the outputs (the launch file's default namespace: /nmr)")
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output storage')
    parser.add_argument('--copy-inputs', action='store_true', help='also write the input images')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='also say which inference backends were passed over, and why')


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    """Parameters file, then --set, then the dedicated options (a later one overrides the file's value).

    A dedicated option and a --set of the same parameter with another value are refused: which one the
    user meant cannot be guessed (`--pairs rgb_lwir --set pairs=[rgb_depth]` used to run rgb_lwir silently).
    """
    values: dict[str, Any] = read_params_file(args.config) if args.config else {}
    given: dict[str, tuple[str, Any]] = {}   # parameter -> (the --set text, its value)
    for item in args.set:
        name, sep, text = item.partition('=')
        if not sep:
            raise ConfigError(f'--set {item!r}: expected NAME=VALUE')
        values[name.strip()] = yaml.safe_load(text)
        given[name.strip()] = (item, values[name.strip()])
    options: list[tuple[str, str, Any]] = []   # (option as typed, parameter, value)
    for option, name in (('model_rgb_lwir', 'models.rgb_lwir'), ('model_rgb_depth', 'models.rgb_depth'),
                         ('backend', 'backend'), ('device', 'device')):
        value = getattr(args, option)
        if value is not None:
            options.append((f'--{option.replace("_", "-")} {value}', name, str(value)))
    if args.pairs:
        options.append((f'--pairs {" ".join(args.pairs)}', 'pairs', list(args.pairs)))
    if getattr(args, 'rig', None) is not None:
        options.append((f'--rig {args.rig}', 'rig', str(args.rig)))
    if getattr(args, 'residual', None) is not None:
        options.append((f'--residual {args.residual}', 'residual', args.residual == 'on'))
    for typed, name, value in options:
        if name in given and given[name][1] != value:
            raise ConfigError(f'{typed} and --set {given[name][0]} disagree: give only one of them')
        values[name] = value
    return validate(values)


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


def check_input_topics(settings: NodeSettings, streams: list[str], available: dict[str, str],
                       bags: Iterable[Path]) -> None:
    """Every input topic is in the bags; if only its compressed form is, say which `transport` to set."""
    for stream in streams:
        wanted = settings.inputs[stream].subscribed_topic
        if wanted in available:
            expected = IMAGE_TYPE if wanted == settings.inputs[stream].topic else COMPRESSED_TYPE
            if available[wanted] != expected:
                same = ', '.join(sorted(t for t, m in available.items() if m == expected)) or 'none'
                raise BagError(f'input topic {wanted} in {", ".join(map(str, bags))} is {available[wanted]}, not '
                               f'{expected}; set topics.{stream} to an {expected.rsplit("/", 1)[-1]} topic '
                               f'(this bag has: {same}) or transport.{stream} to match it')
            continue
        base = settings.inputs[stream].topic
        other = [t for t in (base, f'{base}/compressed', f'{base}/compressedDepth') if t in available]
        if other:
            transport = other[0].rpartition('/')[2] if other[0] != base else 'raw'
            hint = f'the bag has {other[0]}: run with --set transport.{stream}={transport}'
        else:
            hint = f'it has {", ".join(sorted(available))}; set topics.{stream} with --config or --set'
        raise BagError(f'input topic {wanted} is not in {", ".join(map(str, bags))}: {hint}')


def check_out_outside(out: Path, inputs: Iterable[Path]) -> None:
    """ConfigError when the output would be written inside an input bag's folder: readers take every
    storage file of a bag folder, so the output would become part of the input."""
    target = out.resolve()
    for bag in inputs:
        folder = bag if bag.is_dir() else bag.parent
        if not bag.is_dir() and not (folder / 'metadata.yaml').is_file():
            continue  # a lone storage file: its folder is not a bag
        if target.is_relative_to(folder.resolve()):
            raise ConfigError(f'--out {out} is inside the input bag {bag}: choose a folder outside it')


def read_camera_infos(paths: Iterable[Path], topics: dict[str, str]
                      ) -> tuple[dict[str, list[tuple[int, Any]]], str | None]:
    """(stream -> [(stamp ns, CameraInfo)] sorted, for the fixed cameras whose camera_info the bag holds;
    what went wrong reading them, or None).

    Read before the images: camera_info messages are small (one per frame at most). Damage met here (a
    chunk failing its CRC, a bad index) does not end the run before it started: the infos read until then
    are used, the images are registered as far as they can be read, and the output is marked partial with
    this reason (the same as damage met among the images). A message that does not deserialise is skipped.
    """
    found: dict[str, list[tuple[int, Any]]] = {}
    by_topic = {t: s for s, t in topics.items()}
    paths = list(paths)
    problem = None
    with open_bag(paths) as reader:
        conns = [c for c in reader.connections if c.topic in by_topic and c.msgtype.endswith('/CameraInfo')]
        if not conns:  # messages(connections=[]) would read every connection
            return {}, None
        read: Counter[str] = Counter()
        try:
            for conn, _t, raw in reader.messages(connections=conns):
                read[conn.topic] += 1
                try:
                    msg: Any = reader.deserialize(raw, conn.msgtype)
                except Exception:
                    continue
                found.setdefault(by_topic[conn.topic], []).append((stamp_ns(msg.header), msg))
            missing = missing_messages(reader, read, [c.topic for c in conns])
            if missing:
                problem = missing_text(paths, missing)
        except Exception as exc:
            problem = f'error while reading camera_info from bag {", ".join(map(str, paths))}: {exc} ' \
                      '(damaged storage?): check it with `nmr recover-bag`'
    return {s: sorted(v, key=lambda x: x[0]) for s, v in found.items()}, problem


def camera_info_at(infos: list[tuple[int, Any]], stamp: int) -> Any:
    """The newest camera_info at or before `stamp` (the first one when all are later)."""
    i = bisect.bisect_right([s for s, _m in infos], stamp)
    return infos[max(i - 1, 0)][1]


def make_processors(settings: NodeSettings, log: Callable[[str], None] = print,
                    geometry: GeometricStage | None = None) -> dict[str, PairProcessor]:
    """One PairProcessor per configured pair (ModelFileError naming a missing or wrong model)."""
    processors = {}
    for pair in settings.pairs:
        pair_geometry = geometry_for(geometry, pair)
        if pair_geometry is not None and not settings.residual:  # geometry only: no network
            processors[pair] = make_processor(None, pair, settings, pair_geometry)
            continue
        path = model_path(settings, pair)
        if not path.is_file():
            option = '--model-' + pair.replace('_', '-')
            raise ModelFileError(f'model file {path} for {pair} does not exist: pass {option} or run only '
                                 'the other pair (--pairs)')
        registrar = create_registrar(path, settings, pair, log)
        processors[pair] = make_processor(registrar, pair, settings, pair_geometry)
    return processors


@dataclass
class _Run:
    """What the loop has done so far (read when it ends early)."""

    core: FrameSetCore
    sets: int = 0
    last_stamp_ns: int = 0
    time_jumps: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)  # with a rig: '<pair> <depth|plane>' -> sets
    bad_sets: Counter[str] = field(default_factory=Counter)   # '<pair>: <reason>' -> sets not written


def register_bag(args: argparse.Namespace) -> dict[str, Any]:
    """Register every synchronised set of the input bag(s) into the output bag; returns counts per pair.

    Ending early (Ctrl-C / SIGINT / SIGTERM, honoured at the next message boundary, or input damage
    found mid-way) finishes the output bag so that rosbag2 readers open it, with every set registered so
    far, and marks it partial in metadata.yaml (custom_data nmr.register_bag); the result says so
    (`interrupted`). Ending before the first set removes the output instead: an empty bag holds nothing
    and would only make the rerun fail with 'already exists'. A failed write (disk full, file-size limit)
    cannot leave a valid bag: the output folder is removed and the error says so.
    """
    settings = settings_from_args(args)
    out_bag = bag_folder(args.out)
    streams = {'rgb': 0, **{PAIR_FIXED_KIND[p]: 1 for p in settings.pairs}}
    topic_stream = {settings.inputs[s].subscribed_topic: s for s in streams}
    check_input_topics(settings, list(streams), list_topics(args.inputs), args.inputs)
    if out_bag.exists():
        raise ConfigError(f'output {out_bag} already exists: remove it or choose another --out')
    check_out_outside(out_bag, args.inputs)
    fixed_streams = [PAIR_FIXED_KIND[p] for p in settings.pairs]
    info_topics = {s: camera_info_topic(settings.inputs[s].topic) for s in fixed_streams}
    infos, info_problem = read_camera_infos(args.inputs, info_topics)
    backend_log = BackendLog('nmr register-bag', getattr(args, 'verbose', False))
    geometry = load_geometry(settings, log=lambda text: print(f'nmr register-bag: {text}', file=sys.stderr))
    if geometry_for(geometry, 'rgb_lwir') is not None and 'rgb_lwir' in settings.pairs and 'depth' not in streams:
        depth_topic = settings.inputs['depth'].subscribed_topic
        if depth_topic in list_topics(args.inputs):
            streams['depth'] = 1
            topic_stream[depth_topic] = 'depth'
        # else: the geometric stage says once that it falls back to the plane model
    processors = make_processors(settings, log=backend_log, geometry=geometry)
    networked = [p for p in settings.pairs if processors[p].registrar is not None]
    if not backend_log.verbose and backend_log.chosen:
        through_rig = [p for p in settings.pairs if p not in networked]
        rig_text = f'; {", ".join(through_rig)} through the rig' if through_rig else ''
        print(f'nmr register-bag: {backend_log.summary(networked)}{rig_text} (-v: the backends passed over)',
              file=sys.stderr)
    progress = _Progress(count_messages(args.inputs, list(topic_stream)), args.quiet)
    state = _Run(FrameSetCore(settings.pairs, settings.sync_slop_ns, settings.sync_queue_size, keep='all',
                              **core_rig_options(geometry, settings)))
    backend = ', '.join(sorted(set(backend_log.chosen))) or ('geometry (no network)' if geometry else 'none')
    result: dict[str, Any] = {'out': out_bag, 'backend': backend,
                              'slop_ms': settings.sync_slop_ns / 1e6, 'interrupted': False}
    writer = BagWriter(out_bag, storage=args.storage).open()
    # The stop request covers the finishing writes too: a Ctrl-C that lands after the last message used to
    # raise inside the writer's close and cut the summary; now it is only noted, and the bag completes.
    with _stop_on_signals() as stop:
        try:
            _register_all(args, settings, topic_stream, processors, infos, writer, progress, state, stop)
            if info_problem:
                raise BagError(info_problem)
        except KeyboardInterrupt:
            progress.close()
            if state.sets:
                _finish(writer, out_bag, f'partial: interrupted after {state.sets} sets')
            else:  # an empty bag would only block the rerun ('output ... already exists')
                _discard(writer, out_bag)
            result['interrupted'] = True
        except OSError as err:
            _discard(writer, out_bag)
            raise _io_error(err, out_bag) from None
        except NmrUserError as err:
            progress.close()
            if not state.sets:
                _discard(writer, out_bag)
                raise BagError(f'{err}; no set was registered before that, so no output was written') from None
            _finish(writer, out_bag, f'partial: stopped after {state.sets} sets: {err}')
            raise BagError(f'{err}; {out_bag} holds the {state.sets} sets registered before that (marked '
                           'partial in its metadata.yaml)') from None
        except BaseException:  # a bug: no output that might pass for a complete one
            _discard(writer, out_bag)
            raise
        else:
            progress.close()
            bad = ', '.join(f'{k}: {n}' for k, n in sorted(state.bad_sets.items()))
            _finish(writer, out_bag, f'complete; sets not written: {bad}' if bad else 'complete')
    return {**result, 'sets': state.sets, 'last_stamp_ns': state.last_stamp_ns, 'skipped': dict(state.skipped),
            'bad_sets': dict(state.bad_sets),
            'time_jumps': state.time_jumps, 'geometric': dict(state.sources),
            'pairs': {p: state.core.counts(p).as_json() for p in state.core.pairs}}


def run(args: argparse.Namespace) -> int:
    result = register_bag(args)
    out, sets = result['out'], result['sets']
    if result['interrupted'] and not sets:
        print('nmr register-bag: interrupted before the first set was registered: no output written',
              file=sys.stderr)
        return 130
    if result['interrupted']:
        print(f'nmr register-bag: interrupted: {out} holds the {sets} sets registered so far '
              f'(up to stamp {result["last_stamp_ns"] / 1e9:.3f} s; marked partial in its metadata.yaml)',
              file=sys.stderr)
        return 130
    skipped = result['skipped']
    lost = sum(skipped.values())
    lost_text = (f'; {lost} unreadable input messages skipped ('
                 + ', '.join(f'{t}: {n}' for t, n in sorted(skipped.items())) + ')') if lost else ''
    jumps = result['time_jumps']
    jump_text = (f'; header stamps went backwards {jumps} times over all inputs (concatenated bags or clock '
                 'resets: synchronisation restarted there)') if jumps else ''
    geo = result.get('geometric') or {}
    words = {'depth': 'through depth', 'plane': 'plane model (no depth)'}
    geo_text = ('; geometric flow: ' + ', '.join(f'{k.split()[0]} {words[k.split()[1]]} {n}'
                                                 for k, n in sorted(geo.items()))) if geo else ''
    bad = result['bad_sets']
    bad_text = (f'; {sum(bad.values())} sets not written (' + ', '.join(f'{k}: {n}' for k, n in sorted(bad.items()))
                + ')') if bad else ''
    print(f'nmr register-bag: {sets} synchronised sets registered -> {out}{lost_text}{bad_text}{jump_text}'
          f'{geo_text}')
    return 0


def _finish(writer: Any, out: Path, status: str) -> None:
    """Close the output bag (summary, then metadata.yaml) with its status; remove it if that fails."""
    try:
        writer.set_custom_data(STATUS_KEY, status[:500])
        writer.close()
    except OSError as err:
        _discard(writer, out)
        raise _io_error(err, out) from None


def _io_error(err: OSError, out: Path) -> BagError:
    """One line for an I/O error that ended the run (the output is already removed)."""
    if err.errno in DISK_FULL:
        return BagError(f'writing {out} failed ({err.strerror}); the incomplete output was removed: free disk '
                        'space (or raise the file-size limit) or choose another --out')
    return BagError(f'I/O error ({err.strerror or err}{": " + str(err.filename) if err.filename else ""}); '
                    f'the incomplete output {out} was removed')


def _discard(writer: Any, out: Path) -> None:
    """A write failed: the output cannot be a valid bag, so none is left behind."""
    writer.abort()
    shutil.rmtree(out, ignore_errors=True)


class _StopRequest:
    """Set by SIGINT / SIGTERM (any number of them); the loop stops at the next message or set boundary.

    Raising KeyboardInterrupt from the signal handler could land between two writes of one mcap record, or
    inside the finishing writes, and leave a bag that is neither complete nor marked partial; checking a
    flag between messages and sets cannot. A burst of signals is the same as one: the wait is at most one
    set's inference. (SIGKILL leaves only the writer's hidden staging folder, never a bag at --out.)
    """

    def __init__(self) -> None:
        self.signal = 0
        self.count = 0

    def handler(self, signum: int, _frame: Any) -> None:
        self.count += 1
        self.signal = self.signal or signum

    def check(self) -> None:
        if self.signal:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop.handler)
    except ValueError:  # not the main thread (called from a test thread): signals stay as they were
        pass
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bag_frames(paths: list[Path], topic_stream: dict[str, str], skipped: Counter[str],
               max_pixels: dict[str, int] | None = None) -> Iterator[Frame]:
    """The input images as the core's frames, in bag record order (undecodable ones, and ones larger than
    their input's `max_pixels`, counted in `skipped`)."""
    for topic, _record_ns, arr, encoding, header in iter_images(paths, list(topic_stream), skipped, max_pixels):
        if encoding not in STREAM_ENCODINGS[topic_stream[topic]]:  # e.g. an rgb8 frame on the LWIR topic
            skipped[topic] += 1
            continue
        yield Frame(topic_stream[topic], stamp_ns(header), arr, encoding, header)


def _register_all(args: argparse.Namespace, settings: NodeSettings, topic_stream: dict[str, str],
                  processors: dict[str, PairProcessor], infos: dict[str, Any], writer: Any,
                  progress: _Progress, state: _Run, stop: _StopRequest) -> None:
    """The node's processing over the input bag(s), every output written to `writer`."""
    ns = '/' + args.namespace.strip('/') if args.namespace.strip('/') else ''
    core = state.core

    def write(topic: str, fixed: Frame, outputs: Outputs) -> None:
        for name, (out, enc) in outputs.items():
            writer.write_image(f'{topic}{name}', fixed.stamp_ns, fixed.header.frame_id, out, enc)

    def write_info(topic: str, infos: list[tuple[int, Any]], fixed: Frame) -> None:
        info = camera_info_at(infos, fixed.stamp_ns)
        writer.write(topic, 'sensor_msgs/msg/CameraInfo', fixed.stamp_ns,
                     replace(info, header=header_msg(writer.typestore, fixed.stamp_ns, fixed.header.frame_id)))

    limits = {t: settings.inputs[s].max_pixels for t, s in topic_stream.items()}
    for frame in bag_frames(args.inputs, topic_stream, state.skipped, limits):
        stop.check()
        if args.copy_inputs:  # decoded: a compressed input is copied as an Image on its base topic
            writer.write_image(settings.inputs[frame.stream].topic, frame.stamp_ns, frame.header.frame_id,
                               frame.array, frame.encoding)
        state.time_jumps += core.add(frame).jump is not None
        for pset in core.take():
            stop.check()
            try:
                done = core.register(pset, processors[pset.pair], settings.pair_outputs, fused=settings.fused)
            except PairInputError as err:  # one bad set (wrong encoding, NaN flow) is skipped and counted
                reason = 'non-finite flow' if isinstance(err, NonFiniteFlowError) else 'unusable input'
                state.bad_sets[f'{pset.pair}: {reason}'] += 1
                continue
            fixed, kind = pset.fixed, PAIR_FIXED_KIND[pset.pair]
            if done.source is not None:
                state.sources[f'{pset.pair} {done.source}'] += 1
            write(f'{ns}/{pset.pair}/', fixed, done.outputs)
            if kind in infos:  # the fixed camera's calibration describes the outputs' grid
                write_info(f'{ns}/{pset.pair}/camera_info', infos[kind], fixed)
            state.sets += 1
            state.last_stamp_ns = fixed.stamp_ns
        if settings.fused:
            fused = core.fuse()
            if fused is not None:
                write(f'{ns}/', fused.lwir, fused.outputs)
                if 'lwir' in infos:  # the fused images are on the LWIR grid
                    write_info(f'{ns}/fused/camera_info', infos['lwir'], fused.lwir)
        progress.step(state.sets)
    stop.check()
