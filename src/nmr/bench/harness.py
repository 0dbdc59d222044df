"""Latency / throughput / memory measurement of Registrars and classical baselines on the same images.

Each configuration is measured the same way: build the registrar (not timed), one or more warm-up runs
(not counted: lazy initialisation, autotuning, allocator growth), then `iters` timed runs with the
inputs rotated among a few different image pairs (so no cache is warmer than it would be live).
Two latencies are kept: R_Phi alone on pre-processed inputs, and the whole `register` step
(pre-processing, network, flow_to_native, warp, copy to host).
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nmr.inference.protocol import RegistrarProtocol
from nmr.inference.registrar import Registrar

N_INPUTS = 3


@dataclass
class BenchResult:
    backend: str
    arch: str
    size: str  # 'WxH' (native = net size in the benchmark)
    device: str
    iters: int = 0
    net_ms_median: float = math.nan
    net_ms_p99: float = math.nan
    register_ms_median: float = math.nan
    register_ms_p99: float = math.nan
    throughput_fps: float = math.nan
    peak_mem_mb: float = math.nan
    mem_kind: str = ''
    gflops: float = math.nan
    describe: str = ''
    note: str = ''
    stages_ms: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if isinstance(v, float):
                v = None if not math.isfinite(v) else round(v, 3)
            elif isinstance(v, dict):
                v = {a: round(b, 3) for a, b in v.items()}
            out[k] = v
        return out


def synthetic_pairs(hw: tuple[int, int], n: int = N_INPUTS) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """`n` different (RGB uint8, mono16 LWIR, 'mono16') pairs at `hw`, structured rather than noise."""
    from nmr.inference.export import realistic_inputs

    pairs = []
    for seed in range(n):
        moving, fixed = realistic_inputs(hw, seed=seed)
        rgb = ((moving[0].transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        lwir = (20000 + (fixed[0, 0] + 1.0) * 3000).astype(np.uint16)
        pairs.append((np.ascontiguousarray(rgb), lwir, 'mono16'))
    return pairs


# -- memory ---------------------------------------------------------------------------------------
def _status_kb(field_name: str) -> float | None:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field_name + ':'):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block. GPU: torch's max_memory_allocated, or the drop in free device memory if that
    is larger (TensorRT and ONNX Runtime allocate outside torch). CPU: the RSS high-water mark minus the RSS
    at the start (the high-water mark is reset through /proc/self/clear_refs where Linux allows)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith('cuda')
        self.kind = 'cuda_peak' if self.cuda else 'rss_delta'
        self.start_kb = 0.0
        self.free_start = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_kb = torch.cuda.memory_allocated() / 1024
            self.free_start = torch.cuda.mem_get_info()[0]
        else:
            try:
                with open('/proc/self/clear_refs', 'w') as f:
                    f.write('5')  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.start_kb = _status_kb('VmRSS') or 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            torch_mb = (torch.cuda.max_memory_allocated() / 1024 - self.start_kb) / 1024
            device_mb = (self.free_start - torch.cuda.mem_get_info()[0]) / 2**20
            return max(torch_mb, device_mb)
        hwm = _status_kb('VmHWM')
        if hwm is None:
            return math.nan
        return max(0.0, hwm - self.start_kb) / 1024


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        import torch

        torch.cuda.synchronize()


def _percentiles(ms: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(ms, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 99))


def plan_iters(one_run_s: float, iters: int, max_seconds: float) -> tuple[int, str]:
    """Fit the timed runs (two loops of `iters`) into `max_seconds`; 0 means skip, with the reason."""
    if one_run_s * 3 > max_seconds:
        return 0, (
            f'skipped: one register step took {one_run_s:.1f} s, over a third of the '
            f'{max_seconds:.0f} s budget per configuration (--max-seconds)'
        )
    fit = int(max_seconds / (2 * one_run_s))
    if fit < iters:
        n = max(2, fit)
        return n, f'iterations cut to {n} to fit the {max_seconds:.0f} s budget'
    return iters, ''


def measure(
    registrar: RegistrarProtocol,
    pairs: Sequence[tuple[np.ndarray, np.ndarray, str]],
    iters: int,
    warmup: int,
    max_seconds: float,
    device: str,
    result: BenchResult,
    memory: PeakMemory,
) -> BenchResult:
    """Time `registrar` (a Registrar or a baseline) on rotated `pairs`; fills and returns `result`."""
    t0 = time.perf_counter()
    registrar.register(*pairs[0])
    first = time.perf_counter() - t0
    for i in range(max(0, warmup - 1)):
        registrar.register(*pairs[(i + 1) % len(pairs)])
    n, note = plan_iters(first, iters, max_seconds)
    result.note = note
    if n == 0:
        return result
    # R_Phi alone (registrars with a network only), on inputs pre-processed once
    if isinstance(registrar, Registrar):
        import torch

        with torch.inference_mode():
            prepped = [registrar.preprocess(*p)[1:] for p in pairs]
            registrar._infer(*prepped[0])
            net_ms = []
            for i in range(n):
                m, f = prepped[i % len(prepped)]
                _sync(device)
                t = time.perf_counter()
                registrar._infer(m, f)
                _sync(device)
                net_ms.append((time.perf_counter() - t) * 1e3)
        result.net_ms_median, result.net_ms_p99 = _percentiles(net_ms)
    reg_ms = []
    stages: dict[str, list[float]] = {}
    t_all = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        out = registrar.register(*pairs[i % len(pairs)])
        reg_ms.append((time.perf_counter() - t) * 1e3)
        for k, v in out.timings_ms.items():
            stages.setdefault(k, []).append(v)
    total = time.perf_counter() - t_all
    result.iters = n
    result.register_ms_median, result.register_ms_p99 = _percentiles(reg_ms)
    if not hasattr(registrar, '_infer'):  # baselines: their flow computation is the "net"
        result.net_ms_median, result.net_ms_p99 = _percentiles(stages.get('net', reg_ms))
    result.throughput_fps = n / total
    result.stages_ms = {k: float(np.median(v)) for k, v in stages.items()}
    result.peak_mem_mb = memory.peak_mb()
    result.mem_kind = memory.kind
    return result


def bench_config(
    make: Callable[[], RegistrarProtocol],
    pairs: Sequence[tuple[np.ndarray, np.ndarray, str]],
    iters: int,
    warmup: int,
    max_seconds: float,
    device: str,
    result: BenchResult,
) -> BenchResult:
    """Build a registrar with `make` (not timed, but inside the memory window) and measure it."""
    with PeakMemory(device) as memory:
        try:
            registrar = make()
        except Exception as err:  # report and go on: one broken backend must not stop the table
            first = str(err).splitlines()[0][:160] if str(err) else ''
            result.note = f'failed: {type(err).__name__}: {first}'
            return result
        result.describe = registrar.describe() if hasattr(registrar, 'describe') else ''
        measure(registrar, pairs, iters, warmup, max_seconds, device, result, memory)
    del registrar
    gc.collect()
    return result


def machine_summary() -> dict[str, Any]:
    """What the numbers were measured on, including the load (other users share these CPUs)."""
    import platform

    import torch

    info: dict[str, Any] = {
        'cpu_count': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
        'processor': platform.processor() or platform.machine(),
        'loadavg': [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None,
        'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime as ort

        info['onnxruntime'] = ort.__version__
    except ImportError:
        info['onnxruntime'] = None
    return info


def format_table(results: Sequence[BenchResult]) -> str:
    def f(v: float, nd: int = 1) -> str:
        return '-' if not math.isfinite(v) else f'{v:.{nd}f}'

    head = (
        f'{"backend":16s} {"arch":6s} {"size":>9s} {"net ms":>8s} {"p99":>8s} {"step ms":>8s} {"p99":>8s} '
        f'{"fps":>6s} {"mem MB":>7s} {"GFLOP":>7s}  note'
    )
    lines = [head, '-' * len(head)]
    for r in results:
        lines.append(
            f'{r.backend[:16]:16s} {r.arch[:6]:6s} {r.size:>9s} {f(r.net_ms_median):>8s} '
            f'{f(r.net_ms_p99):>8s} {f(r.register_ms_median):>8s} {f(r.register_ms_p99):>8s} '
            f'{f(r.throughput_fps):>6s} {f(r.peak_mem_mb, 0):>7s} {f(r.gflops):>7s}  {r.note}'
        )
    return '\n'.join(lines)
