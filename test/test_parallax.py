"""The depth-parallax family (nmr.training.parallax): ground truth from nmr.geometry consistent with the
synthesised moving image, near things move more, disocclusions invalid, cue-free crops."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nmr.models.resampler import warp
from nmr.training.config import AugmentConfig
from nmr.training.parallax import fill_background, layered_depth, parallax_pair

torch.set_num_threads(1)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w), mode='bicubic',
                         align_corners=False)[0] * 255


def test_parallax_ground_truth_registers_the_synthesised_moving_image() -> None:
    h, w = 120, 160
    img = _image(h, w, 0)
    cfg = AugmentConfig(enabled=True, mean_px=[20.0, 30.0])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        p = parallax_pair(img, img[:1].clone(), layered_depth(h, w, g), cfg, g)
        ch, cw = p.moving.shape[-2:]
        assert (ch, cw) == (96, 128) and p.fixed.shape[-2:] == (ch, cw) and p.family == 'parallax'
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        aligned = img[:, y0:y0 + ch, x0:x0 + cw]
        assert torch.equal(p.fixed, img[:1, y0:y0 + ch, x0:x0 + cw])
        registered, _ = warp(p.moving[None], p.flow[None])
        v = p.valid[0]
        after = (registered[0] - aligned).abs().mean(0)[v]
        before = (p.moving - aligned).abs().mean(0)[v]
        assert 0.5 < float(v.float().mean()) < 1.0
        assert float(p.flow.norm(dim=0)[v].mean()) > 1.0
        assert float(after.median()) < 0.05 * float(before.mean())  # two bilinear resamplings' worth


def test_near_things_move_more_and_disocclusions_are_invalid() -> None:
    """A near box in front of a far wall: its parallax is larger, and the wall beside the box (seen by the
    fixed camera, hidden from the moving one) is invalid."""
    h, w = 96, 128
    depth = np.full((h, w), 30.0, np.float32)
    depth[30:70, 50:80] = 1.0
    img = _image(h, w, 2)
    cfg = AugmentConfig(enabled=True, mean_px=[30.0, 30.0], canvas_scale=1.0)
    p = parallax_pair(img, img[:1].clone(), depth, cfg, torch.Generator().manual_seed(3))
    mag = p.flow.norm(dim=0)
    v = p.valid[0]
    near = mag[35:65, 55:75][v[35:65, 55:75]]
    far = mag[:20][v[:20]]
    assert float(near.mean()) > 5 * float(far.mean()) + 0.5
    beside = v[30:70, 35:95].clone()
    beside[:, 15:45] = True  # the box itself is visible
    assert not bool(beside.all())  # some of the wall next to the box is occluded in the moving view
    assert float(v[:20].float().mean()) > 0.8  # the far wall away from the box: visible (but at the edges)


def test_layered_depth_and_background_fill() -> None:
    g = torch.Generator().manual_seed(0)
    d = layered_depth(64, 80, g)
    assert d.shape == (64, 80) and d.dtype == np.float32 and float(d.min()) >= 0.5 and float(d.max()) <= 80.0
    assert len(np.unique(np.round(d, 1))) > 10  # planes, a ground ramp, a background
    holes = np.array([[5.0, 0.0, 1.0], [5.0, 0.0, 1.0]], np.float32)
    assert np.array_equal(fill_background(holes), np.array([[5.0, 5.0, 1.0], [5.0, 5.0, 1.0]], np.float32))
