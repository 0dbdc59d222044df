#!/usr/bin/env python3
"""Soak test of register_node: a rig bag looped by `nmr play --restamp` at 30 Hz for 10 minutes.

    .venv/bin/python benchmarks/soak.py                                  # 10 min, 1-min windows
    .venv/bin/python benchmarks/soak.py --duration 60 --window 10 --json soak.json   # short version

Three processes, as on a robot: `nmr play --loop --restamp` (header stamps = wall time at publish, like
a live camera), `register_node` (both pairs, every output subscribed, so everything is computed), and
this script, which takes every output raw (no decode), notes when each flow arrives, and samples the
node process from /proc every `--sample-s` seconds: resident memory (VmRSS), open file descriptors and
threads. Per window (default one minute) it reports latency p50/p99 (header stamp -> arrival, flow of
both pairs), the delivered fraction (distinct flow stamps / RGB frames this script saw in the window,
per pair) and the resource samples.

Pass criteria (after `--warmup` seconds, default one window, in which allocators, DDS buffers and the
inference runtime grow to their working size):
- RSS flat: every later window's mean within `--rss-tolerance` (default 5 %, at least
  `--rss-floor-mb` = 16 MB) of the first window after warm-up;
- file descriptors and threads flat: within +-2 of the first window after warm-up (a leak of one per
  frame or per reconnect shows up as hundreds);
- latency: the last window's p50 within `--latency-tolerance` (20 %) of the first window after warm-up.
Exit status 0 when all pass, 1 otherwise (the JSON and the table say which).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmr.domain import PAIR_FIXED_KIND as PAIRS
from nmr.pipeline.settings import PAIR_OUTPUTS

NS = '/nmr'


def _console(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, '-m', module]


def process_sample(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open file descriptors, threads) of a live process, from /proc."""
    status = Path(f'/proc/{pid}/status').read_text()
    rss_kb = int(re.search(r'^VmRSS:\s+(\d+)', status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r'^Threads:\s+(\d+)', status, re.M).group(1))  # type: ignore[union-attr]
    return rss_kb / 1024.0, len(os.listdir(f'/proc/{pid}/fd')), threads


class Collector:
    """Raw subscriptions on every pair output (so the node computes them) and on the RGB input."""

    def __init__(self, node: Any, rgb_topic: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from nmr.data.bag_reader import raw_header_stamp

        self._stamp = raw_header_stamp
        self.flows: list[tuple[str, int, float]] = []   # (pair, stamp ns, arrival: time.time())
        self.rgb: list[float] = []                      # arrivals of RGB inputs (time.time())
        self.outputs = 0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        topics = [f'{NS}/{p}/{o}' for p in PAIRS for o in PAIR_OUTPUTS]
        self.subs = [node.create_subscription(Image, t, lambda raw, t=t: self._output(t, raw), reliable,
                                              raw=True) for t in topics]
        self.subs.append(node.create_subscription(Image, rgb_topic, self._input, best_effort, raw=True))

    def _output(self, topic: str, raw: bytes) -> None:
        self.outputs += 1
        if topic.endswith('/flow'):
            self.flows.append((topic.split('/')[-2], self._stamp(raw), time.time()))

    def _input(self, _raw: bytes) -> None:
        self.rgb.append(time.time())

    def matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subs[:-1])


@dataclass
class Window:
    start_s: float
    end_s: float
    rgb_frames: int
    delivered: dict[str, int]
    delivered_fraction: dict[str, float]
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    rss_mib_mean: float
    rss_mib_max: float
    fds_min: int
    fds_max: int
    threads_min: int
    threads_max: int


def summarise(collector: Collector, samples: list[tuple[float, float, int, int]], t0: float,
              duration_s: float, window_s: float) -> list[Window]:
    """Cut the run into windows of `window_s` seconds from `t0` (wall clock)."""
    windows = []
    n = max(1, round(duration_s / window_s))
    for i in range(n):
        a, b = t0 + i * window_s, t0 + min((i + 1) * window_s, duration_s)
        flows = [(p, s, t) for p, s, t in collector.flows if a <= s / 1e9 < b]  # by stamp: set offered then
        rgb = sum(1 for t in collector.rgb if a <= t < b)
        lat = np.array([(t - s / 1e9) * 1e3 for _p, s, t in flows])
        delivered = {p: len({s for q, s, _t in flows if q == p}) for p in PAIRS}
        ss = [x for x in samples if a <= x[0] < b] or samples[-1:]
        rss = np.array([x[1] for x in ss])
        windows.append(Window(
            start_s=round(a - t0, 1), end_s=round(b - t0, 1), rgb_frames=rgb, delivered=delivered,
            delivered_fraction={p: round(d / rgb, 3) if rgb else 0.0 for p, d in delivered.items()},
            latency_ms_p50=round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            latency_ms_p99=round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            rss_mib_mean=round(float(rss.mean()), 1), rss_mib_max=round(float(rss.max()), 1),
            fds_min=min(x[2] for x in ss), fds_max=max(x[2] for x in ss),
            threads_min=min(x[3] for x in ss), threads_max=max(x[3] for x in ss)))
    return windows


@dataclass
class Verdict:
    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)


def judge(windows: list[Window], warmup_s: float, rss_tolerance: float, rss_floor_mb: float,
          latency_tolerance: float) -> Verdict:
    """The pass criteria of the module docstring, over the windows that start after the warm-up."""
    after = [w for w in windows if w.start_s >= warmup_s - 1e-6]
    v = Verdict(passed=False)
    if len(after) < 2:
        v.details['windows'] = f'{len(after)} window(s) after warm-up: need 2 (longer --duration)'
        return v
    first, last = after[0], after[-1]
    tol = max(rss_floor_mb, rss_tolerance * first.rss_mib_mean)
    growth = max(w.rss_mib_mean for w in after) - first.rss_mib_mean
    v.checks['rss_flat'] = growth <= tol
    v.details['rss_flat'] = (f'max window mean - first = {growth:+.1f} MiB (tolerance {tol:.1f} MiB; '
                             f'{first.rss_mib_mean:.1f} -> {last.rss_mib_mean:.1f} MiB)')
    fds = [x for w in after for x in (w.fds_min, w.fds_max)]
    threads = [x for w in after for x in (w.threads_min, w.threads_max)]
    v.checks['fds_flat'] = max(fds) - first.fds_min <= 2 and first.fds_max - min(fds) <= 2
    v.details['fds_flat'] = f'{min(fds)}..{max(fds)} (first window {first.fds_min}..{first.fds_max})'
    v.checks['threads_flat'] = max(threads) - first.threads_min <= 2 and first.threads_max - min(threads) <= 2
    v.details['threads_flat'] = f'{min(threads)}..{max(threads)}'
    if first.latency_ms_p50 and last.latency_ms_p50:
        ratio = last.latency_ms_p50 / first.latency_ms_p50
        v.checks['latency_stable'] = abs(ratio - 1.0) <= latency_tolerance
        v.details['latency_stable'] = (f'p50 {first.latency_ms_p50} -> {last.latency_ms_p50} ms '
                                       f'({100 * (ratio - 1):+.0f} %, tolerance {100 * latency_tolerance:.0f} %)')
    else:
        v.checks['latency_stable'] = False
        v.details['latency_stable'] = 'no output in the first or last window'
    p50 = [(w.start_s, w.latency_ms_p50) for w in after if w.latency_ms_p50 is not None]
    if len(p50) >= 3:  # not a check: tells a trend (a leak, a growing queue) from load noise
        slope = float(np.polyfit([t / 60.0 for t, _ in p50], [x for _, x in p50], 1)[0])
        v.details['latency_trend'] = (f'p50 {min(x for _, x in p50)}..{max(x for _, x in p50)} ms over the '
                                      f'windows, least-squares trend {slope:+.1f} ms/min')
    v.passed = all(v.checks.values())
    return v


def markdown(windows: list[Window], warmup_s: float) -> str:
    lines = ['| window s | RGB frames | delivered lwir / depth | latency p50 / p99 ms | RSS MiB mean (max) | '
             'fds | threads |', '|---|---|---|---|---|---|---|']
    for w in windows:
        tag = ' (warm-up)' if w.start_s < warmup_s - 1e-6 else ''
        lines.append(
            f'| {w.start_s:g}-{w.end_s:g}{tag} | {w.rgb_frames} | '
            f'{100 * w.delivered_fraction["rgb_lwir"]:.0f} % / {100 * w.delivered_fraction["rgb_depth"]:.0f} % | '
            f'{w.latency_ms_p50} / {w.latency_ms_p99} | {w.rss_mib_mean} ({w.rss_mib_max}) | '
            f'{w.fds_min}-{w.fds_max} | {w.threads_min}-{w.threads_max} |')
    return '\n'.join(lines)


def make_bag(folder: Path, duration_s: float, size_scale: float) -> Path:
    out = folder / 'rig'
    if (out / 'metadata.yaml').is_file():  # a --workdir kept from an earlier run
        return out
    subprocess.run([*_console('nmr', 'nmr.cli.main'), 'synth', '--out', str(out), '--duration', str(duration_s),
                    '--size-scale', str(size_scale), '--workers', '1'], check=True, stdout=subprocess.DEVNULL)
    return out


def rgb_rate(bag: Path, topic: str) -> float:
    from nmr.data.bag_reader import open_bag

    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        times = [t for _c, t, _raw in reader.messages(connections=conns)]
    if len(times) < 2:
        raise SystemExit(f'{bag}: fewer than 2 RGB frames on {topic}')
    return (len(times) - 1) / ((times[-1] - times[0]) / 1e9)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=600.0, help='seconds of soak (default 600)')
    parser.add_argument('--window', type=float, default=60.0, help='window length, s (default 60)')
    parser.add_argument('--warmup', type=float, default=None, help='seconds excluded from the checks '
                        '(default: one window)')
    parser.add_argument('--rate', type=float, default=30.0, help='RGB frames per second played (default 30)')
    parser.add_argument('--bag', type=Path, help='bag to loop (default: a new 2 s synthetic-rig bag)')
    parser.add_argument('--size-scale', type=float, default=0.5, help='generated bag image scale (default 0.5)')
    parser.add_argument('--model-rgb-lwir', type=Path, help='model (default: a tiny random one)')
    parser.add_argument('--model-rgb-depth', type=Path, help='model (default: a tiny random one)')
    parser.add_argument('--backend', default='auto', help='register_node backend (default auto)')
    parser.add_argument('--sample-s', type=float, default=1.0, help='resource sampling period, s (default 1)')
    parser.add_argument('--rss-tolerance', type=float, default=0.05, help='RSS growth allowed (default 5 %%)')
    parser.add_argument('--rss-floor-mb', type=float, default=16.0, help='... but at least this (default 16)')
    parser.add_argument('--latency-tolerance', type=float, default=0.2, help='p50 drift allowed (default 0.2)')
    parser.add_argument('--slop', type=float, default=0.04, help='node sync.slop_s (default 0.04)')
    parser.add_argument('--json', type=Path, help='also write the results here')
    parser.add_argument('--workdir', type=Path, help='keep the bag, models and node log here')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warmup = args.window if args.warmup is None else args.warmup
    from nmr.ros.testing import INPUT_TOPICS, make_tiny_model, ros_env, start_node, stop_node

    ros_env()  # private DDS domain, large-image profile, for this process and its children
    load_before = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix='nmr_soak_') if args.workdir is None else None
    work = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    bag = args.bag or make_bag(work, 2.0, args.size_scale)
    play_rate = args.rate / rgb_rate(bag, INPUT_TOPICS['rgb'])
    models = {'rgb_lwir': args.model_rgb_lwir, 'rgb_depth': args.model_rgb_depth}
    for i, pair in enumerate(PAIRS):
        if models[pair] is None:
            models[pair] = make_tiny_model(work / f'{pair}_tiny.pt', pair, seed=i)
    log = work / 'register_node.log'
    params = {'models.rgb_lwir': str(models['rgb_lwir']), 'models.rgb_depth': str(models['rgb_depth']),
              'backend': args.backend, 'diagnostics_period_s': 1.0, 'sync.slop_s': args.slop}
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    node_proc = start_node(params, log, extra_args=['-r', f'__ns:={NS}'])
    rclpy.init()
    node = rclpy.create_node('nmr_soak')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    samples: list[tuple[float, float, int, int]] = []
    player: subprocess.Popen | None = None
    try:
        collector = Collector(node, INPUT_TOPICS['rgb'])
        deadline = time.monotonic() + 120.0
        while not (collector.matched() and len(re.findall(r'model .* loaded', log.read_text())) >= 2):
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'register_node did not come up (see {log}):\n{log.read_text()[-2000:]}')
            executor.spin_once(timeout_sec=0.1)
        cmd = [*_console('nmr', 'nmr.cli.main'), 'play', str(bag), '--loop', '--restamp', '--rate',
               f'{play_rate:.6f}', '--wait-for-subscribers', '30', '--quiet', '--topics', *INPUT_TOPICS.values()]
        player = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not collector.rgb and player.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        t0 = time.time()
        next_sample = t0
        while time.time() - t0 < args.duration:
            if player.poll() is not None:
                raise SystemExit(f'nmr play stopped ({player.returncode}): {player.stderr.read()[-500:]}')
            if node_proc.poll() is not None:
                raise SystemExit(f'register_node died ({node_proc.returncode}); see {log}')
            executor.spin_once(timeout_sec=0.05)
            if time.time() >= next_sample:
                samples.append((time.time(), *process_sample(node_proc.pid)))
                next_sample += args.sample_s
    finally:
        if player is not None and player.poll() is None:
            player.send_signal(signal.SIGINT)
            try:
                player.wait(timeout=10)
            except subprocess.TimeoutExpired:
                player.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        code = stop_node(node_proc)
    windows = summarise(collector, samples, t0, args.duration, args.window)
    verdict = judge(windows, warmup, args.rss_tolerance, args.rss_floor_mb, args.latency_tolerance)
    load_after = os.getloadavg()
    backend = re.findall(r'model .* loaded \(([^)]*)\)', log.read_text())
    print(markdown(windows, warmup))
    print(f'\n{"PASS" if verdict.passed else "FAIL"}: '
          + '; '.join(f'{k} {"ok" if ok else "FAILED"} ({verdict.details.get(k, "")})'
                      for k, ok in verdict.checks.items())
          + ''.join(f'; {verdict.details[k]}' for k in ('windows', 'latency_trend') if k in verdict.details))
    print(f'{args.duration:g} s at {args.rate:g} Hz, bag {bag} looped, node backend {", ".join(backend) or "?"}, '
          f'{collector.outputs} outputs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} '
          f'on {os.cpu_count()} cores; node exit {code}')
    if args.json:
        args.json.write_text(json.dumps({
            'command': [sys.executable, *sys.argv], 'duration_s': args.duration, 'window_s': args.window,
            'warmup_s': warmup, 'rate_hz': args.rate, 'bag': str(bag), 'node_backend': backend,
            'cpu_count': os.cpu_count(), 'loadavg_before': load_before, 'loadavg_after': load_after,
            'node_exit': code, 'windows': [asdict(w) for w in windows], 'verdict': asdict(verdict)}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if verdict.passed and code == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
