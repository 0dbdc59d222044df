"""Peak memory of the node's per-set processing by camera size (issue 22, item 4: document the memory).

For each fixed-camera size, a fresh process loads the shipped rgb_lwir model (ONNX Runtime, CPU), runs
`--sets` synchronised sets through the node's PairProcessor with every output, and reports its peak RSS
(ru_maxrss) after loading and after the sets: the difference is what the images, flow and outputs of that
size cost on top of the model. RGB is 1.25x the fixed size per side (a typical RGB camera is larger).

    python benchmarks/memory_per_size.py [--sizes 640x512,1280x1024,1920x1536,4096x3072] [--sets 5]

`--sequence 640x512:3,4096x3072:3,640x512:10` instead runs those sizes one after the other in one process and
reports the current RSS (VmRSS, not the peak) after each step: whether memory taken by a burst of large sets
is given back when the size drops again (issue 22, item 4: buffers held by the largest frame).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(width: int, height: int, sets: int) -> dict[str, object]:
    import numpy as np

    from nmr.inference.select import create_registrar
    from nmr.pipeline.outputs import PairProcessor

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    registrar = create_registrar(ROOT / 'models' / 'rgb_lwir.onnx', backend='onnxruntime', device='cpu',
                                 log=lambda _m: None)
    processor = PairProcessor(registrar, 'rgb_lwir')
    rng = np.random.default_rng(0)
    small = processor.run(rng.integers(0, 256, (64, 80, 3), np.uint8), rng.integers(0, 65535, (64, 80), np.uint16),
                          'mono16')
    assert small.flow.shape == (64, 80, 2)
    loaded = peak_mb()
    rgb_hw = (height * 5 // 4, width * 5 // 4)
    for _ in range(sets):
        processor.run(rng.integers(0, 256, (*rgb_hw, 3), np.uint8), rng.integers(0, 65535, (height, width), np.uint16),
                      'mono16')
    return {'fixed': f'{width}x{height}', 'rgb': f'{rgb_hw[1]}x{rgb_hw[0]}', 'loaded_mb': round(loaded),
            'peak_mb': round(peak_mb()), 'per_size_mb': round(peak_mb() - loaded)}


def _rss_mb() -> float:
    """Current resident set size (VmRSS) of this process, in MB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


def _sequence(steps: str) -> list[dict[str, object]]:
    """Run `size:count` steps in order through one PairProcessor; the current RSS after each step."""
    import gc

    import numpy as np

    from nmr.inference.select import create_registrar
    from nmr.pipeline.outputs import PairProcessor

    registrar = create_registrar(ROOT / 'models' / 'rgb_lwir.onnx', backend='onnxruntime', device='cpu',
                                 log=lambda _m: None)
    processor = PairProcessor(registrar, 'rgb_lwir')
    rng = np.random.default_rng(0)
    processor.run(rng.integers(0, 256, (64, 80, 3), np.uint8), rng.integers(0, 65535, (64, 80), np.uint16), 'mono16')
    rows: list[dict[str, object]] = [{'step': 'loaded', 'rss_mb': round(_rss_mb())}]
    for step in steps.split(','):
        size, _, count = step.partition(':')
        width, height = (int(v) for v in size.split('x'))
        rgb_hw = (height * 5 // 4, width * 5 // 4)
        for _ in range(int(count or 1)):
            result = processor.run(rng.integers(0, 256, (*rgb_hw, 3), np.uint8),
                                   rng.integers(0, 65535, (height, width), np.uint16), 'mono16')
            del result
        gc.collect()
        rows.append({'step': f'{count or 1} sets at {size}', 'rss_mb': round(_rss_mb())})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='640x512,1280x1024,1920x1536,4096x3072')
    parser.add_argument('--sets', type=int, default=5)
    parser.add_argument('--sequence', help='size:count,... in one process; current RSS after each step')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequence:
        print('| after | RSS |')
        print('|---|---|')
        for row in _sequence(args.sequence):
            print(f'| {row["step"]} | {row["rss_mb"]} MB |')
        return 0
    if args.child:
        w, h = (int(v) for v in args.child.split('x'))
        print(json.dumps(_child(w, h, args.sets)))
        return 0
    print('| fixed camera | RGB camera | peak RSS after loading | peak RSS after the sets | per-size share |')
    print('|---|---|---|---|---|')
    for size in args.sizes.split(','):
        out = subprocess.run([sys.executable, __file__, '--child', size, '--sets', str(args.sets)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'| {r["fixed"]} | {r["rgb"]} | {r["loaded_mb"]} MB | {r["peak_mb"]} MB | {r["per_size_mb"]} MB |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
