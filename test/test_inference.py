"""Registrar backends: selection and fallback, one behavioural contract for every backend, model errors."""

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nmr.bench.fresh import fresh_checkpoint
from nmr.errors import ConfigError, ModelFileError
from nmr.evaluation.baselines import identity_flow
from nmr.inference import engine_cache as ec
from nmr.inference import tensorrt_backend as trtb
from nmr.inference.registrar import Registration
from nmr.inference.select import create_registrar
from nmr.models.resampler import flow_to_native, warp

NET_HW = (96, 128)
TRT_OK, TRT_WHY = trtb.tensorrt_status()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('NMR_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'nmr-cache'))


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp('models')
    return {
        'zero': fresh_checkpoint(d / 'zero.pt', 'fast', 'rgb_lwir', NET_HW, zero_flow=True),
        'flow': fresh_checkpoint(d / 'flow.pt', 'fast', 'rgb_lwir', NET_HW, flow_scale=1.0),
        'depth': fresh_checkpoint(d / 'depth.pt', 'fast', 'rgb_depth', NET_HW, flow_scale=1.0),
    }


def images(
    fixed_hw: tuple[int, int], moving_hw: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    moving = rng.integers(0, 256, (*moving_hw, 3), dtype=np.uint8)
    fixed = rng.integers(20000, 30000, fixed_hw, dtype=np.uint16)
    return moving, fixed


BACKENDS = [
    pytest.param('torch', id='torch-cpu'),
    pytest.param('onnxruntime', id='onnxruntime-cpu'),
    pytest.param(
        'tensorrt', id='tensorrt', marks=pytest.mark.skipif(not TRT_OK, reason=f'TensorRT: {TRT_WHY}')
    ),
]


@pytest.mark.parametrize('backend', BACKENDS)
def test_zero_flow_registers_to_resampled_moving(backend: str, models: dict[str, Path]) -> None:
    fixed_hw, moving_hw = (479, 641), (300, 410)  # odd sizes, moving smaller than fixed
    moving, fixed = images(fixed_hw, moving_hw)
    reg = create_registrar(models['zero'], backend=backend, log=lambda _m: None)
    out = reg.register(moving, fixed, 'mono16')
    assert isinstance(out, Registration)
    assert out.flow.shape == (*fixed_hw, 2) and out.flow.dtype == np.float32
    assert out.registered.shape == (*fixed_hw, 3) and out.registered.dtype == np.uint8
    assert out.valid.shape == fixed_hw and out.valid.dtype == np.bool_
    np.testing.assert_allclose(out.flow, identity_flow(fixed_hw, moving_hw), atol=1e-4)
    zeros = torch.zeros(1, 2, *NET_HW)
    expected, valid = warp(
        torch.from_numpy(moving).permute(2, 0, 1)[None].float(), flow_to_native(zeros, fixed_hw, moving_hw)
    )
    expected_u8 = expected[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(out.registered.astype(int) - expected_u8.astype(int)).max() <= 1
    assert (out.valid == valid[0, 0].numpy()).all()
    assert {'preprocess', 'net', 'postprocess', 'total'} <= set(out.timings_ms)


@pytest.mark.parametrize('backend', BACKENDS)
def test_zero_flow_same_size_is_exact_identity(backend: str, models: dict[str, Path]) -> None:
    moving, fixed = images((70, 90), (70, 90), seed=1)
    out = create_registrar(models['zero'], backend=backend, log=lambda _m: None).register(
        moving, fixed, 'mono16'
    )
    assert np.abs(out.flow).max() < 1e-5
    assert (out.registered == moving).all() and out.valid.all()


@pytest.mark.parametrize('backend', BACKENDS)
def test_backends_agree_and_accept_tensors(backend: str, models: dict[str, Path]) -> None:
    moving, fixed = images((101, 131), (120, 160), seed=2)
    ref = create_registrar(models['flow'], backend='torch', log=lambda _m: None).register(
        moving, fixed, 'mono16'
    )
    reg = create_registrar(models['flow'], backend=backend, log=lambda _m: None)
    out = reg.register(torch.from_numpy(moving), torch.from_numpy(fixed.astype(np.int32)), 'mono16')
    assert np.abs(ref.flow).max() > 0.5  # a real flow, not the trivial zero
    assert np.abs(out.flow - ref.flow).max() < 1e-3
    net_flow = reg.flow_net(np.zeros((3, *NET_HW), np.float32), np.zeros((1, *NET_HW), np.float32))
    assert net_flow.shape == (*NET_HW, 2)
    assert reg.flow_net(np.zeros((2, 3, 64, 80), np.float32), np.zeros((2, 1, 64, 80), np.float32)).shape == (
        2,
        64,
        80,
        2,
    )


def test_depth_pair_with_16uc1(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(3)
    depth = rng.integers(0, 8000, (83, 117), dtype=np.uint16)
    moving = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = create_registrar(models['depth'], backend='torch', log=lambda _m: None).register(
        moving, depth, '16UC1'
    )
    assert out.flow.shape == (83, 117, 2) and np.isfinite(out.flow).all()


def test_auto_picks_fastest_available_and_logs_why(models: dict[str, Path]) -> None:
    lines: list[str] = []
    reg = create_registrar(models['flow'], backend='auto', log=lines.append)
    text = '\n'.join(lines)
    if not TRT_OK:
        assert 'backend tensorrt skipped:' in text
    if not torch.cuda.is_available():
        assert 'backend onnxruntime-gpu skipped: CUDA is not available' in text
        assert 'backend torch-cuda skipped: CUDA is not available' in text
        assert reg.backend == 'onnxruntime' and 'backend onnxruntime-cpu chosen' in text
    skipped = [ln for ln in lines if 'skipped' in ln]
    assert all(ln.count('\n') == 0 and ': ' in ln for ln in skipped)  # one line each, with a reason


def test_auto_falls_back_when_a_backend_breaks(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nmr.inference import onnx_backend

    def broken(*_a, **_k):
        raise RuntimeError('simulated provider crash')

    monkeypatch.setattr(onnx_backend, 'OnnxRuntimeRegistrar', broken)
    lines: list[str] = []
    reg = create_registrar(models['flow'], backend='auto', device='cpu', log=lines.append)
    assert reg.backend == 'torch'
    assert any(
        'onnxruntime-cpu skipped: failed to start (RuntimeError: simulated provider crash)' in ln
        for ln in lines
    )
    assert any('device cpu requested' in ln for ln in lines)


@pytest.mark.skipif(TRT_OK, reason='TensorRT is usable here; the unavailable path does not apply')
def test_explicit_tensorrt_without_it_is_a_config_error(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match='backend tensorrt cannot run'):
        create_registrar(models['flow'], backend='tensorrt', log=lambda _m: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_device_without_cuda_is_a_config_error(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match='CUDA is not available'):
        create_registrar(models['flow'], device='cuda', log=lambda _m: None)


def test_unknown_backend(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match='not one of'):
        create_registrar(models['flow'], backend='tflite')


def test_onnx_file_runs_and_torch_refuses_it(models: dict[str, Path], tmp_path: Path) -> None:
    from nmr.inference.export import export_checkpoint

    onnx_path = export_checkpoint(models['flow'], tmp_path / 'm.onnx', log=lambda _m: None).onnx_path
    lines: list[str] = []
    reg = create_registrar(onnx_path, log=lines.append)
    assert reg.backend == 'onnxruntime' and reg.pair == 'rgb_lwir'
    with pytest.raises(ConfigError, match=r'needs a \.pt checkpoint'):
        create_registrar(onnx_path, backend='torch', log=lambda _m: None)


@pytest.mark.parametrize(
    'name,content,match',
    [
        ('missing.pt', None, 'does not exist'),
        ('corrupt.pt', b'\x00garbage', 'corrupt or not a PyTorch file'),
        ('model.txt', b'hello', 'neither a checkpoint'),
        ('broken.onnx', b'\x08\x01garbage', 'not a readable ONNX file|cannot load'),
    ],
)
def test_model_file_errors(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match) as exc:
        create_registrar(path, log=lambda _m: None)
    assert '\n' not in str(exc.value) and name in str(exc.value)


def test_onnx_without_nmr_metadata(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node('Identity', ['x'], ['y'])],
        'g',
        [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / 'foreign.onnx'
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ModelFileError, match='no nmr metadata'):
        create_registrar(path, log=lambda _m: None)


def test_wrong_pair(models: dict[str, Path]) -> None:
    with pytest.raises(ModelFileError, match='is for pair rgb_depth, not rgb_lwir'):
        create_registrar(models['depth'], backend='torch', expected_pair='rgb_lwir', log=lambda _m: None)


# -- the engine cache around TensorRT, with a stand-in tensorrt module and builder -----------------------
def test_engine_built_once_cached_and_rebuilt_when_stale(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nmr.inference.export import export_checkpoint
    from nmr.inference.model_file import read_onnx_info

    fake = types.ModuleType('tensorrt')
    fake.__version__ = '10.99.0'
    monkeypatch.setitem(sys.modules, 'tensorrt', fake)
    gpu = {'name': 'NVIDIA H100 80GB HBM3', 'cc': '9.0'}
    monkeypatch.setattr(trtb, 'gpu_identity', lambda _d: (gpu['name'], gpu['cc']))
    builds: list[tuple] = []

    def builder(onnx_path, precision, profiles, workspace):
        builds.append((precision, tuple(profiles)))
        return b'ENGINE:' + precision.encode()

    onnx_path = export_checkpoint(models['flow'], tmp_path / 'm.onnx', log=lambda _m: None).onnx_path
    info = read_onnx_info(onnx_path)
    profiles = ec.shape_profiles([NET_HW], dynamic=False)
    dev = torch.device('cpu')
    first = trtb.engine_for(onnx_path, info, dev, 'fp16', profiles, log=lambda _m: None, builder=builder)
    assert first.read_bytes() == b'ENGINE:fp16' and len(builds) == 1
    assert (
        trtb.engine_for(onnx_path, info, dev, 'fp16', profiles, log=lambda _m: None, builder=builder) == first
    )
    assert len(builds) == 1  # cache hit
    assert trtb.find_current_engine(onnx_path, dev, 'fp16', NET_HW) == first
    assert trtb.find_current_engine(onnx_path, dev, 'fp16', (512, 640)) is None  # outside its profiles
    gpu['name'] = 'NVIDIA A100'  # a foreign GPU: the old engine is not current, a new one is built
    assert trtb.find_current_engine(onnx_path, dev, 'fp16', NET_HW) is None
    second = trtb.engine_for(onnx_path, info, dev, 'fp16', profiles, log=lambda _m: None, builder=builder)
    assert second != first and len(builds) == 2
    fake.__version__ = '11.0.0'  # a TensorRT upgrade
    trtb.engine_for(onnx_path, info, dev, 'fp16', profiles, log=lambda _m: None, builder=builder)
    assert len(builds) == 3
    trtb.engine_for(onnx_path, info, dev, 'fp32', profiles, log=lambda _m: None, builder=builder)
    assert len(builds) == 4 and builds[-1][0] == 'fp32'
    side = ec.read_sidecar(second)
    assert side is not None and side['metadata']['pair'] == 'rgb_lwir' and side['onnx'] == 'm.onnx'


@pytest.mark.skipif(not TRT_OK, reason=f'TensorRT: {TRT_WHY}')
def test_tensorrt_engine_matches_torch(models: dict[str, Path], tmp_path: Path) -> None:
    from nmr.inference.export import export_checkpoint

    report = export_checkpoint(
        models['flow'], tmp_path / 'm.onnx', sizes=[NET_HW], engine=True, log=lambda _m: None
    )
    assert report.engine_path is not None and report.engine_path.is_file()
    moving, fixed = images((96, 128), (96, 128), seed=4)
    ref = create_registrar(models['flow'], backend='torch', device='cuda', log=lambda _m: None)
    trt = create_registrar(report.onnx_path, backend='tensorrt', log=lambda _m: None)
    a = ref.register(moving, fixed, 'mono16').flow
    b = trt.register(moving, fixed, 'mono16').flow
    assert np.abs(a - b).max() < 1e-2
