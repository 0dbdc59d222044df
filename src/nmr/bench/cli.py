"""`nmr bench [--backends ...] [--sizes WxH,...] [--archs corr,fast,paper] [--iters N] [--json OUT]`.

Per available backend, resolution and architecture: median / p99 latency of R_Phi alone and of the whole
register step, throughput, peak memory and FLOPs, plus classical baselines (OpenCV DIS on gradient
images; SimpleITK MI B-spline where importable) on the same images in the same run. Untrained weights
are used unless --model is given (latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from nmr import atomic
from nmr.domain import BACKENDS
from nmr.errors import ConfigError
from nmr.inference.protocol import RegistrarProtocol

DEFAULT_SIZES = '320x256,640x512,1280x1024'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--backends',
        default='auto',
        help='comma list of tensorrt,onnxruntime,torch (default: every one available here)',
    )
    parser.add_argument('--sizes', default=DEFAULT_SIZES, help=f'WxH list (default {DEFAULT_SIZES})')
    parser.add_argument('--archs', default='corr,fast,paper', help='architectures, untrained (default corr,fast,paper)')
    parser.add_argument('--model', help='benchmark this model file instead of untrained --archs')
    parser.add_argument(
        '--net-size',
        metavar='WxH',
        help='network input size (default: a --model runs at its own trained size, as deployed; untrained '
        '--archs at the frame size)',
    )
    parser.add_argument(
        '--baselines',
        default='dis,sitk-mi',
        help='classical baselines on the same images: dis, sitk-mi (skipped if SimpleITK is '
        'missing), or none (default dis,sitk-mi)',
    )
    parser.add_argument(
        '--iters', type=int, default=10, help='timed iterations per configuration (default 10)'
    )
    parser.add_argument('--warmup', type=int, default=2, help='untimed warm-up runs (default 2)')
    parser.add_argument(
        '--max-seconds',
        type=float,
        default=90.0,
        help='time budget per configuration: fewer iterations, or skipped with a note when '
        'one step takes over a third of it (default 90)',
    )
    parser.add_argument('--refine-tiles', action='store_true',
                        help="refine each flow on 2x2 tiles (nmr.inference.tiles; the node's default for "
                             'rgb_depth): its cost')
    parser.add_argument('--device', default='auto', help='auto (default), cpu or cuda[:N]')
    parser.add_argument('--precision', help='backend precision (torch fp32|fp16|bf16, tensorrt fp32|fp16)')
    parser.add_argument('--json', metavar='OUT', help='write machine info and all results as JSON')


def _available_backends(requested: str, device: str, log: Any, kind: str = 'checkpoint') -> list[str]:
    """The requested backends that can run a model file of `kind` here; one line per one that cannot."""
    from nmr.inference.select import Candidate, probe

    names = (
        BACKENDS if requested == 'auto' else tuple(b.strip() for b in requested.split(',') if b.strip())
    )
    out = []
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f'--backends: {name!r} is not one of {", ".join(BACKENDS)}')
        reasons = [probe(Candidate(name, d), kind, device) for d in ('cuda', 'cpu')]
        if any(r is None for r in reasons):
            out.append(name)
        else:
            log(f'nmr bench: {name} skipped: {reasons[-1]}')  # the CPU reason: the one a CUDA machine shares
    return out


def run_bench(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    import os

    from nmr.bench.fresh import fresh_checkpoint
    from nmr.bench.harness import BenchResult, bench_config, format_table, machine_summary, synthetic_pairs
    from nmr.evaluation.baselines import create_baseline, sitk_available
    from nmr.inference.engine_cache import format_size, parse_sizes
    from nmr.inference.registrar import resolve_device
    from nmr.inference.select import create_registrar
    from nmr.inference.tiles import TileRefinedRegistrar

    sizes = parse_sizes(args.sizes)
    device = str(resolve_device(args.device))
    kind = 'checkpoint'
    if args.model:
        from nmr.inference.model_file import model_kind

        kind = model_kind(args.model)  # an .onnx cannot run on torch: say so instead of failing there
    backends = _available_backends(args.backends, args.device, log, kind)
    machine = machine_summary()
    results: list[BenchResult] = []
    options = {'precision': args.precision} if args.precision else {}
    log('\n'.join(format_table([]).splitlines()[:2]))  # the header, above the rows printed as they come
    with tempfile.TemporaryDirectory(prefix='nmr-bench-') as tmp:
        os.environ.setdefault('NMR_CACHE_DIR', str(Path(tmp) / 'cache'))  # on-the-fly ONNX exports
        if args.model:
            models = [('model', Path(args.model))]
        else:
            archs = [a.strip() for a in args.archs.split(',') if a.strip()]
            models = [(a, fresh_checkpoint(Path(tmp) / f'{a}.pt', a, 'rgb_lwir', sizes[0])) for a in archs]
        fixed_net = parse_sizes(args.net_size)[0] if args.net_size else None
        for hw in sizes:
            pairs = synthetic_pairs(hw)
            for arch, path in models:
                net_hw = fixed_net or (_model_net_hw(path) if args.model else None) or hw
                gflops = _gflops(path, net_hw)
                for backend in backends:
                    result = BenchResult(
                        backend=backend, arch=arch, size=format_size(hw), device=device, gflops=gflops
                    )

                    def make(
                        backend: str = backend, path: Path = path, hw: tuple[int, int] = net_hw
                    ) -> RegistrarProtocol:
                        registrar = create_registrar(
                            path,
                            backend=backend,
                            device=args.device,
                            net_hw=hw,
                            log=lambda _m: None,
                            **options,
                        )
                        return TileRefinedRegistrar(registrar) if args.refine_tiles else registrar

                    bench_config(make, pairs, args.iters, args.warmup, args.max_seconds, device, result)
                    result.backend = _label(result)
                    log(format_table([result]).splitlines()[-1])
                    results.append(result)
            for name in [b.strip() for b in args.baselines.split(',') if b.strip() and b.strip() != 'none']:
                result = BenchResult(backend=f'baseline-{name}', arch='-', size=format_size(hw), device='cpu')
                if name == 'sitk-mi' and not sitk_available():
                    result.note = 'skipped: SimpleITK is not installed (pip install SimpleITK)'
                else:
                    bench_config(
                        functools.partial(create_baseline, name),
                        pairs,
                        args.iters,
                        args.warmup,
                        args.max_seconds,
                        'cpu',
                        result,
                    )
                log(format_table([result]).splitlines()[-1])
                results.append(result)
    machine['loadavg_after'] = machine_summary()['loadavg']
    log(
        f'machine: {machine["cpu_count"]} CPU(s), load average before {machine["loadavg"]} after '
        f'{machine["loadavg_after"]}, torch {machine["torch"]}, onnxruntime {machine["onnxruntime"]}, '
        f'GPU {machine["cuda"] or "none"}'
    )
    return {
        'machine': machine,
        'iters': args.iters,
        'warmup': args.warmup,
        'results': [r.as_json() for r in results],
    }


def _label(result: Any) -> str:
    """'onnxruntime-cpu', 'torch-cuda'...: the backend with the device it actually ran on."""
    if result.backend == 'tensorrt':
        return 'tensorrt'
    text = result.describe
    dev = 'cuda' if ' on cuda' in text else 'cpu'
    return f'{result.backend}-{dev}'


def _model_net_hw(path: Path) -> tuple[int, int] | None:
    """The network size a model file was trained at (its metadata), as the node would run it."""
    from nmr.inference.model_file import read_model_info

    net_hw = read_model_info(path).net_hw
    return (int(net_hw[0]), int(net_hw[1])) if net_hw else None


def _gflops(path: Path, hw: tuple[int, int]) -> float:
    """Convolution GFLOPs of the checkpoint's R_Phi at hw (NaN for non-checkpoint models)."""
    import math

    if path.suffix not in ('.pt', '.pth'):
        return math.nan
    from nmr.models.checkpoint import load_registration_net
    from nmr.models.registration import count_flops

    net, _ = load_registration_net(path)
    return count_flops(net, *hw) / 1e9


def run(args: argparse.Namespace) -> int:
    report = run_bench(args, log=lambda m: print(m, file=sys.stdout))
    if args.json:
        with atomic.atomic_open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'nmr bench: wrote {args.json}', file=sys.stderr)
    return 0
