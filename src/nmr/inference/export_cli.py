"""`nmr export --model CKPT [--out X.onnx] [--sizes WxH,...] [--dynamic] [--fp16] [--engine]`."""

from __future__ import annotations

import argparse
import json
import sys

from nmr import atomic
from nmr.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='checkpoint (.pt) written by `nmr train`')
    parser.add_argument(
        '--out', help='ONNX file to write (default: the checkpoint name with .onnx / .fp16.onnx)'
    )
    parser.add_argument(
        '--sizes',
        help='network sizes WIDTHxHEIGHT[,WIDTHxHEIGHT...] (default: the training '
        'size, dynamic H/W); with several sizes the ONNX is dynamic and the engine gets one '
        'optimisation profile per size',
    )
    parser.add_argument(
        '--dynamic',
        action='store_true',
        help='dynamic H/W in the ONNX and one wide engine profile (64 px .. 2x the largest size)',
    )
    parser.add_argument(
        '--fp16', action='store_true', help='compute in fp16 (ONNX and engine); I/O stays fp32'
    )
    parser.add_argument(
        '--engine',
        action='store_true',
        help='also build a TensorRT engine next to the ONNX (needs tensorrt and a CUDA GPU)',
    )
    parser.add_argument(
        '--workspace-gb', type=float, default=2.0, help='TensorRT builder workspace limit (GiB)'
    )
    parser.add_argument('--device', default='cuda', help='CUDA device for the engine build (default cuda)')
    parser.add_argument('--json', help='write the export report (parity numbers, paths) as JSON here')


def run(args: argparse.Namespace) -> int:
    from nmr.inference.engine_cache import parse_sizes
    from nmr.inference.export import export_checkpoint

    try:
        sizes = parse_sizes(args.sizes) if args.sizes else None
    except ValueError as err:
        raise ConfigError(f'--sizes: {err}') from None
    report = export_checkpoint(
        args.model,
        args.out,
        sizes=sizes,
        dynamic=args.dynamic,
        fp16=args.fp16,
        engine=args.engine,
        workspace_bytes=int(args.workspace_gb * (1 << 30)),
        device=args.device,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    summary = {
        'onnx': str(report.onnx_path),
        'engine': str(report.engine_path) if report.engine_path else None,
        'precision': report.precision,
        'dynamic': report.dynamic,
        'sizes': [f'{w}x{h}' for h, w in report.sizes],
        'max_parity_diff_px': report.max_diff_px,
        'tolerance_px': report.tolerance_px,
        'parity': report.parity,
        'seconds': round(report.seconds, 2),
    }
    if args.json:
        with atomic.atomic_open(args.json, 'w') as f:
            json.dump(summary, f, indent=2)
    print(f'{report.onnx_path}' + (f'\n{report.engine_path}' if report.engine_path else ''))
    return 0
