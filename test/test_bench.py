"""`nmr bench` smoke test at a tiny size, and the pieces of the harness that decide what is measured."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nmr.bench import harness
from nmr.cli.main import main


def test_bench_smoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv('NMR_CACHE_DIR', str(tmp_path / 'cache'))
    out = tmp_path / 'bench.json'
    assert (
        main(
            [
                'bench',
                '--sizes',
                '128x96',
                '--archs',
                'fast',
                '--iters',
                '2',
                '--warmup',
                '1',
                '--backends',
                'onnxruntime,torch',
                '--baselines',
                'dis',
                '--json',
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report['machine']['cpu_count'] >= 1 and 'loadavg' in report['machine']
    rows = {r['backend']: r for r in report['results']}
    assert set(rows) == {'onnxruntime-cpu', 'torch-cpu', 'baseline-dis'}
    for name, row in rows.items():
        assert row['iters'] == 2 and row['size'] == '128x96', name
        assert row['register_ms_median'] > 0 and row['register_ms_p99'] >= row['register_ms_median']
        assert row['net_ms_median'] > 0 and row['throughput_fps'] > 0
        assert row['mem_kind'] == 'rss_delta' and row['peak_mem_mb'] is not None
    assert (
        rows['torch-cpu']['gflops'] > 0 and rows['torch-cpu']['gflops'] == rows['onnxruntime-cpu']['gflops']
    )
    table = capsys.readouterr().out
    assert 'step ms' in table and 'baseline-dis' in table and 'load average' in table


def test_unavailable_backend_is_reported_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    from nmr.bench.cli import _available_backends
    from nmr.inference.tensorrt_backend import tensorrt_status

    if tensorrt_status()[0]:
        pytest.skip('tensorrt is usable here')
    lines: list[str] = []
    assert _available_backends('tensorrt,torch', 'auto', lines.append) == ['torch']
    assert lines and 'tensorrt skipped' in lines[0]


def test_plan_iters_fits_budget_or_skips() -> None:
    assert harness.plan_iters(0.01, 10, 90) == (10, '')
    n, note = harness.plan_iters(5.0, 10, 90)
    assert n == 9 and 'cut to 9' in note
    n, note = harness.plan_iters(40.0, 10, 90)
    assert n == 0 and note.startswith('skipped:') and '--max-seconds' in note


def test_inputs_are_rotated_distinct_pairs() -> None:
    pairs = harness.synthetic_pairs((40, 56))
    assert len(pairs) == harness.N_INPUTS
    assert all(
        p[0].shape == (40, 56, 3) and p[0].dtype == np.uint8 and p[1].dtype == np.uint16 for p in pairs
    )
    assert not np.array_equal(pairs[0][0], pairs[1][0])


def test_wrapper_script_help() -> None:
    script = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_engines.py'
    proc = subprocess.run([sys.executable, str(script), '--help'], capture_output=True, text=True)
    assert proc.returncode == 0 and 'nmr bench' in proc.stdout
