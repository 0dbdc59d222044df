"""`nmr calibrate --lwir-translation X,Y,Z [--lwir-translation-sigma S]`: a known LWIR baseline (CAD drawing,
tape measure) as the start of the fit and a Gaussian prior on it; its arguments' one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nmr.calibration.compare import rig_errors
from nmr.cli.main import main
from nmr.geometry.rig import Rig
from nmr.synth.generator import RIG_TRUE_FILE, SynthConfig, generate

SCALE = 0.25
RIG_SEED = 31  # LWIR 2.85 deg and 87 mm from RGB
TAPE_ERROR_M = np.array([0.008, -0.006, 0.005])  # a tape measure's error on the three axes


def test_translation_arguments_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before the bag is opened (the bag here does not exist): each bad value gets its own line."""
    base = ['calibrate', '--bag', str(tmp_path / 'missing'), '--out', str(tmp_path / 'r.yaml')]
    bad = [
        (['--lwir-translation', '53,-14,-14'], 'not millimetres'),
        (['--lwir-translation', '0.05,0'], 'three numbers'),
        (['--lwir-translation', 'a,b,c'], 'three numbers'),
        (['--lwir-translation', '0.05,nan,0'], 'three numbers'),
        (['--lwir-translation', '0.05,0,0', '--lwir-translation-sigma', '0'], 'positive'),
        (['--lwir-translation', '0.05,0,0', '--lwir-translation-sigma', '-0.01'], 'positive'),
        (['--lwir-translation-sigma', '0.01'], 'needs --lwir-translation'),
    ]
    for extra, _ in bad:
        assert main([*base, *extra]) == 2, extra
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == len(bad), lines
    for line, (extra, words) in zip(lines, bad):
        assert words in line and extra[0] in line, (line, extra)
    # a good value gets past the check (to the missing bag)
    assert main([*base, '--lwir-translation', '0.05, -0.01, 0', '--lwir-translation-sigma', '0.02']) == 2
    assert 'does not exist' in capsys.readouterr().err


def _flat_solver(monkeypatch: pytest.MonkeyPatch, t0: tuple[float, float, float], sigma: float,
                 data: object) -> object:
    """A Solver whose data term is ``data(p)`` (a score, higher is better) instead of the images'."""
    import nmr.calibration.solver as solver
    from nmr.calibration.objective import Cameras
    from nmr.geometry.camera import CameraModel

    monkeypatch.setattr(solver, 'moment_scores', lambda lms, cams, p, pairs: data(p)[None])  # type: ignore[operator]
    cam = CameraModel(64, 48, 50.0, 50.0, 32.0, 24.0)
    options = solver.Options(lwir_translation=t0, lwir_translation_sigma=sigma)
    return solver.Solver(solver.Problem([], Cameras(cam, cam, cam), options, []), solver.Progress(1, True),
                         lambda m: None)


def test_the_prior_pulls_the_translation_to_the_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no signal from the images the fit goes to the given translation; against a data term that
    prefers another one it settles where the two curvatures balance (the prior's scale is what
    ``PRIOR_SCORE_PER_SIGMA2`` says), and a larger sigma lets the data pull further."""
    import nmr.calibration.solver as solver

    t0 = (0.05, -0.01, 0.02)
    sv = _flat_solver(monkeypatch, t0, 0.01, lambda p: p['lwir_trans'].sum() * 0.0)
    p = sv.adam(solver.initial_params(), ['lwir_rot', 'lwir_trans'], ['lwir_rgb'], 1.0, 30, 0.0)  # type: ignore[attr-defined]
    assert np.allclose(np.array(p['lwir_trans']) * 0.01, t0, atol=1e-5), p
    assert sv.prior(solver._tensors(p, ['lwir_trans'])) < 1e-6  # type: ignore[attr-defined]
    assert float(sv.prior(solver._tensors(p, []))) == 0.0  # type: ignore[attr-defined]  # not free: no prior

    # data: score -a |t - td|^2 (t in metres); optimum of data + prior: (2 a td + w t0) / (2 a + w)
    td, a = np.array([0.08, 0.0, 0.0]), 2.0
    data = lambda p: -a * ((p['lwir_trans'] * 0.01 - torch.tensor(td, dtype=torch.float32)) ** 2).sum()  # noqa: E731
    pulled = []
    for sigma in (0.01, 0.03):
        sv = _flat_solver(monkeypatch, t0, sigma, data)
        start = solver.initial_params()
        start['lwir_trans'] = [v / 0.01 for v in t0]
        got = np.array(sv.adam(start, ['lwir_trans'], ['lwir_rgb'], 1.0, 30, 0.0)['lwir_trans']) * 0.01  # type: ignore[attr-defined]
        w = solver.PRIOR_SCORE_PER_SIGMA2 / sigma ** 2
        want = (2 * a * td + w * np.array(t0)) / (2 * a + w)
        assert np.allclose(got, want, atol=2e-4), (sigma, got, want)
        assert 0.05 < got[0] < 0.08  # between the prior and the data's optimum
        pulled.append(got[0])
    assert pulled[1] > pulled[0] + 0.005  # sigma 3 cm: the data pull further than with 1 cm


@pytest.fixture(scope='module')
def rig_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1.2 s bag of a drawn rig at a quarter of the resolution (~10 s to render)."""
    out = tmp_path_factory.mktemp('calprior') / 'rig'
    generate(SynthConfig(out=out, duration_s=1.2, seed=4, size_scale=SCALE, rig_seed=RIG_SEED))
    return out


@pytest.fixture
def quick_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smaller searches and fewer iterations: the option's plumbing, not the method's accuracy, is tested."""
    import nmr.calibration.solver as solver

    monkeypatch.setattr(solver, 'ROT_GRID_DEG', np.arange(-2.0, 2.01, 1.0))
    monkeypatch.setattr(solver, 'ITERS', (4, 4, 4, 4))
    monkeypatch.setattr(solver, 'BLOCK_ITERS', 2)


def test_calibrate_starts_from_and_keeps_near_the_given_translation(
    rig_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], quick_solver: None
) -> None:
    """The true baseline plus a tape error of (+8, -6, +5) mm, given as the prior: the result's translation is
    near it (without the option it stays near zero, 87 mm off), and the report says where it came from."""
    truth = Rig.load(rig_bag / RIG_TRUE_FILE)
    given = truth.rig_camera('lwir').translation + TAPE_ERROR_M
    assert given[0] < 0  # the '=' form is needed for a leading minus (argparse would take it for an option)
    out = tmp_path / 'rig.yaml'
    assert main(['calibrate', '--bag', str(rig_bag), '--out', str(out), '--frames', '4', '--quiet',
                 '--no-time-offset', '--lwir-translation=' + ','.join(f'{v:.6f}' for v in given)]) == 0
    assert '--lwir-translation' in capsys.readouterr().err
    est = Rig.load(out)
    assert np.linalg.norm(est.rig_camera('lwir').translation - given) < 0.006
    assert rig_errors(est, truth)['lwir']['translation_mm'] < 15
    report = json.loads((tmp_path / 'rig.report.json').read_text())
    assert report['sources']['lwir']['pose'].startswith('estimated (translation prior')
