#!/usr/bin/env python3
"""Benchmark the inference engines: a thin wrapper around `nmr bench` with this repository's defaults.

    .venv/bin/python benchmarks/bench_engines.py                      # fast + paper, 3 sizes, all backends
    .venv/bin/python benchmarks/bench_engines.py --sizes 640x512 --iters 20 --json bench.json

Every option of `nmr bench` is accepted (see `nmr bench --help`); results go to stdout and, with
--json, to a file that records the machine (cores, load average, versions) next to the numbers.
"""

from __future__ import annotations

import sys

from nmr.cli.main import main

if __name__ == '__main__':
    sys.exit(main(['bench', *sys.argv[1:]]))
