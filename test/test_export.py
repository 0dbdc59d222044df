"""`nmr export`: checkpoint -> ONNX with metadata, parity with PyTorch, and clear errors for bad files."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nmr.bench.fresh import fresh_checkpoint
from nmr.cli.main import main
from nmr.errors import ModelFileError
from nmr.inference import export as ex
from nmr.inference.model_file import ONNX_EXPORT_KEY, ONNX_METADATA_KEY, read_onnx_info
from nmr.models.checkpoint import load_registration_net

NET_HW = (96, 128)  # the smallest size whose coarsest level is > 1x1 for both archs


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('m') / 'fast.pt'
    return fresh_checkpoint(path, 'fast', 'rgb_lwir', NET_HW, flow_scale=1.0)


def test_export_parity_and_metadata(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / 'fast.onnx'
    report = ex.export_checkpoint(ckpt, out, log=lambda _m: None)
    assert out.is_file() and report.dynamic and report.precision == 'fp32'
    assert report.max_diff_px <= 1e-3
    assert {p['inputs'] for p in report.parity} == {'random', 'realistic'}
    assert len({p['size'] for p in report.parity}) >= 2  # traced size + an untraced one (dynamic axes)
    assert max(p['max_abs_flow_px'] for p in report.parity) > 0.5  # a non-trivial flow was compared
    model = onnx.load(str(out))
    assert model.opset_import[0].version >= 17
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props[ONNX_METADATA_KEY])
    assert meta['pair'] == 'rgb_lwir' and meta['net_hw'] == list(NET_HW)
    assert meta['registration']['arch'] == 'fast'
    assert json.loads(props[ONNX_EXPORT_KEY])['dynamic'] is True
    info = read_onnx_info(out)
    assert info.pair == 'rgb_lwir' and info.net_hw == NET_HW

    # independent check at a third size: ORT vs PyTorch on the same inputs
    net, _ = load_registration_net(ckpt)
    sess = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    moving, fixed = ex.realistic_inputs((80, 144), seed=7)
    got = sess.run(['flow'], {'moving': moving, 'fixed': fixed})[0]
    with torch.inference_mode():
        ref = net(torch.from_numpy(moving), torch.from_numpy(fixed)).numpy()
    assert got.shape == (1, 2, 80, 144)
    assert np.abs(got - ref).max() <= 1e-3


def test_export_cli_with_sizes(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / 'sized.onnx'
    report_json = tmp_path / 'r.json'
    assert main(['export', '--model', str(ckpt), '--out', str(out), '--sizes', '128x96,160x128',
                 '--json', str(report_json)]) == 0
    report = json.loads(report_json.read_text())
    assert report['sizes'] == ['128x96', '160x128'] and report['max_parity_diff_px'] <= 1e-3


def test_parity_failure_is_loud(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_trace = ex._trace_to_onnx

    def trace_other_weights(module, hw, dynamic, opset):  # the ONNX gets different weights than PyTorch
        with torch.no_grad():
            twin = type(module)(type(module.net)(module.net.config), False)
            twin.net.load_state_dict(module.net.state_dict())
            twin.net.flow_head.bias.add_(0.5)
        return real_trace(twin.eval(), hw, dynamic, opset)

    monkeypatch.setattr(ex, '_trace_to_onnx', trace_other_weights)
    out = tmp_path / 'bad.onnx'
    with pytest.raises(ModelFileError, match='differs from PyTorch'):
        ex.export_checkpoint(ckpt, out, log=lambda _m: None)
    assert not out.exists()


def test_fp16_export_runs_in_ort(ckpt: Path, tmp_path: Path) -> None:
    report = ex.export_checkpoint(ckpt, tmp_path / 'h.onnx', fp16=True, sizes=[NET_HW], log=lambda _m: None)
    assert report.precision == 'fp16' and report.max_diff_px <= report.tolerance_px
    sess = ort.InferenceSession(str(report.onnx_path), providers=['CPUExecutionProvider'])
    assert sess.get_inputs()[0].type == 'tensor(float)'  # fp32 I/O, fp16 inside


@pytest.mark.parametrize('content,match', [
    (None, 'does not exist'),
    (b'not a checkpoint at all', 'corrupt or not a PyTorch file'),
])
def test_bad_model_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / 'm.pt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        ex.export_checkpoint(path, tmp_path / 'o.onnx')


def test_export_rejects_non_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / 'weights.bin'
    path.write_bytes(b'\0' * 10)
    assert main(['export', '--model', str(path)]) == 2
    err = capsys.readouterr().err
    assert 'error:' in err and 'weights.bin' in err and len(err.strip().splitlines()) == 1


def test_engine_without_tensorrt_is_a_clear_error(ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip('torch')
    try:
        import tensorrt  # noqa: F401
        pytest.skip('tensorrt is installed here: the error path does not apply')
    except ImportError:
        pass
    out = tmp_path / 'e.onnx'
    with pytest.raises(ModelFileError, match='tensorrt'):
        ex.export_checkpoint(ckpt, out, engine=True, log=lambda _m: None)
    assert out.is_file()  # the ONNX is still written and usable


def test_onnx_metadata_is_read_without_the_onnx_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`onnx` has no rosdep key, so a robot may only have onnxruntime: it reads the metadata itself."""
    shipped = Path(__file__).resolve().parents[1] / 'models' / 'rgb_lwir.onnx'
    with_onnx = read_onnx_info(shipped)
    monkeypatch.setitem(__import__('sys').modules, 'onnx', None)  # `import onnx` raises ImportError
    without = read_onnx_info(shipped)
    assert (without.pair, without.net_hw, without.kind) == (with_onnx.pair, with_onnx.net_hw, 'onnx')
    broken = tmp_path / 'broken.onnx'
    broken.write_bytes(b'not onnx')
    with pytest.raises(ModelFileError, match='not a readable ONNX file'):
        read_onnx_info(broken)
