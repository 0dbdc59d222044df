#!/usr/bin/env python3
"""Where one full-size set of both pairs spends its time in register_node, stage by stage, in one run.

    .venv/bin/python benchmarks/profile_set.py                          # shipped models, camera sizes
    .venv/bin/python benchmarks/profile_set.py --rounds 30 --json profile.json --markdown profile.md

The set is what a rig delivers (RealSense colour 640x480 rgb8, Boson 640x512 mono16, RealSense depth
848x480 16UC1; nmr.ros.testing.FULL_SIZE), with every output and the fused output made. Three runs on
the same frames, rotated round by round (so load changes hit all alike), medians over the rounds:

- **before**: the registrar's torch post-processing (`Registrar.register`: float64 grid_sample, copies to
  numpy), outputs at full size and on every set, the fixed image normalised again for the overlay, both
  pairs one after the other on one thread, ONNX Runtime with all cores per session;
- **after**: the node's stages (`PairProcessor.run`: network grid -> OpenCV up-sampling + remap), both
  pairs on two threads at once (the node's workers), ONNX Runtime with cores / pairs threads per session;
  and the same one pair after the other, whose stage times are each stage's own cost (in the parallel
  run every stage also waits for the other pair's thread, so only its wall time is comparable).

Stages, per pair: decode (CDR bytes -> rclpy message -> numpy view, what the executor and the callback
do), pre-process, network, flow (up-sampling + rescale), warp, each output, message build (numpy ->
Image), serialisation (rclpy's CDR serialisation of each output, on its own), publish (the real
`publish` to a matched reader in this process: conversion, serialisation and the middleware's copy; a
reader in another process adds the shared-memory transfer, so this is a lower bound), and, per set,
fused. `flow_viz`/`overlay` are timed on every set here; the
node makes them at most `viz_max_rate_hz` (10) times a second per pair, which the "set at 30 Hz" row
accounts for. The load average is printed: on a shared machine the absolute numbers move, the ratios
within one run much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {'rgb_lwir': ('lwir', 'mono16'), 'rgb_depth': ('depth', '16UC1')}
OUTPUTS = ('registered', 'flow', 'flow_viz', 'overlay')


class Timer:
    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = defaultdict(list)

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        self.ms[name].append((time.perf_counter() - t0) * 1e3)
        return out

    def add(self, name: str, ms: float) -> None:
        self.ms[name].append(ms)

    def median(self, name: str) -> float | None:
        values = self.ms.get(name)
        return statistics.median(values) if values else None


def frames(count: int, scale: float) -> list[dict[str, tuple[np.ndarray, str]]]:
    from nmr.ros.testing import FULL_SIZE, make_frames

    hw = {s: (round(shape[0] * scale), round(shape[1] * scale)) for s, (shape, _e) in FULL_SIZE.items()}
    out = []
    for i in range(count):
        f = make_frames(i, hw['rgb'], hw['lwir'], hw['depth'])
        out.append({'rgb': (f.rgb, 'rgb8'), 'lwir': (f.lwir, 'mono16'), 'depth': (f.depth, '16UC1')})
    return out


class _Publishers:
    """Publishers of every output with a matched subscription in a second node (never spun, depth 1):
    `publish` then does what the node's does, conversion to C, serialisation and the middleware's copy
    to a reader (Fast DDS with the package's large shared-memory profile, as the tests set it up)."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from nmr.ros.testing import ros_env, wait_for

        ros_env()
        rclpy.init()
        self.node = rclpy.create_node('nmr_profile_publisher')
        self.reader = rclpy.create_node('nmr_profile_reader')
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        topics = [f'{p}/{o}' for p in PAIRS for o in OUTPUTS] + [f'fused/fused/{t}' for t in ('rgb', 'lwir', 'depth')]
        self.pubs = {t: self.node.create_publisher(Image, t, qos) for t in topics}
        self.subs = [self.reader.create_subscription(Image, t, lambda _m: None, qos, raw=True) for t in topics]
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()), 30.0,
                 'the profile\'s publishers to match')

    def publish(self, topic: str, msg: Any) -> None:
        self.pubs[topic].publish(msg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model-rgb-lwir', type=Path, default=ROOT / 'models' / 'rgb_lwir.onnx')
    parser.add_argument('--model-rgb-depth', type=Path, default=ROOT / 'models' / 'rgb_depth.onnx')
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--size-scale', type=float, default=1.0, help='camera sizes x this (default 1 = full)')
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--no-publish', dest='publish', action='store_false',
                        help='skip the DDS publish stage (it needs rclpy and a DDS domain of its own)')
    parser.add_argument('--json', type=Path)
    parser.add_argument('--markdown', type=Path, help='also write the table here')
    args = parser.parse_args(argv)

    import torch
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from nmr.data.encodings import to_rgb
    from nmr.inference.onnx_backend import cpu_count
    from nmr.pipeline.fused import fuse
    from nmr.pipeline.outputs import PairProcessor
    from nmr.pipeline.settings import create_registrar, validate
    from nmr.ros.convert import from_image_msg, time_from_ns, to_image_msg

    cores = cpu_count()
    models = {'rgb_lwir': args.model_rgb_lwir, 'rgb_depth': args.model_rgb_depth}
    settings = validate({'backend': args.backend, 'device': args.device, 'viz_max_rate_hz': 0.0})
    quiet = lambda _t: None  # noqa: E731
    # before: the registrar as the node used it (all cores per session, pre/post on one torch thread)
    old = {p: PairProcessor(create_registrar(models[p], settings, p, quiet, parallel=1), p) for p in PAIRS}
    # after: the node's settings for two pairs in parallel
    new = {p: PairProcessor(create_registrar(models[p], settings, p, quiet, parallel=len(PAIRS)), p)
           for p in PAIRS}
    data = frames(3, args.size_scale)
    raw = [{s: serialize_message(to_image_msg(a, e, Header(stamp=time_from_ns(i), frame_id=s)))
            for s, (a, e) in d.items()} for i, d in enumerate(data)]
    t_old, t_new, t_par = Timer(), Timer(), Timer()
    current = {'timer': t_new}

    def decode(t: Timer, stream: str, blob: bytes) -> np.ndarray:
        msg = t('decode', deserialize_message, blob, Image)
        return t('decode', from_image_msg, msg)

    publishers = _Publishers() if args.publish else None

    def publish_cost(t: Timer, pair: str, outputs: dict[str, tuple[np.ndarray, str]]) -> None:
        header = Header(frame_id=pair)
        for name, (arr, enc) in outputs.items():
            msg = t(f'{pair} message build', to_image_msg, arr, enc, header)
            t(f'{pair} serialisation', serialize_message, msg)
            if publishers is not None:
                t(f'{pair} publish', publishers.publish, f'{pair}/{name}', msg)

    def run_old(i: int) -> float:
        t0 = time.perf_counter()
        blobs = raw[i % len(raw)]
        arrays = {s: decode(t_old, s, b) for s, b in blobs.items()}
        done = {}
        for pair, (stream, enc) in PAIRS.items():
            proc = old[pair]
            reg = proc.register(to_rgb(arrays['rgb'], 'rgb8'), arrays[stream], enc)
            tm = reg.timings_ms
            t_old.add(f'{pair} pre-process', tm['preprocess'])
            t_old.add(f'{pair} network', tm['net'])
            t_old.add(f'{pair} flow + warp (torch)', tm['postprocess'])
            t_old.add(f'{pair} to numpy', tm['to_host'])
            outputs = {}
            for name in OUTPUTS:
                outputs.update(t_old(f'{pair} {name}', proc.outputs, reg, arrays[stream], enc, [name]))
            publish_cost(t_old, pair, outputs)
            done[pair] = reg
        a, b = done['rgb_lwir'], done['rgb_depth']
        fused = t_old('fused', fuse, arrays['lwir'], 'mono16', a.flow, a.registered, arrays['depth'], '16UC1',
                      b.flow, arrays['rgb'].shape[:2])
        publish_cost(t_old, 'fused', fused)
        return (time.perf_counter() - t0) * 1e3

    results: dict[str, Any] = {}

    def new_pair(pair: str, arrays: dict[str, np.ndarray]) -> None:
        t_new = current['timer']
        stream, enc = PAIRS[pair]
        res = new[pair].run(to_rgb(arrays['rgb'], 'rgb8'), arrays[stream], enc, OUTPUTS, need_registered=True)
        tm = res.timings_ms
        for key, label in (('preprocess', 'pre-process'), ('net', 'network'), ('flow', 'flow (up-sampling)'),
                           ('warp', 'warp'), ('flow_viz', 'flow_viz'), ('overlay', 'overlay')):
            if key in tm:
                t_new.add(f'{pair} {label}', tm[key])
        publish_cost(t_new, pair, res.outputs)
        results[pair] = res

    pool_go = {p: threading.Event() for p in PAIRS}
    pool_done = {p: threading.Event() for p in PAIRS}
    shared: dict[str, Any] = {}

    def worker(pair: str) -> None:
        while True:
            pool_go[pair].wait()
            pool_go[pair].clear()
            new_pair(pair, shared['arrays'])
            pool_done[pair].set()

    for pair in PAIRS:
        threading.Thread(target=worker, args=(pair,), daemon=True).start()

    def run_new(i: int, parallel: bool = True) -> float:
        t0 = time.perf_counter()
        t_new = current['timer'] = t_par if parallel else t_seq
        blobs = raw[i % len(raw)]
        shared['arrays'] = arrays = {s: decode(t_new, s, b) for s, b in blobs.items()}
        if parallel:
            for pair in PAIRS:
                pool_done[pair].clear()
                pool_go[pair].set()
            for pair in PAIRS:
                pool_done[pair].wait()
        else:
            for pair in PAIRS:
                new_pair(pair, arrays)
        a, b = results['rgb_lwir'], results['rgb_depth']
        fused = t_new('fused', fuse, arrays['lwir'], 'mono16', a.flow, a.registered, arrays['depth'], '16UC1',
                      b.flow, arrays['rgb'].shape[:2])
        publish_cost(t_new, 'fused', fused)
        return (time.perf_counter() - t0) * 1e3

    # torch and OpenCV threads: before = the defaults (cores; the registrar switched torch to one thread
    # around its own pre/post-processing); after = the node's configure_threads (cores / pairs).
    # Switched per path, outside the timed calls.
    threads_new = max(1, cores // len(PAIRS))
    t_seq = t_new
    runs: list[tuple[Timer, int, Callable[[int], float]]] = [
        (t_old, cores, run_old), (t_seq, threads_new, lambda i: run_new(i, parallel=False)),
        (t_par, threads_new, run_new)]
    import cv2

    def set_threads(threads: int) -> None:  # what configure_threads does in the node (before: the defaults)
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)

    for i in range(3):  # warm-up
        for _t, threads, fn in runs:
            set_threads(threads)
            fn(i)
    for t, _threads, _fn in runs:
        t.ms.clear()
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for t, threads, fn in runs[r % 3:] + runs[:r % 3]:  # rotated: load changes hit every path alike
            set_threads(threads)
            t.add('set (wall)', fn(r))
    load_after = os.getloadavg()

    stages = ['decode']
    for pair in PAIRS:
        stages += [f'{pair} {s}' for s in ('pre-process', 'network', 'flow (up-sampling)', 'warp',
                                           'flow + warp (torch)', 'to numpy', *OUTPUTS, 'message build',
                                           'serialisation', 'publish')]
    stages += ['fused', 'fused message build', 'fused serialisation', 'fused publish', 'set (wall)']

    def fmt(x: float | None) -> str:
        return '-' if x is None else f'{x:.1f}'

    def per_set(t: Timer, name: str) -> float | None:
        """Median ms per set: sum over the calls in a round (decode: 3 images, serialisation: 4 outputs)."""
        values = t.ms.get(name)
        if not values:
            return None
        per_round = len(values) / args.rounds
        return statistics.median(values) * per_round

    lines = ['| stage | before ms | after ms (pairs one after the other) | after ms (pairs in parallel) |',
             '|---|---|---|---|']
    rows = []
    for stage in stages:
        b, a, p = per_set(t_old, stage), per_set(t_seq, stage), per_set(t_par, stage)
        if b is None and a is None:
            continue
        rows.append({'stage': stage, 'before_ms': b, 'after_sequential_ms': a, 'after_parallel_ms': p})
        lines.append(f'| {stage} | {fmt(b)} | {fmt(a)} | {fmt(p)} |')
    wall_old, wall_seq, wall_new = (t.median('set (wall)') for t in (t_old, t_seq, t_par))
    assert wall_old is not None and wall_seq is not None and wall_new is not None
    viz = sum(per_set(t_par, f'{p} {o}') or 0.0 for p in PAIRS for o in ('flow_viz', 'overlay'))
    at_30 = wall_new - viz * (1 - 10 / 30) / 2  # viz on 1 set in 3, spread over the two workers
    lines.append(f'| set at 30 Hz with viz_max_rate_hz 10 (estimate) | - | - | {at_30:.1f} |')
    table = '\n'.join(lines)
    footer = (f'{args.rounds} interleaved rounds, medians; sizes x{args.size_scale}; models '
              f'{models["rgb_lwir"].name}, {models["rgb_depth"].name} ({args.backend}, {args.device}); '
              f'{cores} usable cores; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; '
              f'set wall time before / after: {wall_old / wall_new:.2f}x (pairs in parallel), '
              f'{wall_old / wall_seq:.2f}x (one after the other)')
    print(table)
    print()
    print(footer)
    if args.markdown:
        args.markdown.write_text(table + '\n\n' + footer + '\n')
    if args.json:
        args.json.write_text(json.dumps({'rows': rows, 'rounds': args.rounds, 'cores': cores,
                                         'loadavg_before': load_before, 'loadavg_after': load_after,
                                         'command': [sys.executable, *sys.argv]}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
