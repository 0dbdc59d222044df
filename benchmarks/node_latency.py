#!/usr/bin/env python3
"""End-to-end benchmark of register_node over DDS: a synthetic-rig bag played at 10, 30 and 60 Hz.

    .venv/bin/python benchmarks/node_latency.py       # as users run it: full camera sizes, shipped models
    .venv/bin/python benchmarks/node_latency.py --outputs registered flow --json rf.json
    .venv/bin/python benchmarks/node_latency.py --tiny  # the old smoke run: tiny random models, half size
    .venv/bin/python benchmarks/node_latency.py --backend torch --device cuda   # GPU (.pt models)
    benchmarks/run_node_rates.sh                       # the whole table of docs/performance.md

Three processes, as on a robot: `nmr play --restamp` (header stamps = wall time at publish, like a live
camera; `--rate` = target Hz / the bag's RGB rate), `register_node` (one process for all rates; the
shipped models by default, `.onnx` or for `--backend torch` `.pt`; `--tiny` uses tiny random models on a
half-size bag, which measures the node's plumbing, not what a user gets), and this script's subscriber,
which takes the chosen output topics raw (no image decode) and notes when each arrives; outputs without
a subscriber are not computed by the node (`--outputs`, default all, with the fused ones). Per rate it
reports:

- delivered: distinct fixed stamps published on `<pair>/flow` / sets offered (RGB frames played, or the
  fixed stream's frames if fewer). What is missing was lost on the best-effort inputs or dropped as stale
  by the node (it registers only the newest set when inference falls behind);
- latency: header stamp -> arrival at this subscriber (system clock in all three processes), median and
  p99 over both pairs' flow messages;
- node CPU: utime + stime of the node process (/proc/<pid>/stat) over the window first input seen ->
  last output, in % of one core;
- sync: `--restamp` stamps each message when it is published, so at playback rate r the recorded offsets
  between cameras become 1/r times larger; the node runs with `--slop` (0.04 s) so that 10 Hz still pairs;
- input Hz: RGB frames per second as this script saw them (whether the player kept up);
- the node's own counters from /diagnostics over the rate's run: inputs received (fewer than offered =
  lost on the way in) and sets dropped as stale (inference fell behind).

The machine load average before and after is printed and saved: on a shared machine it explains a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmr.domain import PAIR_FIXED_KIND as PAIRS
from nmr.pipeline.settings import PAIR_OUTPUTS

FUSED = ('fused/rgb', 'fused/lwir', 'fused/depth')
NS = '/nmr'
DRAIN_S = 1.5          # after the player ended: stop once no output arrived for this long
DRAIN_DEADLINE_S = 30.0


def _console(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, '-m', module]


def _cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f'/proc/{pid}/stat').read_text()
    fields = text[text.rindex(')') + 2:].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class RateResult:
    target_hz: float
    play_rate: float
    sets_offered: int
    delivered: dict[str, int]
    delivered_fraction: dict[str, float]
    latency_ms_median: float | None
    latency_ms_p99: float | None
    node_cpu_percent: float | None
    input_hz_seen: float | None
    node_counters: dict[str, int]
    window_s: float
    player_exit: int
    notes: list[str] = field(default_factory=list)


class Collector:
    """Raw subscriptions on every output (so the node computes them all) and on the RGB input."""

    def __init__(self, node: Any, rgb_topic: str, outputs: Sequence[str] = (*PAIR_OUTPUTS, 'fused')) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from nmr.data.bag_reader import raw_header_stamp

        self._stamp = raw_header_stamp
        self.flow: dict[str, list[tuple[int, int]]] = defaultdict(list)  # pair -> [(stamp, arrival ns)]
        self.rgb_arrivals: list[float] = []
        self.last_output = time.monotonic()
        self.diag: dict[str, int] = {}
        self.diag_time = 0.0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        topics = [f'{NS}/{p}/{o}' for p in PAIRS for o in PAIR_OUTPUTS if o in outputs]
        topics += [f'{NS}/{t}' for t in FUSED if 'fused' in outputs]
        self.subs = [node.create_subscription(Image, t, lambda raw, t=t: self._output(t, raw), reliable,
                                              raw=True) for t in topics]
        self.subs.append(node.create_subscription(Image, rgb_topic, self._input, best_effort, raw=True))
        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics, 10)

    def _diagnostics(self, msg: Any) -> None:
        """Keep the node's counters (inputs received, sets synced / processed / dropped as stale)."""
        from nmr.ros.testing import diagnostic_values

        if not msg.status or 'register_node' not in msg.status[0].name:
            return
        values = diagnostic_values(msg)
        counters = {}
        for stream in ('rgb', 'lwir', 'depth'):
            counters[f'{stream}.received'] = values.get('inputs', {}).get(f'{stream}.received')
        for pair in PAIRS:
            for key in ('synced_sets', 'processed_sets', 'stale_dropped'):
                counters[f'{pair}.{key}'] = values.get(pair, {}).get(key)
        self.diag = {k: int(v) for k, v in counters.items() if v is not None and v.isdigit()}
        self.diag_time = time.monotonic()

    def _output(self, topic: str, raw: bytes) -> None:
        now = time.time_ns()
        self.last_output = time.monotonic()
        if topic.endswith('/flow'):
            self.flow[topic.split('/')[-2]].append((self._stamp(raw), now))

    def _input(self, _raw: bytes) -> None:
        self.rgb_arrivals.append(time.monotonic())

    def matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subs[:-1])

    def reset(self) -> None:
        self.flow.clear()
        self.rgb_arrivals.clear()


def make_bag(folder: Path, duration_s: float, size_scale: float) -> Path:
    out = folder / 'rig'
    subprocess.run([*_console('nmr', 'nmr.cli.main'), 'synth', '--out', str(out), '--duration', str(duration_s),
                    '--size-scale', str(size_scale)], check=True, stdout=subprocess.DEVNULL)
    return out


def bag_facts(bag: Path, topics: dict[str, str]) -> dict[str, Any]:
    """Frame counts per input and the RGB frame rate (from record times)."""
    from nmr.data.bag_reader import open_bag

    with open_bag(bag) as reader:
        counts = {s: sum(c.msgcount for c in reader.connections if c.topic == t) for s, t in topics.items()}
        rgb = [c for c in reader.connections if c.topic == topics['rgb']]
        times = [t for _c, t, _raw in reader.messages(connections=rgb)]
    if len(times) < 2:
        raise SystemExit(f'{bag}: fewer than 2 RGB frames on {topics["rgb"]}')
    hz = (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
    return {'counts': counts, 'rgb_hz': hz}


def run_rate(executor: Any, collector: Collector, node_pid: int, bag: Path, topics: dict[str, str],
             target_hz: float, facts: dict[str, Any], max_messages: int = 0) -> RateResult:
    collector.reset()
    counters_before = dict(collector.diag)
    play_rate = target_hz / facts['rgb_hz']
    cmd = [*_console('nmr', 'nmr.cli.main'), 'play', str(bag), '--restamp', '--rate', f'{play_rate:.6f}',
           '--wait-for-subscribers', '30', '--quiet', '--max-messages', str(max_messages), '--topics',
           *topics.values()]
    player = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []

    def sample() -> None:
        samples.append((time.monotonic(), _cpu_ticks(node_pid)))

    while player.poll() is None:
        executor.spin_once(timeout_sec=0.05)
        sample()
    ended = time.monotonic()
    while (time.monotonic() - max(collector.last_output, ended) < DRAIN_S
           and time.monotonic() - ended < DRAIN_DEADLINE_S):
        executor.spin_once(timeout_sec=0.05)
        sample()
    drained = time.monotonic()
    while collector.diag_time <= drained and time.monotonic() - drained < 5.0:  # counters after the drain
        executor.spin_once(timeout_sec=0.05)
    node_counters = {k: v - counters_before.get(k, 0) for k, v in collector.diag.items()}
    notes = []
    if player.returncode != 0:
        err = player.stderr.read() if player.stderr else ''
        notes.append(f'nmr play exited {player.returncode}: {err.strip()[-300:]}')
    offered = min(facts['counts']['rgb'], *(facts['counts'][k] for k in PAIRS.values()))
    delivered = {p: len({s for s, _a in collector.flow[p]}) for p in PAIRS}
    latencies = np.array([(a - s) / 1e6 for p in PAIRS for s, a in collector.flow[p]])
    start = collector.rgb_arrivals[0] if collector.rgb_arrivals else None
    stop = collector.last_output
    cpu = None
    if start is not None and stop > start:
        before = [x for x in samples if x[0] <= start] or samples[:1]
        after = [x for x in samples if x[0] >= stop] or samples[-1:]
        t0, c0 = before[-1]
        t1, c1 = after[0]
        if t1 > t0:
            cpu = 100.0 * (c1 - c0) / os.sysconf('SC_CLK_TCK') / (t1 - t0)
    arrivals = collector.rgb_arrivals
    input_hz = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else None
    if not arrivals:
        notes.append('this script saw no RGB input')
    return RateResult(
        target_hz=target_hz, play_rate=round(play_rate, 4), sets_offered=offered, delivered=delivered,
        delivered_fraction={p: round(n / offered, 3) for p, n in delivered.items()},
        latency_ms_median=round(float(np.median(latencies)), 1) if latencies.size else None,
        latency_ms_p99=round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        node_cpu_percent=round(cpu, 1) if cpu is not None else None,
        input_hz_seen=round(input_hz, 1) if input_hz else None, node_counters=node_counters,
        window_s=round(stop - start, 2) if start is not None else 0.0,
        player_exit=int(player.returncode), notes=notes)


def markdown(results: Sequence[RateResult]) -> str:
    def num(x: float | None) -> str:
        return '-' if x is None else f'{x:g}'

    lines = ['| target Hz | input Hz seen | sets offered | delivered rgb_lwir | delivered rgb_depth | '
             'latency ms median | latency ms p99 | node CPU % (1 core = 100) | node received rgb/lwir/depth | '
             'stale dropped lwir/depth |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in results:
        def c(key: str, r: RateResult = r) -> str:
            return str(r.node_counters.get(key, '?'))

        lines.append(f'| {r.target_hz:g} | {num(r.input_hz_seen)} | {r.sets_offered} | '
                     f'{r.delivered["rgb_lwir"]} ({100 * r.delivered_fraction["rgb_lwir"]:.0f} %) | '
                     f'{r.delivered["rgb_depth"]} ({100 * r.delivered_fraction["rgb_depth"]:.0f} %) | '
                     f'{num(r.latency_ms_median)} | {num(r.latency_ms_p99)} | {num(r.node_cpu_percent)} | '
                     f'{"/".join(c(s + ".received") for s in ("rgb", "lwir", "depth"))} | '
                     f'{c("rgb_lwir.stale_dropped")}/{c("rgb_depth.stale_dropped")} |')
    return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bag', type=Path, help='bag to play (default: a new synthetic-rig bag)')
    parser.add_argument('--duration', type=float, default=3.0, help='seconds of the generated bag (default 3)')
    parser.add_argument('--size-scale', type=float, default=None,
                        help='generated bag image scale (default 1.0: RGB 640x480, LWIR 640x512, depth 848x480; '
                             '0.5 with --tiny)')
    parser.add_argument('--rates', type=float, nargs='+', default=[10.0, 30.0, 60.0], help='target set rates, Hz')
    parser.add_argument('--model-rgb-lwir', type=Path, help='model (default: the shipped models/rgb_lwir)')
    parser.add_argument('--model-rgb-depth', type=Path, help='model (default: the shipped models/rgb_depth)')
    parser.add_argument('--tiny', action='store_true',
                        help='LABELLED SMOKE RUN: tiny random 32x32-input models on a half-size bag (the node\'s '
                             'plumbing, not the cost of a real model at camera size)')
    parser.add_argument('--outputs', nargs='+', default=['all'], metavar='OUTPUT',
                        help='outputs subscribed (the node computes only these): all (default: every pair '
                             f'output and fused) or some of {", ".join(PAIR_OUTPUTS)}, fused')
    parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                        help='extra register_node parameter, e.g. --set viz_max_rate_hz=0')
    parser.add_argument('--backend', default='auto',
                        help='register_node backend: auto, onnxruntime, torch, tensorrt (default auto)')
    parser.add_argument('--device', default='auto', help='register_node device: auto, cpu, cuda[:N] (default auto)')
    parser.add_argument('--warmup', type=int, default=10,
                        help='sets played at 10 Hz before measuring, not reported (default 10)')
    parser.add_argument('--slop', type=float, default=0.04,
                        help='node sync.slop_s (default 0.04: --restamp at rate r stretches the recorded '
                             'camera offsets, LWIR 4-8 ms after RGB in the synth rig, by 1/r)')
    parser.add_argument('--json', type=Path, help='also write the results here')
    parser.add_argument('--markdown', type=Path, help='also write the table (and the run\'s facts) here')
    parser.add_argument('--workdir', type=Path, help='keep the bag, models and node log here')
    args = parser.parse_args(argv)
    if args.size_scale is None:
        args.size_scale = 0.5 if args.tiny else 1.0
    outputs = set(args.outputs)
    known = {*PAIR_OUTPUTS, 'fused', 'all'}
    if not outputs <= known:
        parser.error(f'--outputs: unknown {sorted(outputs - known)}; choose from {", ".join(sorted(known))}')
    args.outputs = [*PAIR_OUTPUTS, 'fused'] if 'all' in outputs else [o for o in (*PAIR_OUTPUTS, 'fused')
                                                                      if o in outputs]
    if 'flow' not in args.outputs:
        parser.error('--outputs must include flow (delivery and latency are measured on <pair>/flow)')
    if args.device.startswith('cuda'):
        import torch

        if not torch.cuda.is_available():
            parser.error(f'--device {args.device}: torch sees no CUDA device here; use --device cpu or auto')
    return args


def default_models(backend: str) -> dict[str, Path]:
    """The shipped models the node would pick for `backend` (.pt for torch, else .onnx)."""
    from nmr.pipeline.settings import default_model_path

    return {p: default_model_path(p, backend) for p in PAIRS}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from nmr.ros.testing import INPUT_TOPICS, make_tiny_model, ros_env, start_node, stop_node

    ros_env()  # private DDS domain, large-image profile, for this process and its children
    load_before = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix='nmr_node_latency_') if args.workdir is None else None
    work = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    bag = args.bag or make_bag(work, args.duration, args.size_scale)
    facts = bag_facts(bag, INPUT_TOPICS)
    models = {'rgb_lwir': args.model_rgb_lwir, 'rgb_depth': args.model_rgb_depth}
    shipped = default_models(args.backend)
    for i, pair in enumerate(PAIRS):
        if models[pair] is None:
            models[pair] = (make_tiny_model(work / f'{pair}_tiny.pt', pair, seed=i) if args.tiny
                            else shipped[pair])
    log = work / 'register_node.log'
    params = {'models.rgb_lwir': str(models['rgb_lwir']), 'models.rgb_depth': str(models['rgb_depth']),
              'backend': args.backend, 'device': args.device, 'diagnostics_period_s': 0.5,
              'sync.slop_s': args.slop}
    for item in args.set:
        name, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'--set {item!r}: expected NAME=VALUE')
        params[name] = value
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    node_proc = start_node(params, log, extra_args=['-r', f'__ns:={NS}'])
    rclpy.init()
    node = rclpy.create_node('nmr_node_latency')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    results: list[RateResult] = []
    try:
        collector = Collector(node, INPUT_TOPICS['rgb'], args.outputs)
        deadline = time.monotonic() + 120.0
        while not (collector.matched() and len(re.findall(r'model .* loaded', log.read_text())) >= 2):
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'register_node did not come up (see {log}):\n{log.read_text()[-2000:]}')
            executor.spin_once(timeout_sec=0.1)
        if args.warmup > 0:  # first inferences, first publishes (SHM segments) and discovery are slow
            run_rate(executor, collector, node_proc.pid, bag, INPUT_TOPICS, 10.0, facts, 3 * args.warmup)
        for hz in args.rates:
            results.append(run_rate(executor, collector, node_proc.pid, bag, INPUT_TOPICS, hz, facts))
            print(f'{hz:g} Hz: {asdict(results[-1])}', file=sys.stderr)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        code = stop_node(node_proc)
    load_after = os.getloadavg()
    backend = re.findall(r'model .* loaded \(([^)]*)\)', log.read_text())
    table = markdown(results)
    facts_line = (f'{"TINY RANDOM MODELS (smoke run, not a user configuration); " if args.tiny else ""}'
                  f'outputs subscribed: {", ".join(args.outputs)}; bag {bag} (RGB {facts["rgb_hz"]:.1f} Hz, '
                  f'frames {facts["counts"]}, size scale {args.size_scale:g}), models '
                  f'{", ".join(str(m) for m in models.values())}, node backend {", ".join(backend) or "?"}'
                  f'{"; node parameters " + ", ".join(args.set) if args.set else ""}; '
                  f'load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores; '
                  f'node exit {code}')
    print(table)
    print(f'\n{facts_line}')
    if args.markdown:
        args.markdown.write_text(f'{table}\n\n{facts_line}\n')
    if args.json:
        args.json.write_text(json.dumps({
            'command': [sys.executable, *sys.argv], 'bag': str(bag), 'bag_facts': facts,
            'models': {p: str(m) for p, m in models.items()}, 'backend': args.backend, 'node_backend': backend,
            'outputs': args.outputs, 'tiny': args.tiny, 'size_scale': args.size_scale, 'node_params': args.set,
            'cpu_count': os.cpu_count(), 'loadavg_before': load_before, 'loadavg_after': load_after,
            'node_exit': code, 'results': [asdict(r) for r in results]}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
