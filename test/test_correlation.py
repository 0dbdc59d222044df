"""The correlation R_Phi (`corr`) and the supervised objectives: cost volume, contrastive matching, a known
shift learnt from ground truth, ONNX parity, NeMAR's independence from ground truth, warm start (--init).
Tiny sizes, one thread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nmr.data.types import FramePair
from nmr.errors import ConfigError
from nmr.models.checkpoint import read_checkpoint
from nmr.models.correlation import CorrRegistrationNet, cost_volume, normalise_features, warp_features
from nmr.models.registration import RegistrationConfig, build_registration
from nmr.models.resampler import flow_to_native, flow_to_net, warp
from nmr.training.appearance import AppearanceConfig, random_flips
from nmr.training.config import load_config
from nmr.training.objectives import SupervisedWeights, contrastive_loss
from nmr.training.step import NemarSystem
from nmr.training.supervised import SupervisedSystem
from nmr.training.trainer import TrainData, Trainer

torch.set_num_threads(1)

TINY_CORR = (
    'model.registration={arch: corr, encoder_channels: [8, 12, 16], corr_radii: [1, 2, 2], decoder_channels: [16, 12]}'
)
# corr R with the smallest T and D: NeMAR steps in a fraction of a second
TINY_NEMAR = [
    TINY_CORR,
    'model.translation_ngf=8',
    'model.translation_blocks=1',
    'model.discriminator_ndf=8',
    'model.discriminator_layers=2',
]


def tiny_corr() -> CorrRegistrationNet:
    net = build_registration(
        RegistrationConfig(arch='corr', encoder_channels=[8, 12, 16], corr_radii=[1, 2, 2], decoder_channels=[16, 12])
    )
    assert isinstance(net, CorrRegistrationNet)
    return net


def textured_pair(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random texture as the fixed image (1 ch) and a colour 'other modality' of it (3 ch)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, 1, h // 4, w // 4, generator=g), size=(h, w), mode='bicubic')
    fixed = (base * 2 - 1).clamp(-1, 1)
    moving = torch.cat((-fixed, 0.5 * fixed, fixed**2), dim=1)
    return moving, fixed


# -- the network's parts ----------------------------------------------------------------------------------
def test_cost_volume_equals_a_direct_loop() -> None:
    g = torch.Generator().manual_seed(1)
    f = normalise_features(torch.randn(2, 5, 6, 7, generator=g))
    m = normalise_features(torch.randn(2, 5, 6, 7, generator=g))
    r = 2
    got = cost_volume(f, m, r)
    want = torch.zeros(2, (2 * r + 1) ** 2, 6, 7)
    for b in range(2):
        for y in range(6):
            for x in range(7):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < 6 and 0 <= xx < 7:
                            want[b, (dy + r) * (2 * r + 1) + dx + r, y, x] = (f[b, :, y, x] * m[b, :, yy, xx]).sum()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_feature_warp_follows_the_flow_convention() -> None:
    feats = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 0] = 1.0  # registered(v) = moving(v + (1, 0))
    out = warp_features(feats, flow)
    torch.testing.assert_close(out[..., :-1], feats[..., 1:])
    torch.testing.assert_close(out, warp(feats, flow)[0], atol=1e-5, rtol=0)


def test_untrained_corr_is_the_identity_and_accepts_any_size() -> None:
    net = tiny_corr().eval()
    moving, fixed = textured_pair(1, 37, 53)
    with torch.no_grad():
        flow = net(moving, fixed)
    assert flow.shape == (1, 2, 37, 53)
    assert float(flow.abs().max()) == 0.0


def test_depth_corr_gets_a_validity_channel_and_the_pair_decides_it() -> None:
    cfg = load_config(None, [TINY_CORR, 'data.pair=rgb_depth', 'loss.objective=supervised'])
    system = SupervisedSystem(cfg)
    assert system.R.config.fixed_validity is True
    assert system.R.fixed_pyramid.levels[0][0].in_channels == 2


def test_flow_to_net_inverts_flow_to_native() -> None:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 32), indexing='ij')
    phi_n = torch.stack((3 * xx - 1 + yy, 2 * yy - 0.5 * xx))[None]  # affine: bilinear resampling is exact
    native = flow_to_native(phi_n, (90, 130), (100, 110))
    back = flow_to_net(native, (90, 130), (100, 110), (24, 32))
    # Up-sampling clamps at the image edge, so the border row/column is only approximately affine.
    torch.testing.assert_close(back[..., 1:-1, 1:-1], phi_n[..., 1:-1, 1:-1], atol=1e-4, rtol=0)


def test_flips_move_images_and_negate_the_flow_component() -> None:
    moving, fixed = textured_pair(1, 16, 24)
    gt = torch.zeros(1, 2, 16, 24)
    gt[:, 0] = 2.0
    gt[:, 1] = 1.0
    valid = torch.ones(1, 1, 16, 24, dtype=torch.bool)
    out = random_flips(
        {'moving': moving, 'fixed': fixed, 'gt_flow': gt, 'valid': valid},
        AppearanceConfig(hflip=1.0),
        torch.Generator().manual_seed(0),
    )
    assert torch.equal(out['fixed'], fixed.flip(-1))
    assert float(out['gt_flow'][0, 0].mean()) == -2.0 and float(out['gt_flow'][0, 1].mean()) == 1.0


# -- objectives ------------------------------------------------------------------------------------------
def test_contrastive_training_makes_same_pixel_features_most_similar() -> None:
    torch.manual_seed(0)
    net = tiny_corr()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gt = torch.zeros(2, 2, 32, 48)
    valid = torch.ones(2, 1, 32, 48, dtype=torch.bool)
    weights = SupervisedWeights(samples=64)

    def margin() -> float:
        """Mean cosine of same-pixel features minus that of features 2 pixels apart (level 1/4)."""
        moving, fixed = textured_pair(2, 32, 48, seed=99)
        with torch.no_grad():
            out = net.encode(moving, fixed)
        f, m = out.fixed_features[1], out.moving_features[1]
        same = (f * m).sum(1).mean()
        other = (f[..., 2:] * m[..., :-2]).sum(1).mean()
        return float(same - other)

    before = margin()
    for step in range(40):
        moving, fixed = textured_pair(2, 32, 48, seed=step)
        loss = contrastive_loss(net.encode(moving, fixed), gt, valid, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = margin()
    assert after > before + 0.1 and after > 0.1, (before, after)


def test_a_known_global_shift_is_learnt_by_a_few_supervised_steps() -> None:
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            TINY_CORR,
            'loss.objective=supervised',
            'optim.lr=3e-3',
            'augment.appearance=false',
            'augment.hflip=0',
            'loss.lambda_contrastive=0',
        ],
    )
    system = SupervisedSystem(cfg, total_steps=10**6)
    shift = torch.tensor([3.0, -2.0]).view(1, 2, 1, 1)

    def batch(seed: int) -> dict[str, torch.Tensor]:
        moving, fixed = textured_pair(4, 32, 48, seed)
        gt = shift.expand(4, 2, 32, 48).clone()
        # moving(v + shift) = the aligned colour image at v: shift the aligned image by +shift
        moving = torch.roll(moving, shifts=(-2, 3), dims=(-2, -1))
        return {'moving': moving, 'fixed': fixed, 'gt_net': gt, 'valid_net': torch.ones(4, 1, 32, 48, dtype=torch.bool)}

    def error() -> float:
        b = batch(1234)
        with torch.no_grad():
            flow = system.R(b['moving'], b['fixed'])
        return float((flow - b['gt_net'])[..., 4:-4, 4:-4].norm(dim=1).mean())

    start = error()
    for step in range(60):
        system.train_batch(batch(step))
    end = error()
    assert start > 3.5 and end < 0.5 * start, (start, end)


def test_nemar_objective_gradients_do_not_depend_on_ground_truth() -> None:
    """The NeMAR step gets the batch with its ground truth, yet R's gradients are bit-identical whatever the
    ground truth says: the truth never enters the objective (only `mixed` uses it, as a separate term)."""
    cfg = load_config(
        None,
        [
            *TINY_NEMAR,
        ],
    )
    moving, fixed = textured_pair(2, 32, 48)
    grads = []
    for scale in (0.0, 50.0):
        torch.manual_seed(0)
        system = NemarSystem(cfg)
        for p in system.R.decoders.parameters():  # a non-zero flow, so R gets a gradient
            torch.nn.init.normal_(p, std=0.01)
        gt = torch.full((2, 2, 32, 48), scale)
        system.train_batch({'moving': moving, 'fixed': fixed, 'gt_net': gt, 'valid_net': gt[:, :1] >= 0})
        grads.append(torch.cat([p.detach().flatten() for p in system.R.parameters()]))
    assert torch.equal(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0.0


# -- export ----------------------------------------------------------------------------------------------
def test_corr_exports_to_onnx_with_parity_at_two_sizes(tmp_path: Path) -> None:
    pytest.importorskip('onnxruntime')
    from nmr.inference.export import export_checkpoint
    from nmr.models.checkpoint import ModelMetadata, save_checkpoint

    torch.manual_seed(0)
    net = tiny_corr()
    for d in net.decoders:
        torch.nn.init.normal_(d.head.weight, std=0.05)
    meta = ModelMetadata(
        pair='rgb_lwir',
        registration=net.config.to_dict(),
        normalisation={},
        net_hw=(32, 48),
        train_data={},
        nmr_version='test',
    )
    save_checkpoint(tmp_path / 'corr.pt', {'registration': net.state_dict()}, meta, {})
    report = export_checkpoint(
        tmp_path / 'corr.pt', tmp_path / 'corr.onnx', sizes=[(32, 48), (45, 61)], log=lambda s: None
    )
    assert report.max_diff_px <= 1e-3
    from nmr.inference.model_file import read_model_info

    # the architecture record survives checkpoint and ONNX unchanged (as plain JSON data)
    written = json.loads(json.dumps(net.config.to_dict()))
    assert read_model_info(tmp_path / 'corr.pt').registration == written
    assert read_model_info(tmp_path / 'corr.onnx').registration == written
    assert read_model_info(tmp_path / 'corr.onnx').metadata.registration['arch'] == 'corr'
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / 'corr.onnx'), providers=['CPUExecutionProvider'])
    for h, w in ((32, 48), (45, 61)):
        moving, fixed = textured_pair(1, h, w, seed=h)
        got = sess.run(None, {'moving': moving.numpy(), 'fixed': fixed.numpy()})[0]
        with torch.no_grad():
            want = net(moving, fixed).numpy()
        assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-3


# -- warm start ------------------------------------------------------------------------------------------
def _pairs(n: int, h: int = 32, w: int = 48) -> list[FramePair]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        lwir = (rng.random((h // 4, w // 4)) * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        rgb = np.stack((255 - lwir, lwir // 2, lwir), axis=-1).astype(np.uint8)
        out.append(FramePair(name=f'p{i}', moving=rgb, fixed=lwir, fixed_kind='lwir', fixed_encoding='mono8'))
    return out


def _run(out: Path, *extra: str, init: Path | None = None) -> Trainer:
    cfg = load_config(
        None,
        [
            *TINY_NEMAR,
            'optim.epochs=2',
            'optim.batch_size=2',
            'data.net_hw=[32,48]',
            'data.workers=0',
            'augment.enabled=true',
            'run.keep_every=0',
            *extra,
        ],
    )
    data = TrainData(train=_pairs(4), val=_pairs(2), summary={'source': 'test'})
    return Trainer(cfg, data, out, init=init, log=lambda s: None)


def test_supervised_run_then_nemar_fine_tuning_from_init(tmp_path: Path) -> None:
    result = _run(tmp_path / 'sup', 'loss.objective=supervised', 'optim.schedule=onecycle').fit()
    assert 'epe_pct_unregistered' in result['last']
    warm = read_checkpoint(tmp_path / 'sup' / 'last.pt').state['registration']

    trainer = _run(tmp_path / 'ft', 'optim.freeze_registration_epochs=1', init=tmp_path / 'sup' / 'last.pt')
    for k, v in trainer.system.R.state_dict().items():
        assert torch.equal(v, warm[k]), k
    t_before = {k: v.clone() for k, v in trainer.system.T.state_dict().items()}
    trainer.fit(stop_after_epoch=1)
    after = read_checkpoint(tmp_path / 'ft' / 'last.pt').state
    for k, v in after['registration'].items():  # R frozen in epoch 1
        assert torch.equal(v, warm[k]), k
    assert any(not torch.equal(after['translation'][k], t_before[k]) for k in t_before)  # T trained


def test_init_adopts_the_checkpoint_architecture_and_refuses_another_pair(tmp_path: Path) -> None:
    _run(tmp_path / 'sup', 'loss.objective=supervised', 'optim.epochs=1').fit()
    warm = tmp_path / 'sup' / 'last.pt'
    fast = 'model.registration={arch: fast, encoder_channels: [8, 16, 16], stem_channels: [8]}'
    trainer = _run(tmp_path / 'ft', fast, init=warm)
    assert trainer.system.R.config.arch == 'corr'
    with pytest.raises(ConfigError, match='--init'):
        _run(tmp_path / 'x', 'data.pair=rgb_depth', init=warm)
