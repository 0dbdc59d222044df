"""benchmarks/node_latency.py's options (issue 21, points 5 and 6), checked without running it.

The benchmark defaults to what users run (full camera size, the shipped models); the tiny-model run is
an option; GPU runs (torch on CUDA, ONNX Runtime's CUDA provider) are chosen with --backend/--device, and
a CUDA request on a machine without CUDA is refused with one line before anything starts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'node_latency.py'
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason='benchmarks/ is not installed with the package')


@pytest.fixture(scope='module')
def bench() -> Any:
    spec = importlib.util.spec_from_file_location('node_latency', SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_defaults_are_full_size_with_every_output(bench: Any) -> None:
    args = bench.parse_args([])
    assert args.size_scale == 1.0 and not args.tiny and args.rates == [10.0, 30.0, 60.0]
    assert args.outputs == ['registered', 'flow', 'flow_viz', 'overlay', 'fused']
    assert args.model_rgb_lwir is None  # -> the shipped model, picked per backend


def test_the_tiny_run_is_an_option_at_half_size(bench: Any) -> None:
    args = bench.parse_args(['--tiny'])
    assert args.tiny and args.size_scale == 0.5
    assert bench.parse_args(['--tiny', '--size-scale', '0.25']).size_scale == 0.25


def test_registered_and_flow_only(bench: Any) -> None:
    assert bench.parse_args(['--outputs', 'flow', 'registered']).outputs == ['registered', 'flow']
    with pytest.raises(SystemExit):
        bench.parse_args(['--outputs', 'registered'])  # flow is what delivery is measured on
    with pytest.raises(SystemExit):
        bench.parse_args(['--outputs', 'flow', 'depth'])


@pytest.mark.parametrize(('backend', 'suffix'), [('torch', '.pt'), ('onnxruntime', '.onnx'), ('auto', '.onnx')])
def test_shipped_models_follow_the_backend(bench: Any, backend: str, suffix: str) -> None:
    models = bench.default_models(backend)
    assert set(models) == {'rgb_lwir', 'rgb_depth'}
    assert all(m.suffix == suffix and m.is_file() for m in models.values())


def test_gpu_options(bench: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        args = bench.parse_args(['--backend', 'torch', '--device', 'cuda'])
        assert (args.backend, args.device) == ('torch', 'cuda')
        return
    with pytest.raises(SystemExit) as err:
        bench.parse_args(['--backend', 'torch', '--device', 'cuda'])
    assert err.value.code == 2 and 'no CUDA device' in capsys.readouterr().err
    args = bench.parse_args(['--backend', 'onnxruntime', '--device', 'cpu', '--set', 'viz_max_rate_hz=0'])
    assert args.set == ['viz_max_rate_hz=0']
