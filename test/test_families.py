"""Misalignment families (nmr.training.families): exact inverse, smoothness, invertibility, magnitudes, and the
no-shortcut property of the training pipeline (issue 19). Everything tiny (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nmr.data.types import FramePair
from nmr.models.resampler import warp
from nmr.training.augment import inverse_on_grid, misalign, sample_misalignment
from nmr.training.config import AugmentConfig
from nmr.training.data import TrainingPairs
from nmr.training.families import (
    BASE_FAMILIES,
    FAMILIES,
    ControlGrid,
    Scaled,
    crop_region,
    cue_free_pair,
    field_grid,
    field_stats,
    random_borders,
    sample_family,
    warp_clamped,
)

torch.set_num_threads(1)


def _smooth_image(h: int, w: int, seed: int, c: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, c, h // 8, w // 8, generator=g), size=(h, w), mode='bicubic',
                         align_corners=False)[0]


@pytest.mark.parametrize('family', FAMILIES)
def test_family_ground_truth_registers_the_moving_crop_back_exactly(family: str) -> None:
    """SPEC convention on the cue-free crop: warping the misaligned moving crop by phi gives the fixed crop."""
    aligned = _smooth_image(160, 200, 1)
    cfg = AugmentConfig(enabled=True, mean_px=[20.0, 30.0])
    pair = cue_free_pair(aligned, aligned.clone(), cfg, torch.Generator().manual_seed(2), family=family,
                         out_hw=(128, 160))
    assert pair.family == family and pair.moving.shape == (3, 128, 160) and pair.fixed.shape == (3, 128, 160)
    registered, _ = warp(pair.moving[None], pair.flow[None])
    v = pair.valid[0]
    err = (registered[0] - pair.fixed).abs().mean(0)[v].mean()
    before = (pair.moving - pair.fixed).abs().mean(0)[v].mean()
    assert float(pair.flow.norm(dim=0).mean()) > 1.0
    assert float(err) < 0.01 < float(before) / 5


@pytest.mark.parametrize('family', (*BASE_FAMILIES, 'composite'))
def test_family_inverse_is_exact_smooth_and_invertible(family: str) -> None:
    cfg = AugmentConfig(enabled=True, mean_px=[25.0, 30.0])
    for seed in range(4):
        field = sample_family(family, 96, 120, cfg, torch.Generator().manual_seed(seed))
        # exact inverse: T(m + d(m)) lands on m, i.e. d(m) = -phi(m + d(m))
        d = inverse_on_grid(field)
        ys, xs = torch.meshgrid(torch.arange(96, dtype=torch.float64), torch.arange(120, dtype=torch.float64),
                                indexing='ij')
        back = field.at(xs + d[0], ys + d[1])
        assert float((back.permute(2, 0, 1) + d).abs().max()) < 1e-3
        # smooth and invertible on the dense grid: det(I + grad phi) > 0, gradient within the cap
        phi = field_grid(field, (0, 0, 96, 120)).double()
        gx = (phi[:, 1:-1, 2:] - phi[:, 1:-1, :-2]) / 2
        gy = (phi[:, 2:, 1:-1] - phi[:, :-2, 1:-1]) / 2
        det = (1 + gx[0]) * (1 + gy[1]) - gx[1] * gy[0]
        assert float(det.min()) > 0.2
        assert float(torch.maximum(gx.abs().amax(), gy.abs().amax())) <= cfg.max_gradient + 0.02
        # second differences small: no kinks (smooth at the pixel scale)
        assert float((phi[:, :, 2:] - 2 * phi[:, :, 1:-1] + phi[:, :, :-2]).abs().max()) < 0.1


def test_composite_composes_only_the_listed_base_families() -> None:
    """Leave-one-family-out: a held-back family must not come back inside `composite`. With affine as the only
    listed base family every composite is a composition of affine maps, i.e. affine (second differences 0);
    with all families listed it is not."""

    def curvature(families: list[str], seed: int) -> float:
        cfg = AugmentConfig(enabled=True, mean_px=[25.0, 30.0], families=families)
        phi = field_grid(sample_family('composite', 96, 120, cfg, torch.Generator().manual_seed(seed)),
                         (0, 0, 96, 120)).double()
        return float((phi[:, :, 2:] - 2 * phi[:, :, 1:-1] + phi[:, :, :-2]).abs().max())

    assert max(curvature(['affine', 'composite'], s) for s in range(6)) < 1e-6
    assert max(curvature([*BASE_FAMILIES, 'composite'], s) for s in range(6)) > 1e-3


@pytest.mark.parametrize('family', (*BASE_FAMILIES, 'composite'))
def test_family_mean_magnitude_is_as_configured_and_peak_capped(family: str) -> None:
    """At 640 px width the mean |phi| equals the drawn target (from mean_px) unless a cap binds; the peak
    never exceeds peak_px."""
    region = crop_region(400, 800, 1.25)  # a 640 x 320 visible crop
    hits = 0
    for seed in range(6):
        cfg = AugmentConfig(enabled=True, mean_px=[12.0, 12.0])
        field = sample_family(family, 400, 800, cfg, torch.Generator().manual_seed(seed), region)
        st = field_stats(field, region)
        assert st.peak <= cfg.peak_px * 1.01 and st.gradient <= cfg.max_gradient * 1.01
        assert st.mean <= 12.0 * 1.01
        capped = st.peak >= cfg.peak_px * 0.97 or st.gradient >= cfg.max_gradient * 0.97
        if not capped:
            assert st.mean == pytest.approx(12.0, rel=0.02)
            hits += 1
    assert hits >= 3  # most draws at 12 px mean are not capped
    # the target itself is drawn uniformly from mean_px and scales with the crop's width
    cfg = AugmentConfig(enabled=True, mean_px=[0.0, 30.0])
    means = [field_stats(sample_family('affine', 100, 200, cfg, torch.Generator().manual_seed(s),
                                       crop_region(100, 200, 1.25)), crop_region(100, 200, 1.25)).mean
             for s in range(40)]
    assert 0.0 <= min(means) < 1.5 and 6.0 < max(means) <= 30.0 * 160 / 640 * 1.01
    assert np.mean(means) == pytest.approx(15.0 * 160 / 640, rel=0.3)


def test_cue_free_crops_never_show_a_fill_wedge() -> None:
    """The largest allowed field (peak_px at the crop's width) samples only inside the canvas: the moving crop
    of a constant image stays constant (a wedge would be a different value)."""
    cfg = AugmentConfig(enabled=True, mean_px=[60.0, 60.0])
    g = torch.Generator().manual_seed(0)
    ones = torch.ones(3, 125, 200)
    for family in FAMILIES:
        for _ in range(3):
            pair = cue_free_pair(ones, ones, cfg, g, family=family)
            assert pair.moving.shape[-2:] == (100, 160)
            assert float((pair.moving - 1).abs().max()) < 1e-5


def test_fov_is_a_zoom_in_the_configured_range_that_samples_only_inside_the_canvas() -> None:
    """The field-of-view family: phi is affine with singular values of (I + grad phi) near the drawn zoom, the
    moving crop reads only canvas pixels (a clamped edge would be a cue), and where the moving camera sees
    less (zoom > 1) the fixed crop's outer band is invalid, as for a narrower lens."""
    cfg = AugmentConfig(enabled=True, fov_zoom=[0.9, 1.7])
    h, w = 160, 200
    region = crop_region(h, w, cfg.canvas_scale)
    y0, x0, rh, rw = region
    zooms, invalid_when_zoomed = [], []
    for seed in range(12):
        field = sample_family('fov', h, w, cfg, torch.Generator().manual_seed(seed), region)
        phi = field_grid(field, (0, 0, h, w)).double()
        # affine: second differences vanish (float32 grid); the linear part is the gradient
        assert float((phi[:, :, 2:] - 2 * phi[:, :, 1:-1] + phi[:, :, :-2]).abs().max()) < 1e-4
        jac = torch.tensor([[1 + float(phi[0, 0, 1] - phi[0, 0, 0]), float(phi[0, 1, 0] - phi[0, 0, 0])],
                            [float(phi[1, 0, 1] - phi[1, 0, 0]), 1 + float(phi[1, 1, 0] - phi[1, 0, 0])]])
        sv = torch.linalg.svdvals(jac)
        zoom = float(sv.prod().sqrt())
        assert 0.9 * 0.9 <= zoom <= 1.7 * 1.01 and float(sv[0] / sv[1]) < 1.25
        zooms.append(zoom)
        d = inverse_on_grid(field)
        xs = torch.arange(w, dtype=torch.float64).view(1, w) + d[0]
        ys = torch.arange(h, dtype=torch.float64).view(h, 1) + d[1]
        crop = (slice(y0, y0 + rh), slice(x0, x0 + rw))
        assert float(xs[crop].min()) >= -1e-6 and float(xs[crop].max()) <= w - 1 + 1e-6
        assert float(ys[crop].min()) >= -1e-6 and float(ys[crop].max()) <= h - 1 + 1e-6
        if zoom > 1.3:
            pair = cue_free_pair(_smooth_image(h, w, seed), _smooth_image(h, w, seed), cfg,
                                 torch.Generator().manual_seed(seed), family='fov')
            invalid_when_zoomed.append(1.0 - float(pair.valid.float().mean()))
    assert min(zooms) < 1.15 and max(zooms) > 1.45  # the range is used, not one zoom
    assert invalid_when_zoomed and min(invalid_when_zoomed) > 0.25


def test_random_borders_are_identical_in_both_images_and_marked_invalid() -> None:
    cfg = AugmentConfig(enabled=True, border_prob=1.0, border_max=0.3)
    g = torch.Generator().manual_seed(3)
    moving, fixed = torch.rand(3, 40, 50), torch.rand(1, 40, 50)
    valid = torch.ones(1, 40, 50, dtype=torch.bool)
    seen = 0
    for _ in range(10):
        m, f, v = random_borders(moving, fixed, valid, cfg, g)
        band_m, band_f = (m == -1).all(0), (f == -1).all(0)
        assert torch.equal(band_m, band_f) and torch.equal(~band_f, v[0])
        seen += int(band_f.any())
    assert seen >= 5


def test_nonrigid_uses_several_grid_sizes() -> None:
    cfg = AugmentConfig(enabled=True)
    sizes = set()
    for s in range(40):
        field = sample_family('nonrigid', 64, 80, cfg, torch.Generator().manual_seed(s))
        assert isinstance(field, Scaled) and isinstance(field.field, ControlGrid)
        sizes.add(field.field.control.shape[-1])
    assert sizes == set(range(3, 9))


# -- no shortcut ----------------------------------------------------------------------------------------------


class _GlobalFlow(nn.Module):
    """A small CNN that sees both images and predicts an affine field: the capacity to read a field off image
    borders (wedges), and nothing else to read it from when the two images' contents are independent noise."""

    def __init__(self) -> None:
        super().__init__()
        head = nn.Linear(512, 6)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(
            nn.Conv2d(4, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), head,
        )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        h, w = moving.shape[-2:]
        p = self.net(torch.cat((moving, fixed), 1)) * 4.0
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
        basis = torch.stack((torch.ones_like(xs), xs, ys))  # 3 x h x w
        fx = torch.einsum('bk,khw->bhw', p[:, :3], basis)
        fy = torch.einsum('bk,khw->bhw', p[:, 3:], basis)
        return torch.stack((fx, fy), 1)


def _noise_pairs(n: int, hw: tuple[int, int], seed: int) -> list[FramePair]:
    rng = np.random.default_rng(seed)
    return [FramePair(f'n{i}', rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
                      rng.integers(0, 256, hw, dtype=np.uint8), 'lwir', 'mono8') for i in range(n)]


def _wedge_batch(ds: TrainingPairs, idx: list[int], epoch: int) -> tuple[torch.Tensor, ...]:
    """The pre-issue-19 pipeline: the legacy field drawn on the network-size image itself, the moving image
    filled with -1 where it samples outside (the wedges)."""
    ms, fs, gs, vs = [], [], [], []
    for i in idx:
        moving, fixed, _, _ = ds._net_pair(i)
        moving, fixed = F.interpolate(moving[None], size=ds.net_hw)[0], F.interpolate(fixed[None], size=ds.net_hw)[0]
        g = torch.Generator().manual_seed(ds._item_seed(i, epoch))
        mis = sample_misalignment(*ds.net_hw, ds.augment, g)  # type: ignore[arg-type]
        m, gt = misalign(moving, mis, stride=4)
        ms.append(m)
        fs.append(fixed)
        gs.append(gt)
        vs.append(torch.ones(1, *ds.net_hw, dtype=torch.bool))
    return torch.stack(ms), torch.stack(fs), torch.stack(gs), torch.stack(vs)


def _pipeline_batch(ds: TrainingPairs, idx: list[int], epoch: int) -> tuple[torch.Tensor, ...]:
    items = [ds[epoch * len(ds) + i] for i in idx]
    return (torch.stack([it['moving'] for it in items]), torch.stack([it['fixed'] for it in items]),
            torch.stack([it['gt_net'] for it in items]), torch.stack([it['valid_net'] for it in items]))


def _residual_after_training(batch_fn, ds: TrainingPairs, steps: int = 60) -> float:  # type: ignore[no-untyped-def]
    """Train `_GlobalFlow` on noise pairs from `batch_fn`, return its EPE on unseen pairs as a fraction of
    the zero flow's."""
    torch.manual_seed(0)
    model = _GlobalFlow()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = len(ds)
    for step in range(steps):
        idx = [(step * 16 + k) % (n - 32) for k in range(16)]
        m, f, gt, v = batch_fn(ds, idx, epoch=step)
        loss = ((model(m, f) - gt).norm(dim=1) * v[:, 0]).sum() / v.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        m, f, gt, v = batch_fn(ds, list(range(n - 32, n)), epoch=10_000)
        epe = ((model(m, f) - gt).norm(dim=1) * v[:, 0]).sum() / v.sum()
        zero = (gt.norm(dim=1) * v[:, 0]).sum() / v.sum()
    return float(epe / zero)


def test_no_shortcut_a_model_cannot_beat_zero_flow_from_borders_alone() -> None:
    """Issue 19, item 0. Moving and fixed contents are independent noise, so nothing but the pipeline's border
    statistics can tell the field. A model trained on the training pipeline's pairs stays at ~100 % of the
    zero flow's error; the same model on the old wedge pipeline (the control, proving the test can fail)
    reads the field off the wedges (measured: 1.00 cue-free, 0.38 with wedges)."""
    hw = (48, 64)
    aug = AugmentConfig(enabled=True, appearance=False, mean_px=[10.0, 30.0])
    cue_free = TrainingPairs(_noise_pairs(200, (60, 80), 0), 'lwir', hw, augment=aug, net_grid_truth=True)
    ratio = _residual_after_training(_pipeline_batch, cue_free)
    legacy = AugmentConfig(enabled=True, appearance=False, shift_px=40.0, rotation_deg=4.0)
    wedged = TrainingPairs(_noise_pairs(200, hw, 0), 'lwir', hw, augment=legacy, net_grid_truth=True)
    control = _residual_after_training(_wedge_batch, wedged)
    assert ratio > 0.93, f'the cue-free pipeline leaks the field: {ratio:.2f} of zero flow'
    assert control < 0.8, f'control: the wedge pipeline should leak the field, got {control:.2f}'


class _RunawayField:
    """A field whose fixed-point inverse runs away to inf / NaN away from column 15 (a stretch growing like
    the cube of the distance); at column 15 (phi = 0) the iteration converges."""

    h, w = 16, 32

    def at(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack((0.5 * (x - 15.0) ** 3, torch.zeros_like(y)), dim=-1)


def test_the_inverse_stays_finite_where_the_fixed_point_iteration_runs_away() -> None:
    """Two training runs stopped on a NaN moving image at epoch 87: the inverse of a strongly stretched field
    had run away to inf. Such points keep their last finite estimate; where it converges it is exact."""
    field = _RunawayField()
    d = inverse_on_grid(field)
    assert torch.isfinite(d).all()
    assert d[0, :, 15].abs().max() < 1e-9 and (d[1] == 0).all()
    image = torch.rand(3, field.h, field.w)
    assert torch.isfinite(warp_clamped(image, field)).all()
