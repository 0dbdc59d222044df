"""Residual training pairs (nmr.training.residual_pairs): the pre-warp is the rig path's, and the residual's
ground truth composed with the geometric flow reproduces the synthetic rig's exact flow."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr import flow as nmr_flow
from nmr.data.pairs import ManifestDataset, read_manifest
from nmr.geometry.registration import GeometricStage
from nmr.geometry.rig import Rig
from nmr.synth.generator import SynthConfig, generate
from nmr.training.config import AugmentConfig
from nmr.training.data import TrainingPairs
from nmr.training.residual_pairs import Jitter, build_manifest, geometric_flow, residual_pair, solve_residual

SCALE = 0.25


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny drawn rig (its own geometry and an LWIR time offset: geometry alone leaves a residual)."""
    root = tmp_path_factory.mktemp('residual')
    generate(SynthConfig(out=root / 'bag', duration_s=4 / 30, seed=5, size_scale=SCALE, rig_seed=3,
                         export_pairs=root / 'pairs', workers=1))
    return root / 'pairs'


def test_solve_residual_inverts_compose() -> None:
    """r + g(v + r) = f for a smooth prior and a smooth truth; NaN truth stays invalid."""
    h, w = 40, 56
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    prior = np.stack([3.0 + 0.05 * x + np.sin(y / 7), -2.0 + 0.04 * y + np.cos(x / 9)], axis=2).astype(np.float32)
    truth = prior + np.stack([0.6 * np.sin(x / 5), 0.4 * np.cos(y / 6)], axis=2).astype(np.float32)
    truth[3, 4] = np.nan
    r, ok = solve_residual(truth, prior)
    assert not ok[3, 4] and np.isnan(r[3, 4]).all()
    assert ok.mean() > 0.99
    back = nmr_flow.compose(np.nan_to_num(r), prior)
    assert np.abs(back - np.nan_to_num(truth))[ok].max() <= 0.01


@pytest.mark.parametrize('pair', ['rgb_lwir', 'rgb_depth'])
def test_residual_truth_composed_with_geometry_is_the_rig_truth(exported: Path, pair: str, tmp_path: Path) -> None:
    out = tmp_path / pair
    manifest = build_manifest([('t', exported, None)], out, pair, jitter=1, seed=1, log=lambda _t: None)
    source = read_manifest(exported / pair / 'manifest.csv', fixed_kind=pair.split('_')[1])
    stage = GeometricStage(Rig.load(exported / 'rig_true.yaml'), log=lambda _t: None)
    with manifest.open(newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(source) and {r['family'] for r in rows} == {'rig', 'rig_jitter'}
    residual_px = []
    for i in range(len(source)):
        fp = source[i]
        g, _ = geometric_flow(stage, pair, fp)
        row = rows[2 * i]
        assert row['name'] == f't_{fp.name}' and row['family'] == 'rig'
        r = np.load(out / row['flow'])
        valid = cv2.imread(str(out / row['valid']), cv2.IMREAD_UNCHANGED) > 0
        truth_valid = fp.valid.astype(bool)
        # the residual is trusted almost everywhere the truth is, and never where it is not
        assert not (valid & ~truth_valid).any() and valid.sum() >= 0.9 * truth_valid.sum()
        composed = nmr_flow.compose(r, g)
        err = np.linalg.norm(composed - fp.gt_flow, axis=2)[valid]
        assert err.max() < 0.01, f'{fp.name}: composition off by {err.max():.4f} px'
        residual_px.append(float(np.linalg.norm(r[valid], axis=1).mean()))
        # the moving image is the pre-warp of `nmr evaluate --rig` (and the node), the fixed one unchanged
        prewarped = cv2.cvtColor(cv2.imread(str(out / row['moving'])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(prewarped, nmr_flow.warp(fp.moving, g)[0])
        assert np.array_equal(cv2.imread(str(out / row['fixed']), cv2.IMREAD_UNCHANGED), fp.fixed)
        # the jittered row: a different pre-warp, but again exact
        jit = rows[2 * i + 1]
        rj = np.load(out / jit['flow'])
        vj = cv2.imread(str(out / jit['valid']), cv2.IMREAD_UNCHANGED) > 0
        assert vj.sum() >= 0.8 * truth_valid.sum() and not np.allclose(rj[vj], r[vj], atol=0.05)
    # geometry alone does not explain the drawn rig's recording (its LWIR time offset, depth holes): there
    # is something to learn, and it is not the whole misalignment
    unregistered = np.mean([np.linalg.norm(source[i].gt_flow[source[i].valid.astype(bool)], axis=1).mean()
                            for i in range(len(source))])
    assert 0.0 < np.mean(residual_px) < 0.5 * unregistered


def test_residual_pairs_train_as_they_are(exported: Path, tmp_path: Path) -> None:
    """The trainer reads the residual manifest's ground truth and adds no synthetic misalignment to it."""
    manifest = build_manifest([('t', exported, None)], tmp_path, 'rgb_lwir', log=lambda _t: None)
    data = ManifestDataset(manifest, 'lwir')
    training = TrainingPairs(data, 'lwir', (32, 40), augment=AugmentConfig(enabled=True), net_grid_truth=True)
    for i in range(len(data)):
        item = training[i]
        fp = data[i]
        again = training[i + len(data)]  # another epoch: a synthetic misalignment would be drawn anew
        assert torch_equal(item['gt_net'], again['gt_net']) and torch_equal(item['moving'], again['moving'])
        # the network-grid truth is the manifest's flow, scaled to the network grid
        sx = 40 / fp.fixed.shape[1]
        assert float(item['gt_net'][0].abs().max()) <= float(np.abs(fp.gt_flow[..., 0]).max()) * sx + 1e-3


def test_jitter_moves_only_the_fixed_camera(exported: Path) -> None:
    rig = Rig.load(exported / 'rig_true.yaml')
    moved = Jitter().apply(rig, 'lwir', np.random.default_rng(0))
    assert moved.rig_camera('depth') == rig.rig_camera('depth') and moved.rig_camera('rgb') == rig.rig_camera('rgb')
    assert moved.rig_camera('lwir') != rig.rig_camera('lwir')


def torch_equal(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.equal(a, b))


def test_a_manifest_without_truth_is_refused_with_one_line(exported: Path, tmp_path: Path) -> None:
    """Residual pairs need the synthetic rig's exact flow: a row without one fails naming the fix."""
    fp = read_manifest(exported / 'rgb_lwir' / 'manifest.csv', fixed_kind='lwir')[0]
    from dataclasses import replace

    from nmr.errors import ConfigError

    with pytest.raises(ConfigError, match='no ground-truth flow'):
        residual_pair(replace(fp, gt_flow=None), np.zeros((*fp.fixed.shape, 2), np.float32))


def test_aligned_rows_are_aligned_by_the_truth_and_misaligned_by_the_trainer(exported: Path, tmp_path: Path) -> None:
    """`aligned` rows carry no flow: the moving image is warped by the exact truth (so the pair is aligned where
    the truth is valid) and the trainer draws a fresh small misalignment for it every epoch."""
    manifest = build_manifest([('t', exported, None)], tmp_path, 'rgb_lwir', aligned=True, max_rows=2,
                              log=lambda _t: None)
    with manifest.open(newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert [r['family'] for r in rows] == ['rig', 'aligned'] * 2 and all(not r['flow'] for r in rows[1::2])
    source = read_manifest(exported / 'rgb_lwir' / 'manifest.csv', fixed_kind='lwir')
    stage = GeometricStage(Rig.load(exported / 'rig_true.yaml'), log=lambda _t: None)
    fp = source[0]
    g, _ = geometric_flow(stage, 'rgb_lwir', fp)
    moving = cv2.cvtColor(cv2.imread(str(tmp_path / rows[1]['moving'])), cv2.COLOR_BGR2RGB)
    valid = fp.valid.astype(bool)
    assert np.array_equal(moving[valid], nmr_flow.warp(fp.moving, fp.gt_flow)[0][valid])
    assert (~valid).any() and np.array_equal(moving[~valid], nmr_flow.warp(fp.moving, g)[0][~valid])
    data = ManifestDataset(manifest, 'lwir')
    training = TrainingPairs(data, 'lwir', (32, 40), augment=AugmentConfig(enabled=True, mean_px=[2.0, 8.0]),
                             net_grid_truth=True)
    first, later = training[1], training[1 + len(data)]
    assert float(first['gt_net'].abs().mean()) > 0 and not torch_equal(first['gt_net'], later['gt_net'])
