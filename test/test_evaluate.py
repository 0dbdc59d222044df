"""`nmr evaluate` on a tiny manifest written by the test: known answers for identity and a constant flow."""

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from nmr.bench.fresh import fresh_checkpoint
from nmr.cli.main import main
from nmr.evaluation import metrics as m
from nmr.models.checkpoint import load_checkpoint, save_checkpoint

FIXED_HW = (120, 160)
NET_HW = (96, 128)  # native 160x120 -> net 128x96: flows scale by 1.25 on both axes
GT_SHIFT = (2.5, -1.0)  # ground-truth flow (dx, dy), constant


def write_manifest(root: Path, n: int = 2, odd: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        fixed_hw = (119, 161) if odd and i == 1 else FIXED_HW
        moving = rng.integers(0, 256, (*fixed_hw, 3), dtype=np.uint8)
        fixed = rng.integers(20000, 30000, fixed_hw, dtype=np.uint16)
        flow = np.zeros((*fixed_hw, 2), np.float32)
        flow[..., 0], flow[..., 1] = GT_SHIFT
        valid = np.full(fixed_hw, 255, np.uint8)
        valid[:, -4:] = 0  # samples that leave the moving image are not scored
        cv2.imwrite(str(root / f'm{i}.png'), cv2.cvtColor(moving, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / f'f{i}.png'), fixed)
        np.save(root / f'flow{i}.npy', flow)
        cv2.imwrite(str(root / f'v{i}.png'), valid)
        (root / f'lm{i}.json').write_text(json.dumps([[10.0, 20.5], [80.25, 60.0], [150.0, 100.0]]))
        rows.append(
            {
                'name': f'scene/{i}',
                'moving': f'm{i}.png',
                'fixed': f'f{i}.png',
                'flow': f'flow{i}.npy',
                'valid': f'v{i}.png',
                'landmarks': f'lm{i}.json',
            }
        )
    path = root / 'manifest.csv'
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def constant_flow_model(path: Path, net_flow: tuple[float, float]) -> Path:
    """A fast R_Phi that outputs exactly `net_flow` everywhere (zero head weights, bias = flow / stride)."""
    fresh_checkpoint(path, 'fast', 'rgb_lwir', NET_HW, zero_flow=True)
    state, metadata = load_checkpoint(path)
    stride = metadata.registration['flow_stride']
    state['registration']['flow_head.bias'][:] = torch.tensor(net_flow) / stride
    save_checkpoint(path, state, metadata)
    return path


def test_identity_model_ratio_is_100(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path, odd=True)
    out = tmp_path / 'r.json'
    flows = tmp_path / 'flows'
    assert (
        main(
            [
                'evaluate',
                '--model',
                'identity',
                '--manifest',
                str(manifest),
                '--fixed-kind',
                'lwir',
                '--out',
                str(out),
                '--save-flows',
                str(flows),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    s = report['summary']
    assert s['pairs'] == 2 and s['pairs_with_ground_truth'] == 2
    assert s['epe_ratio'] == pytest.approx(100.0) and s['landmark_ratio'] == pytest.approx(100.0)
    assert s['epe'] == pytest.approx(math.hypot(*GT_SHIFT), abs=1e-5)
    assert sorted(p.name for p in flows.iterdir()) == ['scene_0.npy', 'scene_1.npy']
    assert np.load(flows / 'scene_1.npy').shape == (119, 161, 2)  # native size, any size works
    assert all(p['landmark_source'] == 'manifest' and p['landmark_count'] == 3 for p in report['pairs'])
    assert 'EPE' in capsys.readouterr().out


def test_constant_flow_model_gives_expected_epe(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    # the net predicts (1.6, -0.8) px on its 128x96 grid = (2.0, -1.0) px natively; the truth is (2.5, -1.0)
    model = constant_flow_model(tmp_path / 'const.pt', (1.6, -0.8))
    out = tmp_path / 'r.json'
    figs = tmp_path / 'figs'
    assert (
        main(
            [
                'evaluate',
                '--model',
                str(model),
                '--manifest',
                str(manifest),
                '--backend',
                'torch',
                '--out',
                str(out),
                '--figures',
                str(figs),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    s = report['summary']
    identity = math.hypot(*GT_SHIFT)
    assert s['epe'] == pytest.approx(0.5, abs=1e-4)
    assert s['landmark'] == pytest.approx(0.5, abs=1e-4)
    assert s['epe_identity'] == pytest.approx(identity, abs=1e-5)
    assert s['epe_ratio'] == pytest.approx(100 * 0.5 / identity, abs=1e-2)
    assert all(p['runtime_ms'] > 0 for p in report['pairs'])
    pngs = sorted(figs.glob('*.png'))
    assert len(pngs) == 2 and len(list(figs.glob('*.gif'))) == 2  # a contact sheet and a flicker GIF per row
    sheet = cv2.imread(str(pngs[0]))
    assert sheet.shape[0] > 200 and sheet.shape[1] > 6 * 200 * 160 // 120  # six 200-px panels side by side


def test_manifest_without_ground_truth_reports_runtime_only(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / 'm.png'), np.zeros((30, 40, 3), np.uint8))
    cv2.imwrite(str(tmp_path / 'f.png'), np.zeros((30, 40), np.uint8))
    (tmp_path / 'x.csv').write_text('name,moving,fixed\nonly,m.png,f.png\n')
    out = tmp_path / 'r.json'
    assert main(['evaluate', '--model', 'dis', '--manifest', str(tmp_path / 'x.csv'), '--out', str(out)]) == 0
    s = json.loads(out.read_text())['summary']
    assert s['pairs'] == 1 and s['pairs_with_ground_truth'] == 0 and s['epe'] is None


def test_metrics_directly() -> None:
    gt = np.zeros((10, 12, 2), np.float32)
    gt[..., 0] = 3.0
    pred = np.zeros_like(gt)
    pred[..., 0] = 2.0
    pred[..., 1] = 0.0
    valid = np.ones((10, 12), bool)
    valid[0] = False
    pred[0] = 100.0  # ignored: not valid
    assert m.endpoint_error(pred, gt, valid) == pytest.approx(1.0)
    ramp = np.stack(np.meshgrid(np.arange(12.0), np.arange(10.0)), axis=-1).astype(np.float32)
    assert m.sample_flow(ramp, np.array([[2.25, 3.5]]))[0] == pytest.approx([2.25, 3.5])  # bilinear is exact
    assert m.landmark_error(ramp, np.zeros_like(ramp), np.array([[3.0, 4.0]])) == pytest.approx(5.0)
    assert m.ratio_percent(1.0, 4.0) == 25.0 and math.isnan(m.ratio_percent(1.0, 0.0))
    grid = m.grid_landmarks((10, 12), valid)
    assert len(grid) > 0 and (grid[:, 1] >= 0.5).all()


@pytest.mark.parametrize('name', ['dis', 'sitk-mi'])
def test_classical_baselines_follow_the_flow_convention(name: str) -> None:
    """On a mono-modal, textured pair shifted by a known amount the baselines must recover phi = (3, -2)."""
    if name == 'sitk-mi':
        pytest.importorskip('SimpleITK', reason='SimpleITK is optional (not a project dependency)')
    from nmr.evaluation.baselines import create_baseline

    rng = np.random.default_rng(5)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (112, 144), dtype=np.uint8), (0, 0), 2.0)
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX)
    shift = np.float32([[1, 0, 3], [0, 1, -2]])  # moving(x) = scene(x - (3, -2)) => phi = (3, -2)
    moving = cv2.cvtColor(
        cv2.warpAffine(scene, shift, (144, 112), borderMode=cv2.BORDER_REFLECT), cv2.COLOR_GRAY2RGB
    )
    out = create_baseline(name).register(moving, scene, 'mono8')
    inner = (slice(16, -16), slice(16, -16))
    assert np.median(out.flow[inner][..., 0]) == pytest.approx(3.0, abs=0.3)
    assert np.median(out.flow[inner][..., 1]) == pytest.approx(-2.0, abs=0.3)


def test_a_model_of_the_other_pair_is_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rgb_lwir model on an rgb_depth manifest (16-bit PNGs both, told apart by the fixed_kind column
    that `nmr synth --export-pairs` writes) stops before any row is registered, naming what to use."""
    manifest = write_manifest(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text('\n'.join([lines[0] + ',fixed_kind', *(line + ',depth' for line in lines[1:])]) + '\n')
    model = constant_flow_model(tmp_path / 'lwir.pt', (0.0, 0.0))
    out = tmp_path / 'r.json'
    argv = ['evaluate', '--model', str(model), '--manifest', str(manifest), '--backend', 'torch', '--out', str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'fixed_kind column says depth, not lwir' in err and 'rgb_depth' in err
    assert not out.exists()
    # the same model with --fixed-kind of the other kind: refused before the manifest is read
    assert main([*argv[:-2], '--fixed-kind', 'depth']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'is for rgb_lwir (lwir fixed images), not --fixed-kind depth' in err


def test_summary_has_a_line_per_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: manifests carry a `family` column; the summary (JSON and table) reports each family, with its
    own ratio from its own pairs, and the mean line stays last."""
    manifest = write_manifest(tmp_path, n=3)
    text = manifest.read_text().splitlines()
    families = ['homography', 'nonrigid', 'homography']
    rows = [text[0] + ',family'] + [f'{line},{fam}' for line, fam in zip(text[1:], families)]
    manifest.write_text('\n'.join(rows) + '\n')
    flow = np.load(tmp_path / 'flow1.npy')
    np.save(tmp_path / 'flow1.npy', flow * 3)  # the nonrigid pair is misaligned 3x as much
    out = tmp_path / 'r.json'
    model = constant_flow_model(tmp_path / 'const.pt', (GT_SHIFT[0] * 1.25 * 0.8, GT_SHIFT[1] * 0.8 * 0.8))
    assert main(['evaluate', '--model', str(model), '--manifest', str(manifest), '--out', str(out),
                 '--backend', 'torch']) == 0
    s = json.loads(out.read_text())['summary']
    assert sorted(s['families']) == ['homography', 'nonrigid']
    assert s['families']['homography']['pairs'] == 2 and s['families']['nonrigid']['pairs'] == 1
    h, n = s['families']['homography'], s['families']['nonrigid']
    assert n['epe_identity'] == pytest.approx(3 * h['epe_identity'], rel=1e-4)
    assert n['epe_ratio'] > h['epe_ratio']  # the same constant flow leaves more of the larger field
    assert s['epe'] == pytest.approx((2 * h['epe'] + n['epe']) / 3, rel=1e-4)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith('mean (3 pairs)')
    assert any(line.startswith('family homography (2)') for line in lines)
    assert any(line.startswith('family nonrigid (1)') for line in lines)
