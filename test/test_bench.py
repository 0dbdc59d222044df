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


def test_onnx_model_skips_torch_with_the_reason_and_prints_the_header_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmr.bench.fresh import fresh_checkpoint
    from nmr.inference.export import export_onnx
    from nmr.inference.model_file import read_checkpoint

    monkeypatch.setenv('NMR_CACHE_DIR', str(tmp_path / 'cache'))
    pt = fresh_checkpoint(tmp_path / 'm.pt', 'fast', 'rgb_lwir', (96, 128))
    net, info = read_checkpoint(pt)
    onnx = tmp_path / 'm.onnx'
    export_onnx(net, info, onnx, sizes=[(96, 128)], dynamic=True, log=lambda _m: None)
    argv = ['bench', '--model', str(onnx), '--sizes', '128x96', '--iters', '1', '--warmup', '0',
            '--backends', 'onnxruntime,torch', '--baselines', 'none']
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    skipped = [line for line in lines if line.startswith('nmr bench: torch skipped')]
    assert skipped and '.pt' in skipped[0]
    assert not any('failed' in line for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith('backend '))
    row = next(i for i, line in enumerate(lines) if line.startswith('onnxruntime-cpu'))
    assert header < row and sum(line.startswith('onnxruntime-cpu') for line in lines) == 1
