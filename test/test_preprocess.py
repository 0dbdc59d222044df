"""Pre-processing: value ranges, percentile stretch, depth masks, dispatch, display, numpy/torch inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmr.data import preprocess as pp
from nmr.data.preprocess import (
    DepthNormalisation,
    LwirNormalisation,
    depth_input,
    fixed_display,
    fixed_input,
    lwir_input,
    normalisation_dict,
    normalisation_for,
    rgb_input,
)
from nmr.errors import ConfigError, ImageDecodeError


def test_rgb_range_and_layout():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (0, 255, 128)
    x = rgb_input(rgb)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[0, 0, 0] == -1 and x[1, 0, 0] == 1 and abs(x[2, 0, 0] - (128 / 127.5 - 1)) < 1e-6
    # torch input gives the same, and read-only message views are accepted without warnings
    ro = rgb.copy()
    ro.setflags(write=False)
    assert torch.equal(rgb_input(torch.from_numpy(rgb)), x)
    assert torch.equal(rgb_input(ro), x)
    with pytest.raises(ImageDecodeError):
        rgb_input(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_lwir_percentile_stretch(dtype):
    rng = np.random.default_rng(0)
    base = 200 if dtype == np.uint8 else 30000
    img = rng.integers(base - 50, base + 50, size=(40, 50)).astype(dtype)
    img[0, 0] = 0  # hot/cold outliers must not set the range
    img[0, 1] = np.iinfo(dtype).max
    x, (lo, hi) = lwir_input(img, LwirNormalisation(1.0, 99.0))
    assert x.shape == (1, 40, 50) and x.dtype == torch.float32
    assert base - 50 <= lo < hi <= base + 50
    assert x.min() == -1 and x.max() == 1
    assert x[0, 0, 0] == -1 and x[0, 0, 1] == 1
    # about 1 % of pixels saturate at each end
    assert 0.005 < (x == 1).float().mean() < 0.03
    mid = (lo + hi) / 2
    ref = (img.astype(np.float32) - mid) / ((hi - lo) / 2)
    np.testing.assert_allclose(x[0].numpy(), np.clip(ref, -1, 1), atol=1e-5)


def test_lwir_full_range_percentiles_and_flat_frame():
    img = np.arange(101, dtype=np.uint16).reshape(1, 101)
    x, (lo, hi) = lwir_input(img, LwirNormalisation(0.0, 100.0))
    assert (lo, hi) == (0.0, 100.0)
    np.testing.assert_allclose(x[0, 0, [0, 50, 100]].numpy(), [-1, 0, 1], atol=1e-6)
    x, (lo, hi) = lwir_input(np.full((3, 3), 7, np.uint8))
    assert lo == hi == 7 and torch.all(x == 0)


def test_lwir_subsample_is_close_to_full_percentiles():
    img = np.random.default_rng(1).normal(20000, 500, size=(200, 300)).astype(np.uint16)
    _, (lo_s, hi_s) = lwir_input(img, LwirNormalisation(2, 98, max_samples=5000))
    lo, hi = np.percentile(img, [2, 98])
    assert abs(lo_s - lo) < 50 and abs(hi_s - hi) < 50


def test_depth_16uc1_and_32fc1_agree_and_mask_invalid():
    mm = np.array([[0, 300, 1000], [20000, 40000, 600]], np.uint16)
    m = mm.astype(np.float32) / 1000
    m[0, 0] = np.nan
    m_inf = m.copy()
    m_inf[0, 0] = np.inf
    norm = DepthNormalisation(0.3, 20.0)
    x16, v16 = depth_input(mm, '16UC1', norm)
    x32, v32 = depth_input(m, '32FC1', norm)
    xinf, vinf = depth_input(m_inf, '32FC1', norm)
    assert x16.shape == (1, 2, 3) and v16.dtype == torch.bool
    expected_valid = [[False, True, True], [True, True, True]]
    assert v16.tolist() == v32.tolist() == vinf.tolist() == expected_valid
    torch.testing.assert_close(x16, x32)
    torch.testing.assert_close(x16, xinf)
    assert x16[0, 0, 0] == -1  # invalid
    assert abs(x16[0, 0, 1] - 1) < 1e-5  # min_m -> 1
    assert abs(x16[0, 1, 0] + 1) < 1e-5  # max_m -> -1
    assert x16[0, 1, 1] == -1  # beyond max clamps
    inv = (1 / 1.0 - 1 / 20) / (1 / 0.3 - 1 / 20) * 2 - 1
    assert abs(x16[0, 0, 2] - inv) < 1e-5
    assert x16[0, 1, 2] > x16[0, 0, 2]  # nearer is brighter
    zero_m = np.zeros((2, 2), np.float32)
    assert not depth_input(zero_m, '32FC1')[1].any()
    with pytest.raises(ImageDecodeError, match='32FC2'):
        depth_input(zero_m, '32FC2')


def test_fixed_input_dispatch_and_normalisation_dicts():
    img = np.arange(100, dtype=np.uint16).reshape(10, 10) * 10
    x = fixed_input('lwir', img, 'mono16', {'low_percentile': 0, 'high_percentile': 100})
    assert x.shape == (1, 10, 10) and x.min() == -1 and x.max() == 1
    nested = fixed_input('lwir', img, 'mono16', {'lwir': {'low_percentile': 0, 'high_percentile': 100}})
    assert torch.equal(x, nested)
    d = fixed_input('depth', img, '16UC1', {'min_m': 0.01, 'max_m': 1.0})
    assert d.shape == (1, 10, 10) and d[0, 0, 0] == -1
    assert normalisation_dict(normalisation_for('depth', {'depth': {'max_m': 5}})) == {
        'min_m': 0.3,
        'max_m': 5,
        'mode': 'fixed',
        'low_percentile': 2.0,
        'high_percentile': 98.0,
    }
    with pytest.raises(ConfigError, match='thermal'):
        normalisation_for('thermal')
    with pytest.raises(ConfigError, match='bogus'):
        normalisation_for('lwir', {'bogus': 1})
    with pytest.raises(ConfigError):
        LwirNormalisation(99, 1)
    with pytest.raises(ConfigError):
        DepthNormalisation(0, 1)


def test_fixed_display():
    img = np.tile(np.arange(0, 256, dtype=np.uint16) * 100, (4, 1))
    out = fixed_display('lwir', img, 'mono16', {'low_percentile': 0, 'high_percentile': 100})
    assert out.shape == (4, 256, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, -1].tolist() == [255, 255, 255]
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)
    dep = fixed_display('depth', np.array([[0, 300]], np.uint16), '16UC1')
    assert dep[0, 0].tolist() == [0, 0, 0] and dep[0, 1].tolist() == [255, 255, 255]


def test_torch_inputs_stay_on_their_device_and_match_numpy():
    img = np.random.default_rng(2).integers(0, 255, (6, 7), dtype=np.uint8)
    a, ra = lwir_input(img)
    b, rb = lwir_input(torch.from_numpy(img))
    assert ra == rb and torch.equal(a, b)
    mm = np.random.default_rng(3).integers(0, 5000, (6, 7)).astype(np.uint16)
    t, v = depth_input(torch.from_numpy(mm.astype(np.int32)), '16UC1')
    n, w = depth_input(mm, '16UC1')
    assert torch.equal(t, n) and torch.equal(v, w)
    if torch.cuda.is_available():
        c, rc = lwir_input(torch.from_numpy(img).cuda())
        assert c.is_cuda and abs(rc[0] - ra[0]) < 1e-3
        cd, cv = depth_input(torch.from_numpy(mm.astype(np.int32)).cuda(), '16UC1')
        assert cd.is_cuda and torch.allclose(cd.cpu(), n) and torch.equal(cv.cpu(), w)
        assert rgb_input(np.zeros((2, 2, 3), np.uint8), device='cuda').is_cuda


def test_one_resize_for_training_and_inference() -> None:
    """Training and every backend resize to the network grid with the same function (no drift possible)."""
    from nmr.inference import registrar
    from nmr.training import data as training_data

    assert training_data.resize_to is pp.resize_to and registrar.resize_to is pp.resize_to
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    assert pp.resize_to(x, (8, 12)) is x  # no-op at the network size
    up = pp.resize_to(x, [16, 24])
    assert up.shape == (2, 3, 16, 24)
    # pixel centres aligned (align_corners=False): a linear ramp stays a ramp with the same mean
    ramp = torch.arange(12, dtype=torch.float32).expand(1, 1, 8, 12)
    assert torch.allclose(pp.resize_to(ramp, (8, 24)).mean(), ramp.mean())
    # shrinking is antialiased: a one-pixel checkerboard becomes its mean, not an aliased pattern
    board = (torch.arange(64).reshape(8, 8) % 2 + torch.arange(64).reshape(8, 8) // 8 % 2) % 2
    small = pp.resize_to(board.float()[None, None], (2, 2))
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)


def _depth_mm(lo_m: float, hi_m: float, seed: int, holes: float = 0.1) -> np.ndarray:
    """A 48x64 uint16 depth map (mm): a slanted plane from lo_m to hi_m plus noise, with zero holes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(lo_m, hi_m, 64)[None].repeat(48, 0) * rng.uniform(0.97, 1.03, (48, 64))
    mm = (ramp * 1000).astype(np.uint16)
    mm[rng.random((48, 64)) < holes] = 0
    return mm


def test_robust_depth_normalisation_uses_the_range_whatever_the_scene_depth():
    """Issue 19 item 5: cameras publish 0.3 m table tops and 20 m streets. The fixed range squashes a far scene
    into [-1, -0.9] (and a 10-20 m scene to within 0.001 of the hole value -1, where the networks' validity
    channel reads it as a hole); the robust mode spreads every scene over the range, holes stay -1 and valid
    pixels stay above the validity threshold."""
    from nmr.models.correlation import DEPTH_VALID_THRESHOLD

    robust = DepthNormalisation(mode='robust')
    fixed_far, _ = depth_input(_depth_mm(10.0, 20.0, 0), '16UC1')
    _, v = depth_input(_depth_mm(10.0, 20.0, 0), '16UC1')
    assert float(fixed_far[0][v].max()) < -0.95  # the old mode: a far scene is nearly flat
    for lo, hi in ((0.3, 1.0), (0.8, 4.0), (5.0, 20.0), (10.0, 20.0)):
        mm = _depth_mm(lo, hi, 1)
        x, valid = depth_input(mm, '16UC1', robust)
        xv = x[0][valid]
        assert float(xv.min()) > DEPTH_VALID_THRESHOLD and float(xv.max()) == 1.0
        assert float(xv.max() - xv.min()) > 1.8  # the whole range used
        assert torch.all(x[0][~valid] == -1) and (~valid).any()
        # nearer is brighter, and the map is the same for the scene in metres (32FC1)
        assert float(x[0, :, :8][valid[:, :8]].mean()) > float(x[0, :, -8:][valid[:, -8:]].mean())
        xm, _ = depth_input(mm.astype(np.float32) / 1000, '32FC1', robust)
        assert torch.allclose(x, xm, atol=1e-4)
    # scale invariance: the same scene 10x farther normalises the same (inverse depth scales uniformly)
    near, _ = depth_input(_depth_mm(0.5, 2.0, 2, holes=0), '16UC1', robust)
    far, _ = depth_input(_depth_mm(0.5, 2.0, 2, holes=0) * 10, '16UC1', robust)
    assert torch.allclose(near, far, atol=2e-3)
    # no valid pixel at all: everything is a hole
    empty, valid = depth_input(np.zeros((4, 4), np.uint16), '16UC1', robust)
    assert not valid.any() and torch.all(empty == -1)
    with pytest.raises(ConfigError, match='mode'):
        DepthNormalisation(mode='auto')
