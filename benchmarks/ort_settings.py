#!/usr/bin/env python3
"""ONNX Runtime settings for the node's two sessions on a small CPU, measured against each other in one run.

    .venv/bin/python benchmarks/ort_settings.py                     # shipped models, 160x128, 2 pairs
    .venv/bin/python benchmarks/ort_settings.py --rounds 40 --json ort_settings.json

The node runs one session per pair. What matters is the time to get BOTH pairs' flows of one set, so every
variant is timed as "one set" = both sessions once, and the variants are interleaved round by round (each
round runs every variant once, in a rotated order), so that a change in the machine's load hits them all
alike; medians over rounds are reported, with the ratio to the node's choice. Variants:

- `parallel, 1 thread each`: two Python threads, one session each, intra_op_num_threads=1 (the node's
  choice with two pairs on two cores; ONNX Runtime releases the GIL in `run`);
- `sequential, N threads each`: one thread runs both sessions one after the other, intra_op=N (cores);
- `parallel, N threads each`: both at once, each with N threads (oversubscribed);
- graph optimisation levels (basic / extended / all) and spin-waiting on/off for the parallel variant;
- `io binding`: `run_with_iobinding` with the inputs and a pre-allocated output bound as CPU OrtValues;
- `re-exported`: the checkpoints beside the given ONNX files (`.pt`) exported again with this checkout's
  exporter (the cost volume by rows of displacements, nmr.models.correlation), when they exist.

The inputs are the network inputs (random, in [-1, 1]); the weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _session(path: Path, threads: int, level: str = 'all', spin: bool = False) -> Any:
    import onnxruntime as ort

    from nmr.inference.onnx_backend import session_options

    old = os.environ.get('NMR_ORT_SPIN')
    os.environ['NMR_ORT_SPIN'] = '1' if spin else '0'
    try:
        so = session_options(threads)
    finally:
        if old is None:
            os.environ.pop('NMR_ORT_SPIN')
        else:
            os.environ['NMR_ORT_SPIN'] = old
    so.graph_optimization_level = {
        'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), sess_options=so, providers=['CPUExecutionProvider'])


def _inputs(net_hw: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = net_hw
    return {'moving': rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32),
            'fixed': rng.uniform(-1, 1, (1, 1, h, w)).astype(np.float32)}


def _run_plain(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: session.run(['flow'], feed)


def _run_bound(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    import onnxruntime as ort

    binding = session.io_binding()
    for name, arr in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
    h, w = feed['moving'].shape[-2:]
    out = np.empty((1, 2, h, w), np.float32)
    binding.bind_ortvalue_output('flow', ort.OrtValue.ortvalue_from_numpy(out))
    return lambda: session.run_with_iobinding(binding)


class _Pair:
    """Runs two callables on two persistent threads and waits for both (what the node's workers do)."""

    def __init__(self, calls: Sequence[Callable[[], Any]]) -> None:
        self.calls = list(calls)
        self.go = [threading.Event() for _ in calls]
        self.done = [threading.Event() for _ in calls]
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(len(calls))]
        for t in self.threads:
            t.start()

    def _loop(self, i: int) -> None:
        while True:
            self.go[i].wait()
            self.go[i].clear()
            self.calls[i]()
            self.done[i].set()

    def __call__(self) -> None:
        for i in range(len(self.calls)):
            self.done[i].clear()
            self.go[i].set()
        for d in self.done:
            d.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', type=Path, nargs=2,
                        default=[ROOT / 'models' / 'rgb_lwir.onnx', ROOT / 'models' / 'rgb_depth.onnx'])
    parser.add_argument('--net-size', default='160x128', help='network input WxH (default 160x128, shipped)')
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)
    from nmr.inference.onnx_backend import cpu_count

    w, h = (int(v) for v in args.net_size.split('x'))
    cores = cpu_count()
    feeds = [_inputs((h, w), i) for i in range(2)]

    def sessions(threads: int, **kw: Any) -> list[Any]:
        return [_session(m, threads, **kw) for m in args.models]

    def parallel(ss: list[Any], run: Callable[..., Callable[[], Any]] = _run_plain) -> Callable[[], Any]:
        return _Pair([run(s, f) for s, f in zip(ss, feeds)])

    def sequential(ss: list[Any]) -> Callable[[], Any]:
        calls = [_run_plain(s, f) for s, f in zip(ss, feeds)]
        return lambda: [c() for c in calls]

    reexported = []
    for m in args.models:
        checkpoint = m.with_suffix('.pt')
        if checkpoint.is_file():
            from nmr.inference.export import export_checkpoint

            out = Path(tempfile.mkdtemp(prefix='nmr_ort_settings_')) / m.name
            export_checkpoint(checkpoint, out, log=lambda _s: None)
            reexported.append(out)
    choice = 'parallel, 1 thread each, level all, no spin (node)'
    variants: dict[str, Callable[[], Any]] = {
        choice: parallel(sessions(1)),
        f'sequential, {cores} threads each': sequential(sessions(cores)),
        f'parallel, {cores} threads each': parallel(sessions(cores)),
        'sequential, 1 thread each': sequential(sessions(1)),
        'parallel, 1 thread each, spin': parallel(sessions(1, spin=True)),
        'parallel, 1 thread each, level basic': parallel(sessions(1, level='basic')),
        'parallel, 1 thread each, level extended': parallel(sessions(1, level='extended')),
        'parallel, 1 thread each, io binding': parallel(sessions(1), _run_bound),
    }
    if len(reexported) == 2:
        variants['parallel, 1 thread each, re-exported (cost volume by rows)'] = parallel(
            [_session(m, 1) for m in reexported])
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for fn in variants.values():  # warm-up
        for _ in range(3):
            fn()
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    load_after = os.getloadavg()
    ref = statistics.median(times[choice])
    print(f'| variant (both pairs\' networks, {w}x{h}) | ms per set, median | p90 | ratio to the node\'s choice |')
    print('|---|---|---|---|')
    rows = []
    for name in names:
        med = statistics.median(times[name])
        p90 = float(np.percentile(times[name], 90))
        rows.append({'variant': name, 'median_ms': med, 'p90_ms': p90, 'ratio': med / ref})
        print(f'| {name} | {med:.1f} | {p90:.1f} | {med / ref:.2f} |')
    print(f'\n{args.rounds} interleaved rounds; {cores} usable cores; load average before {load_before[0]:.2f}, '
          f'after {load_after[0]:.2f}')
    if args.json:
        args.json.write_text(json.dumps({'rows': rows, 'cores': cores, 'loadavg_before': load_before,
                                         'loadavg_after': load_after, 'rounds': args.rounds}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
