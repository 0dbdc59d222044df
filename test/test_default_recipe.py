"""scripts/train_default_models.sh end to end with a tiny step count (issue 19, item 6): the GPU profile runs
its three stages (rgb_lwir from XFeat's start, rgb_depth transplanted from it, rgb_lwir on every family) and
writes exported models under NMR_MODELS_OUT. On fake data the test writes itself (tests never read
../shared/data), on the CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np

from nmr.models.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _fake_data(root: Path) -> None:
    rng = np.random.default_rng(0)

    def pair(moving_dir: Path, fixed_dir: Path, stem_m: str, stem_f: str, fixed: np.ndarray, ext: str) -> None:
        moving_dir.mkdir(parents=True, exist_ok=True)
        fixed_dir.mkdir(parents=True, exist_ok=True)
        h, w = fixed.shape[:2]
        cv2.imwrite(str(moving_dir / f'{stem_m}.jpg'), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(str(fixed_dir / f'{stem_f}.{ext}'), fixed)

    for i in range(8):
        lwir = rng.integers(0, 256, (48, 64), dtype=np.uint8)
        pair(root / 'roadscene/crop_LR_visible', root / 'roadscene/cropinfrared', f'FLIR_{i:05d}', f'FLIR_{i:05d}',
             lwir, 'jpg')
        stem = f'{("01", "19", "20")[i % 3]}{i:04d}'
        pair(root / 'llvip/visible', root / 'llvip/infrared', stem, stem, lwir, 'jpg')
        depth = rng.integers(500, 4000, (48, 64), dtype=np.uint16)
        stamp = f'2020010{i % 4}_1{i:05d}'
        pair(root / 'rgbdd/RGB', root / 'rgbdd/Depth', f'{stamp}_RGB', f'{stamp}_HR_gt', depth, 'png')


def test_gpu_profile_of_the_default_recipe_runs_with_a_tiny_step_count(tmp_path: Path) -> None:
    _fake_data(tmp_path / 'data')
    out = tmp_path / 'models'
    env = {
        **os.environ,
        'PYTHONPATH': str(ROOT / 'src'),
        'OMP_NUM_THREADS': '1',
        'NMR_PROFILE': 'gpu',
        'NMR_DATA': str(tmp_path / 'data'),
        'NMR_MODELS_OUT': str(out),
        'NMR_EPOCHS1': '1',
        'NMR_EPOCHS2': '1',
        'NMR_EPOCHS3': '1',
    }
    tiny = ['--set', 'run.device=cpu', '--set', 'data.net_hw=[48,64]', '--set', 'optim.batch_size=2',
            '--set', 'data.workers=0', '--set', 'run.threads=1', '--set', 'run.steps_per_epoch=2']
    runs = tmp_path / 'runs'
    proc = subprocess.run(['bash', str(ROOT / 'scripts/train_default_models.sh'), str(runs), *tiny], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    logs = ''.join(p.read_text() for p in runs.rglob('*.log'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-3000:]
    for pair in ('rgb_lwir', 'rgb_depth'):
        assert (out / f'{pair}.onnx').stat().st_size > 0
        meta = read_checkpoint(out / f'{pair}.pt').metadata
        assert meta.pair == pair and meta.net_hw == (48, 64)
        assert meta.registration['stem'] == 'xfeat'   # XFeat's start, carried through the transplant
    six = ['affine', 'homography', 'nonrigid', 'distortion', 'composite', 'fov']
    assert read_checkpoint(out / 'rgb_lwir.pt').metadata.train_data['families'] == [*six, 'parallax']   # stage 3
    assert read_checkpoint(out / 'rgb_depth.pt').metadata.train_data['families'] == six[:5]   # stage 2
    assert read_checkpoint(out / 'rgb_depth.pt').metadata.normalisation['mode'] == 'robust'
    lwir_sources = read_checkpoint(out / 'rgb_lwir.pt').metadata.train_data['sources']
    assert any('llvip' in s.get('moving_dir', '') and s['scene_prefix'] == 2 for s in lwir_sources)
