"""R_S exactness and conventions, R_Phi shapes / init / ONNX export, T and D shapes, checkpoint files."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nmr.errors import ModelFileError
from nmr.models.checkpoint import (
    ModelMetadata,
    load_checkpoint,
    load_registration_net,
    read_checkpoint,
    save_checkpoint,
)
from nmr.models.metadata import ModelMetadata as RecordClass
from nmr.models.registration import RegistrationConfig, RegistrationNet, count_macs
from nmr.models.resampler import flow_to_native, warp

torch.set_num_threads(1)


def _const_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


@pytest.mark.parametrize('hw', [(1, 1), (5, 7), (37, 53), (64, 80), (120, 161)])
def test_zero_flow_is_exact_identity(hw: tuple[int, int]) -> None:
    img = torch.rand(2, 3, *hw)
    out, valid = warp(img, torch.zeros(2, 2, *hw))
    assert torch.equal(out, img)
    assert valid.dtype == torch.bool and bool(valid.all())


def test_integer_shift_is_exact_and_marks_outside_invalid() -> None:
    img = torch.rand(1, 1, 20, 30)
    out, valid = warp(img, _const_flow(1, 20, 30, 3.0, -2.0))
    # registered(x, y) = moving(x + 3, y - 2)
    assert torch.equal(out[0, 0, 2:, :27], img[0, 0, :18, 3:])
    assert torch.all(out[0, 0, :, 28:] == 0)
    assert not valid[0, 0, :, 27:].any() and not valid[0, 0, :2].any()
    assert valid[0, 0, 2:, :27].all()


def test_subpixel_shift_is_linear_interpolation() -> None:
    xs = torch.arange(16, dtype=torch.float32)
    ramp = (2.0 * xs + 1.0).view(1, 1, 1, 16).expand(1, 1, 6, 16).contiguous()  # linear in x
    out, _ = warp(ramp, _const_flow(1, 6, 16, 0.25, 0.0))
    torch.testing.assert_close(out[0, 0, :, :15], ramp[0, 0, :, :15] + 0.5, atol=1e-5, rtol=0)


def test_warp_is_differentiable_in_flow_and_image() -> None:
    img = torch.rand(1, 1, 8, 8, requires_grad=True)
    flow = _const_flow(1, 8, 8, 0.3, 0.2).requires_grad_(True)
    out, _ = warp(img, flow)
    out.sum().backward()
    assert img.grad is not None and flow.grad is not None and flow.grad.abs().sum() > 0


def test_warp_between_different_sizes_uses_moving_pixels() -> None:
    moving = torch.rand(1, 1, 10, 12)
    out, _ = warp(moving, torch.zeros(1, 2, 4, 5))  # fixed grid 4x5, v + 0 addresses moving pixels
    assert torch.equal(out, moving[..., :4, :5])


def test_flow_to_native_same_grid_same_size_is_identity() -> None:
    flow = torch.randn(1, 2, 8, 10)
    assert torch.equal(flow_to_native(flow, (8, 10), (8, 10)), flow)


def test_flow_to_native_zero_net_flow_maps_fixed_onto_moving_scaling() -> None:
    # Zero net flow means "pixel centres correspond after both are resized to the net grid":
    # native fixed v -> moving m = (v + 0.5) * W_m / W_f - 0.5.
    phi = flow_to_native(torch.zeros(1, 2, 16, 20), (30, 40), (60, 100))
    xs = torch.arange(40, dtype=torch.float32)
    ys = torch.arange(30, dtype=torch.float32)
    torch.testing.assert_close(phi[0, 0, 0], (xs + 0.5) * 100 / 40 - 0.5 - xs)
    torch.testing.assert_close(phi[0, 1, :, 0], (ys + 0.5) * 60 / 30 - 0.5 - ys)


def test_flow_to_native_constant_shift_scales_by_moving_over_net() -> None:
    phi = flow_to_native(_const_flow(1, 16, 20, 2.0, -1.0), (32, 40), (32, 40))
    torch.testing.assert_close(phi[:, 0], torch.full((1, 32, 40), 4.0))
    torch.testing.assert_close(phi[:, 1], torch.full((1, 32, 40), -2.0))


def test_flow_to_native_matches_warp_of_resized_images() -> None:
    # The native flow must warp the native moving image the same way the net flow warps the net images:
    # a moving image that is linear in x stays linear after bilinear resizing, so both agree closely.
    hm, wm, hf, wf, h, w = 24, 36, 30, 40, 12, 16
    xs = torch.arange(wm, dtype=torch.float32)
    moving = xs.view(1, 1, 1, wm).expand(1, 1, hm, wm).contiguous()
    phi_n = _const_flow(1, h, w, 1.5, 0.0)
    phi = flow_to_native(phi_n, (hf, wf), (hm, wm))
    reg, valid = warp(moving, phi)
    # expected moving x-coordinate sampled at native fixed v: m = (u + 1.5 + 0.5) * wm / w - 0.5
    v = torch.arange(wf, dtype=torch.float32)
    u = (v + 0.5) * w / wf - 0.5
    m = (u + 1.5 + 0.5) * wm / w - 0.5
    inside = valid[0, 0, 0]
    torch.testing.assert_close(reg[0, 0, 0][inside], m[inside], atol=1e-4, rtol=0)


@pytest.mark.parametrize('arch', ['paper', 'fast'])
def test_registration_net_any_size_and_near_identity_init(arch: str) -> None:
    torch.manual_seed(0)
    net = RegistrationNet(RegistrationConfig(arch=arch))
    moving, fixed = torch.rand(2, 3, 70, 131) * 2 - 1, torch.rand(2, 1, 70, 131) * 2 - 1
    flow = net(moving, fixed)
    assert flow.shape == (2, 2, 70, 131)
    assert flow.abs().max() < 0.05  # tiny output weights: the untrained net barely moves pixels


def test_fast_uses_far_fewer_macs_than_paper() -> None:
    paper = count_macs(RegistrationNet(RegistrationConfig(arch='paper')), 128, 160)
    fast = count_macs(RegistrationNet(RegistrationConfig(arch='fast')), 128, 160)
    assert paper > 8 * fast > 0


def test_registration_config_round_trip() -> None:
    cfg = RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16])
    again = RegistrationConfig.from_dict({**cfg.to_dict(), 'future_key': 1})
    assert again == cfg and again.down_factor == 16
    with pytest.raises(ValueError):
        RegistrationConfig(arch='huge')


def test_registration_net_exports_to_onnx_with_dynamic_size() -> None:
    ort = pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    net = RegistrationNet(RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16])).eval()
    with torch.no_grad():
        net.flow_head.weight.normal_(0.0, 0.05)  # make the output non-trivial
    buf = io.BytesIO()
    args = (torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48))
    dyn = {2: 'h', 3: 'w'}
    from nmr.inference.export import torchscript_export_warnings_silenced

    with torchscript_export_warnings_silenced():  # why this exporter: see that function
        torch.onnx.export(net, args, buf, opset_version=17, input_names=['moving', 'fixed'],
                          output_names=['flow'], dynamic_axes={'moving': dyn, 'fixed': dyn, 'flow': dyn},
                          dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    moving, fixed = torch.rand(1, 3, 45, 70) * 2 - 1, torch.rand(1, 1, 45, 70) * 2 - 1
    ref = net(moving, fixed).detach().numpy()
    out = sess.run(None, {'moving': moving.numpy(), 'fixed': fixed.numpy()})[0]
    assert out.shape == (1, 2, 45, 70)
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def _meta(pair: str = 'rgb_lwir', cfg: RegistrationConfig | None = None) -> ModelMetadata:
    cfg = cfg or RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16])
    return ModelMetadata(pair=pair, registration=cfg.to_dict(), normalisation={'low_percentile': 1.0},
                         net_hw=(32, 48), train_data={'pairs': 3, 'sources': ['x.csv']})


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    cfg = RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16])
    net = RegistrationNet(cfg)
    path = tmp_path / 'm.pt'
    save_checkpoint(path, {'registration': net.state_dict()}, _meta(cfg=cfg), extra={'epoch': 3, 't': (1, 2)})
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == 'nmr-checkpoint'
    loaded, meta = load_registration_net(path, expected_pair='rgb_lwir')
    assert meta.net_hw == (32, 48) and meta.pair == 'rgb_lwir' and meta.train_data['pairs'] == 3
    assert not loaded.training
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert read_checkpoint(path).extra == {'epoch': 3, 't': [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ['m.pt']  # no temporary file left behind


def test_checkpoint_errors_are_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match='does not exist'):
        load_checkpoint(tmp_path / 'missing.pt')
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ModelFileError, match='corrupt'):
        load_checkpoint(bad)
    other = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(2)}, other)
    with pytest.raises(ModelFileError, match='not an nmr checkpoint'):
        load_checkpoint(other)
    evil = tmp_path / 'evil.pt'
    torch.save({'format': 'nmr-checkpoint', 'obj': argparse.Namespace(a=1)}, evil)  # an arbitrary class
    with pytest.raises(ModelFileError, match='untrusted'):
        load_checkpoint(evil)
    good = tmp_path / 'good.pt'
    cfg = RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16])
    save_checkpoint(good, {'registration': RegistrationNet(cfg).state_dict()}, _meta('rgb_depth', cfg))
    with pytest.raises(ModelFileError, match='not rgb_lwir'):
        load_registration_net(good, expected_pair='rgb_lwir')
    for err_path in (tmp_path / 'missing.pt', bad):
        with pytest.raises(ModelFileError) as exc:
            load_registration_net(err_path)
        assert '\n' not in str(exc.value)


def test_model_metadata_has_one_parser_for_every_model_file() -> None:
    """Checkpoints, ONNX exports and engine sidecars all parse metadata with ModelMetadata.from_dict."""
    assert RecordClass is ModelMetadata
    meta = _meta(cfg=RegistrationConfig(arch='fast', encoder_channels=[8, 16, 16]))
    meta.registration['future_key'] = [1, 2]  # a newer architecture's field survives the round trip
    again = ModelMetadata.from_dict(meta.to_dict(), source='x.onnx')
    assert again == ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict())), source='x.onnx')
    assert again.registration == meta.to_dict()['registration'] and again.net_hw == (32, 48)
    assert again.fixed_kind == 'lwir' and ModelMetadata(pair='rgb_depth').fixed_kind == 'depth'
    bad = [
        ([1, 2], 'not a mapping'),
        ({'pair': 'rgb_thermal'}, "pair 'rgb_thermal' is not one of rgb_lwir, rgb_depth"),
        ({'pair': 'rgb_lwir', 'net_hw': [256]}, 'net_hw'),
        ({'pair': 'rgb_lwir', 'net_hw': [0, 32]}, 'net_hw'),
        ({'pair': 'rgb_lwir', 'registration': 'fast'}, 'registration is not a mapping'),
    ]
    for d, match in bad:
        with pytest.raises(ModelFileError, match=match) as exc:
            ModelMetadata.from_dict(d, source='m.onnx')
        assert str(exc.value).startswith('m.onnx: ') and '\n' not in str(exc.value)
    with pytest.raises(ModelFileError, match=r'model m\.pt is for pair rgb_lwir, not rgb_depth'):
        again.check_pair('rgb_depth', 'm.pt')
    again.check_pair('rgb_lwir', 'm.pt')
    again.check_pair(None, 'm.pt')
