"""Training: config, augmentation, the D/R+T step (loss goes down, Table-2 routing), LR decay, DDP parity,
the trainer end to end with checkpoints and an exact resume. Everything tiny (CPU, 2 cores)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nmr.data.types import FramePair
from nmr.errors import ConfigError
from nmr.models.checkpoint import load_registration_net, read_checkpoint
from nmr.models.resampler import warp
from nmr.training.augment import field_on_grid, misalign, sample_misalignment
from nmr.training.config import AugmentConfig, TrainConfig, load_config
from nmr.training.step import NemarSystem
from nmr.training.trainer import TrainData, Trainer

torch.set_num_threads(1)

TINY = [
    'model.registration={arch: fast, encoder_channels: [8, 16, 16], stem_channels: [8]}',
    'model.translation_ngf=8',
    'model.translation_blocks=1',
    'model.discriminator_ndf=8',
    'model.discriminator_layers=2',
    'optim.lr=1e-3',
]


def tiny_config(*extra: str) -> TrainConfig:
    return load_config(None, [*TINY, *extra])


def shapes(b: int, h: int = 32, w: int = 48, dx: int = 3, dy: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed: bright rectangles (1 channel); moving: the same rectangles in another 'modality' (colour),
    displaced by (dx, dy), so registered(v) = moving(v + (dx, dy))."""
    fixed = -torch.ones(b, 1, h, w)
    moving = -torch.ones(b, 3, h, w)
    for i in range(b):
        y0, x0 = 6 + 2 * i, 8 + 3 * i
        fixed[i, 0, y0 : y0 + 12, x0 : x0 + 14] = 1.0
        moving[i, :, y0 + dy : y0 + dy + 12, x0 + dx : x0 + dx + 14] = torch.tensor([0.5, -0.2, 0.8]).view(
            3, 1, 1
        )
    return moving, fixed


# -- config ---------------------------------------------------------------------------------------------
def test_shipped_yaml_equals_defaults_and_overrides_apply() -> None:
    yaml_path = Path(__file__).resolve().parents[1] / 'config' / 'train.yaml'
    assert load_config(yaml_path) == TrainConfig().validate()
    cfg = load_config(yaml_path, ['optim.lr=2e-4', 'data.net_hw=[128,160]', 'augment.enabled=true'])
    assert cfg.optim.lr == 2e-4 and cfg.data.net_hw == [128, 160] and cfg.augment.enabled is True


@pytest.mark.parametrize(
    'override', ['optim.lrr=1', 'loss.flows=sideways', 'optim.epochs=abc', 'noequals', 'loss.gan_modules=T']
)
def test_bad_config_is_a_one_line_config_error(override: str) -> None:
    extra = ['loss.l1_modules=T'] if override == 'loss.gan_modules=T' else []  # T-only: R gets nothing
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override, *extra])
    assert '\n' not in str(exc.value)


# -- augmentation ---------------------------------------------------------------------------------------
def test_misalignment_ground_truth_registers_back_exactly() -> None:
    g = torch.Generator().manual_seed(3)
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(56.0), indexing='ij')
    smooth = 0.5 * torch.sin(xs / 6.0) * torch.cos(ys / 7.0)  # smooth: bilinear re-sampling is accurate
    aligned = torch.stack((smooth, -smooth, 0.3 * smooth))
    mis = sample_misalignment(40, 56, AugmentConfig(enabled=True), g)
    moving, gt = misalign(aligned, mis)
    assert gt.shape == (2, 40, 56) and float(gt.norm(dim=0).mean()) > 0.2
    registered, valid = warp(moving[None], gt[None])
    # where the registered sample comes from moving pixels that themselves came from inside `aligned`
    inner = valid[0, 0].clone()
    inner[:3], inner[-3:], inner[:, :3], inner[:, -3:] = False, False, False, False
    back = warp(((moving > -1).all(0, keepdim=True).float())[None], gt[None])[0][0, 0] > 0.999
    mask = inner & back
    assert mask.float().mean() > 0.3
    err = (registered[0] - aligned).abs().amax(0)[mask]
    assert float(err.mean()) < 0.02  # bilinear re-sampling twice, no geometric error


def test_coarse_inverse_matches_the_exact_one() -> None:
    """Training solves the inverse field every `stride` pixels; it must stay within a small fraction of a
    pixel of the exact solution at native size (640-wide magnitudes)."""
    from nmr.training.augment import inverse_on_grid

    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        mis = sample_misalignment(250, 500, AugmentConfig(enabled=True), g)
        exact = inverse_on_grid(mis)
        coarse = inverse_on_grid(mis, stride=4)
        assert coarse.shape == exact.shape == (2, 250, 500)
        assert float((coarse - exact).abs().max()) < 0.1
        assert float(exact.norm(dim=0).mean()) > 3.0


def test_each_epoch_draws_new_misalignments_even_in_persistent_workers() -> None:
    """Workers keep their own dataset copy: the epoch must travel with the index (EpochTaggedSampler)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from nmr.training.data import EpochTaggedSampler, TrainingPairs, collate

    ds = TrainingPairs(_frame_pairs(4), 'lwir', (32, 48), augment=AugmentConfig(enabled=True))
    sampler = EpochTaggedSampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=False), len(ds))
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=1, collate_fn=collate,
                        persistent_workers=True)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(next(iter(loader))['moving'])
    assert not torch.equal(epochs[0], epochs[1])
    sampler.set_epoch(1)
    assert torch.equal(next(iter(loader))['moving'], epochs[1])  # same epoch, same fields (resume)


def test_misalignment_warmup_scales_magnitudes_then_reaches_full() -> None:
    from nmr.training.data import scaled, warmup_strength

    cfg = AugmentConfig(enabled=True, warmup_epochs=4, warmup_start=0.2)
    assert [round(warmup_strength(cfg, e), 3) for e in (0, 2, 4, 9)] == [0.2, 0.6, 1.0, 1.0]
    assert warmup_strength(AugmentConfig(enabled=True), 0) == 1.0
    half = scaled(cfg, 0.5)
    assert (half.shift_px, half.elastic_px, half.rotation_deg) == (6.5, 3.5, 1.25)
    mags = []
    for c in (half, cfg):
        g = torch.Generator().manual_seed(1)
        mags.append(float(field_on_grid(sample_misalignment(64, 80, c, g)).norm(dim=0).mean()))
    assert mags[0] == pytest.approx(mags[1] / 2, rel=0.02)  # rotation enters through sin/cos: ~linear


def test_misalignment_magnitude_is_about_15px_at_640() -> None:
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(enabled=True)
    mags = [float(field_on_grid(sample_misalignment(64, 80, cfg, g)).norm(dim=0).mean()) for _ in range(60)]
    # 80 px wide = 1/8 of 640: expect ~15 / 8 px
    assert 1.2 < float(np.mean(mags)) < 2.6


def test_registration_learning_rate_applies_to_r_only() -> None:
    system = NemarSystem(tiny_config('optim.lr_registration=5e-3'))
    lrs = {k: o.param_groups[0]['lr'] for k, o in system.optimizers.items()}
    assert lrs == {'registration': 5e-3, 'translation': 1e-3, 'discriminator': 1e-3}
    assert NemarSystem(tiny_config()).optimizers['registration'].param_groups[0]['lr'] == 1e-3


# -- the step -------------------------------------------------------------------------------------------
def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    system = NemarSystem(tiny_config())
    moving, fixed = shapes(4)
    first = system.train_step(moving, fixed)
    for _ in range(25):
        last = system.train_step(moving, fixed)
    assert float(last['recon']) < 0.5 * float(first['recon'])
    assert float(last['loss_G']) < 0.5 * float(first['loss_G'])


def test_registration_alone_learns_a_known_shift() -> None:
    # Table-1 baseline machinery (R with NCC, mono-modal here): R must recover the (3, 2) px shift.
    torch.manual_seed(0)
    system = NemarSystem(tiny_config('loss.baseline=ncc', 'loss.lambda_smooth=1'))
    moving, fixed = shapes(4, dx=3, dy=2)
    moving = moving.mean(1, keepdim=True).expand(-1, 3, -1, -1) * 0 + (moving > -1).float() * 2 - 1
    for _ in range(60):
        system.train_step(moving, fixed)
    with torch.no_grad():
        flow = system.forward(moving, fixed)['flow']
    on_object = fixed[:, 0] > 0
    assert float(flow[:, 0][on_object].mean()) == pytest.approx(3.0, abs=0.6)
    assert float(flow[:, 1][on_object].mean()) == pytest.approx(2.0, abs=0.6)


def _grads(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def test_table2_routing_sends_each_term_only_to_its_modules() -> None:
    moving, fixed = shapes(2)

    def run(*extra: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        s = NemarSystem(tiny_config(*extra))
        s.train_step(moving, fixed)
        assert s.T is not None
        return _grads(s.R), _grads(s.T)

    # R gets only L1 (+ smoothness), T only the cGAN: changing lambda_gan must not change R's gradient
    r1, t1 = run('loss.l1_modules=R', 'loss.gan_modules=T', 'loss.lambda_gan=1.0')
    r2, t2 = run('loss.l1_modules=R', 'loss.gan_modules=T', 'loss.lambda_gan=3.0')
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(r1, r2))
    assert not all(torch.allclose(a, b) for a, b in zip(t1, t2))
    # default (both): R does feel the cGAN weight
    r3, _ = run('loss.lambda_gan=1.0')
    r4, _ = run('loss.lambda_gan=3.0')
    assert not all(torch.allclose(a, b) for a, b in zip(r3, r4))


@pytest.mark.parametrize('flows', ['register_first', 'translate_first'])
def test_single_flow_ablations_train(flows: str) -> None:
    torch.manual_seed(0)
    s = NemarSystem(tiny_config(f'loss.flows={flows}'))
    out = s.forward(*shapes(2))
    assert ('fake_tr' in out) == (flows == 'register_first') and ('fake_rt' in out) == (
        flows == 'translate_first'
    )
    logs = s.train_step(*shapes(2))
    assert all(torch.isfinite(v) for v in logs.values())


def test_linear_lr_decay_over_second_half() -> None:
    s = NemarSystem(tiny_config('optim.epochs=4'))
    lrs = []
    for _ in range(4):
        lrs.append(s.optimizers['registration'].param_groups[0]['lr'])
        for opt in s.optimizers.values():
            opt.step()  # (no gradients: a no-op) keeps the scheduler's call-order check quiet
        s.step_schedulers()
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])


# -- DDP parity -----------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        s = NemarSystem(tiny_config(), distributed=True)
        moving, fixed = shapes(4)
        half = slice(2 * rank, 2 * rank + 2)
        s.train_step(moving[half], fixed[half])
        if rank == 0:
            torch.save(
                {
                    'params': {k: v for k, v in s.state().items()},
                    'grads': {n: _grads(net) for n, net in s.networks().items()},
                },
                out_file,
            )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_the_same_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    single = NemarSystem(tiny_config())
    moving, fixed = shapes(4)
    # One iteration (D step, then R+T step through the updated D): a second one would compare Adam's
    # amplified rounding noise rather than the reduction.
    single.train_step(moving, fixed)
    fd, init_file = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    os.unlink(init_file)
    out_file = str(tmp_path / 'ddp.pt')
    mp.spawn(_ddp_worker, args=(2, init_file, out_file), nprocs=2, join=True)
    ddp = torch.load(out_file, weights_only=True)
    for name, net in single.networks().items():
        grads = _grads(net)
        for a, b in zip(grads, ddp['grads'][name]):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3)
        # Parameters: Adam divides by sqrt(v), so gradients that are zero up to rounding (conv biases in
        # front of instance norm) move by +-lr in BOTH runs, in unrelated directions; compare the rest.
        for (k, v), g in zip(net.named_parameters(), grads):
            real = g.abs() > 1e-5
            assert real.any() or v.numel() < 64, k
            torch.testing.assert_close(ddp['params'][name][k][real], v.detach()[real], atol=2e-5, rtol=0)


# -- trainer end to end ---------------------------------------------------------------------------------
def _frame_pairs(n: int, h: int = 40, w: int = 56) -> list[FramePair]:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        lwir = np.zeros((h, w), np.uint8)
        y0, x0 = rng.integers(4, h - 20), rng.integers(4, w - 24)
        lwir[y0 : y0 + 14, x0 : x0 + 18] = 200
        lwir[:, : w // 6] = 90
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[lwir == 200] = (30, 160, 220)
        rgb[lwir == 90] = (200, 40, 40)
        pairs.append(
            FramePair(name=f'p{i}', moving=rgb, fixed=lwir, fixed_kind='lwir', fixed_encoding='mono8')
        )
    return pairs


def _trainer(out: Path, epochs: int, resume: bool = False) -> Trainer:
    cfg = tiny_config(
        f'optim.epochs={epochs}',
        'optim.batch_size=2',
        'data.net_hw=[32,48]',
        'data.workers=0',
        'augment.enabled=true',
        'run.log_every=1',
        'run.keep_every=1',
    )
    data = TrainData(train=_frame_pairs(4), val=_frame_pairs(2), summary={'source': 'test'})
    return Trainer(cfg, data, out, resume=resume, log=lambda s: None)


def test_trainer_writes_checkpoints_validates_and_resumes_exactly(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / 'a', epochs=2).fit()
    assert straight['steps'] == 4 and 'epe' in straight['last'] and 'epe_pct_unregistered' in straight['last']
    for f in ('last.pt', 'best.pt', 'epoch_001.pt', 'epoch_002.pt', 'config.yaml', 'metrics.jsonl'):
        assert (tmp_path / 'a' / f).is_file(), f
    assert any((tmp_path / 'a' / 'tb').iterdir())
    net, meta = load_registration_net(tmp_path / 'a' / 'best.pt', expected_pair='rgb_lwir')
    assert meta.net_hw == (32, 48) and meta.normalisation['low_percentile'] == 1.0
    assert net(torch.zeros(1, 3, 32, 48), torch.zeros(1, 1, 32, 48)).shape == (1, 2, 32, 48)
    last = read_checkpoint(tmp_path / 'a' / 'last.pt')
    assert last.extra['epoch'] == 2 and last.extra['schedulers']['registration']['last_epoch'] == 2

    _trainer(tmp_path / 'b', epochs=2).fit(stop_after_epoch=1)  # 'interrupted' after epoch 1
    resumed = _trainer(tmp_path / 'b', epochs=2, resume=True).fit()
    assert resumed['steps'] == 4
    a = read_checkpoint(tmp_path / 'a' / 'last.pt').state
    b = read_checkpoint(tmp_path / 'b' / 'last.pt').state
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def test_nmr_train_cli_on_image_folders(tmp_path: Path) -> None:
    cv2 = pytest.importorskip('cv2')
    from nmr.cli.main import main

    (tmp_path / 'rgb').mkdir()
    (tmp_path / 'lwir').mkdir()
    for fp in _frame_pairs(5):
        cv2.imwrite(str(tmp_path / 'rgb' / f'{fp.name}.png'), fp.moving[:, :, ::-1])
        cv2.imwrite(str(tmp_path / 'lwir' / f'{fp.name}.png'), fp.fixed)
    out = tmp_path / 'run'
    sets = [
        *TINY,
        'optim.epochs=1',
        'optim.batch_size=1',
        'data.net_hw=[32,48]',
        'data.workers=0',
        'data.val_fraction=0.4',
        'augment.enabled=true',
        'run.keep_every=0',
    ]
    argv = [
        'train',
        '--pairs',
        str(tmp_path / 'rgb'),
        str(tmp_path / 'lwir'),
        '--pair',
        'rgb_lwir',
        '--out',
        str(out),
    ]
    for s in sets:
        argv += ['--set', s]
    assert main(argv) == 0
    assert (out / 'best.pt').is_file() and (out / 'last.pt').is_file()
    _, meta = load_registration_net(out / 'best.pt', expected_pair='rgb_lwir')
    assert meta.train_data['source'] == 'folders'
    assert main(['train', '--pairs', str(tmp_path / 'nope'), str(tmp_path / 'lwir'), '--out', str(out)]) == 2


def test_nmr_train_cli_pools_a_rig_bag_with_image_folders(tmp_path: Path) -> None:
    """`--bag` and `--pairs` together: rig pairs (own ground truth, different sizes) are used as they are,
    pre-aligned folder pairs get the synthetic misalignment; validation sees ground truth from both."""
    cv2 = pytest.importorskip('cv2')
    from nmr.cli.main import main
    from nmr.data.pairs import write_manifest
    from nmr.synth.generator import SynthConfig, generate
    from nmr.training.cli import add_arguments, build_data

    bag = tmp_path / 'rig'
    generate(SynthConfig(out=bag, duration_s=4 / 30, seed=3, size_scale=0.1))
    (tmp_path / 'rgb').mkdir()
    (tmp_path / 'lwir').mkdir()
    for fp in _frame_pairs(5):
        cv2.imwrite(str(tmp_path / 'rgb' / f'{fp.name}.png'), fp.moving[:, :, ::-1])
        cv2.imwrite(str(tmp_path / 'lwir' / f'{fp.name}.png'), fp.fixed)
    argv = ['--bag', str(bag), '--pairs', str(tmp_path / 'rgb'), str(tmp_path / 'lwir'), '--out', 'x']
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = tiny_config('data.val_fraction=0.4', 'augment.enabled=true')
    data = build_data(parser.parse_args(argv), cfg)
    assert data.summary['source'] == 'mixed' and len(data.summary['sources']) == 2
    n_bag = data.summary['sources'][0]['train_pairs']
    assert n_bag >= 3 and len(data.train) == n_bag + data.summary['sources'][1]['train_pairs']
    from nmr.training.data import TrainingPairs

    items = TrainingPairs(data.train, 'lwir', (32, 48), augment=cfg.augment)
    rig_item, folder_item = items[0], items[len(data.train) - 1]
    rig_pair = data.train[0]
    assert rig_item['moving_hw'] != rig_item['fixed_hw']  # rig: native sizes differ, used as recorded
    assert torch.equal(rig_item['gt_flow'], torch.from_numpy(rig_pair.gt_flow).permute(2, 0, 1))
    assert folder_item['gt_flow'] is not None  # folder pair: synthetic misalignment made ground truth

    # --val-manifest replaces the validation pairs, but the sources' held-out split stays out of training
    write_manifest(tmp_path / 'val.csv', [{'name': 'v', 'moving': tmp_path / 'rgb' / 'p0.png',
                                            'fixed': tmp_path / 'lwir' / 'p0.png'}])
    with_val = build_data(parser.parse_args([*argv, '--val-manifest', str(tmp_path / 'val.csv')]), cfg)
    assert len(with_val.train) == len(data.train) and len(with_val.val) == 1

    out = tmp_path / 'run'
    sets = [*TINY, 'optim.epochs=1', 'optim.batch_size=2', 'data.net_hw=[32,48]', 'data.workers=0',
            'data.val_fraction=0.4', 'augment.enabled=true', 'run.keep_every=0']
    cmd = ['train', *argv[:-2], '--pair', 'rgb_lwir', '--out', str(out)]
    for s in sets:
        cmd += ['--set', s]
    assert main(cmd) == 0
    _, meta = load_registration_net(out / 'best.pt', expected_pair='rgb_lwir')
    assert meta.train_data['source'] == 'mixed'
    assert main(['train', '--out', str(out)]) == 2  # no source: one-line error, exit 2


def test_nmr_train_refuses_a_manifest_of_the_other_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--pair rgb_depth` on 8-bit thermal images (certainly LWIR): one line, before training starts."""
    cv2 = pytest.importorskip('cv2')
    from nmr.cli.main import main

    cv2.imwrite(str(tmp_path / 'm.png'), np.zeros((24, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / 'f.png'), np.full((24, 32), 90, np.uint8))
    (tmp_path / 'pairs.csv').write_text('name,moving,fixed\na,m.png,f.png\n')
    out = tmp_path / 'run'
    argv = ['train', '--manifest', str(tmp_path / 'pairs.csv'), '--pair', 'rgb_depth', '--out', str(out),
            '--set', 'data.val_fraction=0']
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '8-bit, so LWIR' in err and '--pair rgb_lwir' in err
    assert not (out / 'last.pt').exists()


def test_nmr_train_warns_without_validation_pairs_and_rounds_the_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    cv2 = pytest.importorskip('cv2')
    from nmr.cli.main import main

    (tmp_path / 'rgb').mkdir()
    (tmp_path / 'lwir').mkdir()
    for fp in _frame_pairs(4):
        cv2.imwrite(str(tmp_path / 'rgb' / f'{fp.name}.png'), fp.moving[:, :, ::-1])
        cv2.imwrite(str(tmp_path / 'lwir' / f'{fp.name}.png'), fp.fixed)
    sets = [*TINY, 'optim.epochs=1', 'optim.batch_size=1', 'data.net_hw=[32,48]', 'data.workers=0',
            'run.keep_every=0']
    for fraction, out in (('0', 'none'), ('0.5', 'some')):
        argv = ['train', '--pairs', str(tmp_path / 'rgb'), str(tmp_path / 'lwir'), '--pair', 'rgb_lwir',
                '--out', str(tmp_path / out)]
        for s in [*sets, f'data.val_fraction={fraction}']:
            argv += ['--set', s]
        assert main(argv) == 0
        captured = capsys.readouterr()
        done = captured.out.strip().splitlines()[-1]
        if fraction == '0':
            warning = [line for line in captured.err.splitlines() if '0 validation pairs' in line]
            assert len(warning) == 1 and '--val-manifest' in warning[0] and 'data.val_fraction' in warning[0]
            assert 'best validation score n/a' in done
        else:
            assert '0 validation pairs' not in captured.err
            score = re.search(r'best validation score ([0-9.e+-]+);', done)
            assert score, done
            mantissa = score.group(1).split('e')[0].replace('.', '').lstrip('0')
            assert len(mantissa) <= 4, done  # rounded to 4 significant digits, not 5.155641317367554
