"""`nmr demo` (the main job) end to end, offline, on a tiny rig with tiny untrained models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from nmr.cli.main import main
from nmr.errors import ModelFileError
from nmr.ros.testing import make_tiny_model


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('models')
    return {p: make_tiny_model(folder / f'{p}.pt', p, net_hw=(128, 128)) for p in ('rgb_lwir', 'rgb_depth')}


def test_demo_offline_writes_bag_sheets_and_summary(tmp_path: Path, tiny_models: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'demo'
    code = main(['demo', '--out', str(out), '--mode', 'offline', '--duration', '0.2', '--size-scale', '0.25',
                 '--model-rgb-lwir', str(tiny_models['rgb_lwir']),
                 '--model-rgb-depth', str(tiny_models['rgb_depth']), '--sheets', '2'])
    assert code == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert (out / 'registered' / 'metadata.yaml').is_file()
    assert summary['outputs']['mcap'] and all(Path(p).is_file() for p in summary['outputs']['mcap'])
    for pair in ('rgb_lwir', 'rgb_depth'):
        score = summary['alignment'][pair]
        assert score['frames'] > 0
        assert score['epe_before_px'] > 0 and score['epe_after_px'] > 0
        sheet = cv2.imread(str(out / f'contact_{pair}.png'))
        assert sheet is not None and sheet.shape[0] >= 2 * 200  # two frames of 200-px rows
    printed = capsys.readouterr().out
    assert 'nmr demo summary' in printed and 'EPE' in printed and str(out) in printed


def test_demo_without_models_names_the_missing_file(tmp_path: Path) -> None:
    from argparse import Namespace

    from nmr.demo import default_models

    missing = tmp_path / 'nope.onnx'
    with pytest.raises(ModelFileError, match=r'nope\.onnx'):
        default_models(Namespace(model_rgb_lwir=missing, model_rgb_depth=missing))
