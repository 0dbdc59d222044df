"""Peak memory of the node's per-set processing by camera size (issue 22, item 4: document the memory).

For each fixed-camera size, a fresh process loads the shipped rgb_lwir model (ONNX Runtime, CPU), runs
`--sets` synchronised sets through the node's PairProcessor with every output, and reports its peak RSS
(ru_maxrss) after loading and after the sets: the difference is what the images, flow and outputs of that
size cost on top of the model. RGB is 1.25x the fixed size per side (a typical RGB camera is larger).

    python benchmarks/memory_per_size.py [--sizes 640x512,1280x1024,1920x1536,4096x3072] [--sets 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(width: int, height: int, sets: int) -> dict[str, float]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='640x512,1280x1024,1920x1536,4096x3072')
    parser.add_argument('--sets', type=int, default=5)
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
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
