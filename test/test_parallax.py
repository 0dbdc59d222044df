"""The depth-parallax family (nmr.training.parallax): ground truth from nmr.geometry consistent with the
synthesised moving image, near things move more, disocclusions invalid, cue-free crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
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


# -- parallax as a training family (TrainingPairs, augment.families=[parallax]) ------------------------------

NET = (128, 160)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth RGB texture (uint8, 30..220: never the -1 fill after normalisation)."""
    return (30 + 190 * _image(h, w, seed).permute(1, 2, 0).numpy() / 255).round().astype(np.uint8)


def _depth_mm(h: int, w: int) -> np.ndarray:
    """A far wall (12 m), a near box (1.2 m), a slanted mid plane and a hole (0) in the wall: uint16 mm."""
    d = np.full((h, w), 12000, np.uint16)
    ys, xs = np.mgrid[0:h, 0:w]
    d[(ys > 0.55 * h) & (xs < 0.45 * w)] = (3000 + 8 * xs[(ys > 0.55 * h) & (xs < 0.45 * w)]).astype(np.uint16)
    d[int(0.3 * h):int(0.7 * h), int(0.55 * w):int(0.8 * w)] = 1200
    d[int(0.1 * h):int(0.2 * h), int(0.2 * w):int(0.35 * w)] = 0
    return d


def _pairs(kind: str, n: int = 4, hw: tuple[int, int] = (240, 300)) -> list:
    from nmr.data.types import FramePair

    out = []
    for i in range(n):
        if kind == 'depth':
            out.append(FramePair(f'd{i}', _rgb(*hw, i), _depth_mm(*hw), 'depth', '16UC1'))
        else:
            lw = (255 - _image(*hw, 50 + i)[0].numpy()).round().astype(np.uint8)
            out.append(FramePair(f'l{i}', _rgb(*hw, i), lw, 'lwir', 'mono8'))
    return out


def _training_pairs(kind: str, families: list[str], seed: int = 0, border_prob: float = 0.0, **kw):  # type: ignore[no-untyped-def]
    from nmr.training.data import TrainingPairs

    cfg = AugmentConfig(enabled=True, families=families, border_prob=border_prob, mean_px=[10.0, 30.0], **kw)
    return TrainingPairs(_pairs(kind), kind, NET, None, cfg, seed=seed, net_grid_truth=True)


def _item_depth(ds, i: int, epoch: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The canvas-size depth the item of (i, epoch) was made from: the pair's own (cached), or the layered one
    drawn right after the family from the item's generator."""
    from nmr.training.families import choose_family

    if ds.fixed_kind == 'depth':
        return ds._depth_cache[i]
    g = torch.Generator().manual_seed(ds._item_seed(i, epoch))
    assert choose_family(ds.augment, g) == 'parallax'
    ch, cw = ds.canvas_hw()
    return layered_depth(ch, cw, g)


@pytest.mark.parametrize('kind', ('depth', 'lwir'))
def test_training_item_of_the_parallax_family(kind: str) -> None:
    """A TrainingPairs item drawn from `parallax`: finite flow at the network size, the SPEC convention holds
    (warping the moving crop by it gives the aligned moving crop back), invalid pixels only at depth holes,
    outside the moving crop or next to a depth edge (disocclusions), deterministic per seed."""
    ds = _training_pairs(kind, ['parallax'])
    ch, cw = ds.canvas_hw()
    y0, x0 = (ch - NET[0]) // 2, (cw - NET[1]) // 2
    flows = []
    for epoch in range(3):
        for i in range(len(ds)):
            it = ds[epoch * len(ds) + i]
            gt, v = it['gt_net'], it['valid_net'][0]
            assert it['moving'].shape == (3, *NET) and it['fixed'].shape == (1, *NET)
            assert gt.shape == (2, *NET) and gt.dtype == torch.float32 and bool(torch.isfinite(gt).all())
            assert 0.4 < float(v.float().mean()) < 1.0
            flows.append(float(gt.norm(dim=0)[v].mean()))
            aligned = ds._net_pair(i)[0][:, y0:y0 + NET[0], x0:x0 + NET[1]]
            registered, _ = warp(it['moving'][None], gt[None])
            after = (registered[0] - aligned).abs().mean(0)[v]
            before = (it['moving'] - aligned).abs().mean(0)[v]
            assert float(after.median()) < 0.1 * float(before.mean())
            assert float(after.mean()) < 0.3 * float(before.mean())
            # where the invalid pixels may be
            # (edges on the whole canvas: something just outside the crop can hide a pixel inside it; an edge
            # is a depth step above the z-buffer's 2 % tolerance: grazing planes can hide their own pixels)
            canvas = _item_depth(ds, i, epoch)
            holes = canvas <= 0
            logd = np.log(np.where(holes, 1.0, canvas))
            edge = (np.abs(np.diff(logd, axis=0, append=logd[-1:])) > 0.02) | \
                (np.abs(np.diff(logd, axis=1, append=logd[:, -1:])) > 0.02) | holes
            reach = int(np.ceil(float(gt.norm(dim=0).max()))) + 2
            near_edge = cv2.dilate(edge.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0
            near_edge = near_edge[y0:y0 + NET[0], x0:x0 + NET[1]]
            hole = holes[y0:y0 + NET[0], x0:x0 + NET[1]]
            xs = torch.arange(NET[1]).view(1, -1) + gt[0]
            ys = torch.arange(NET[0]).view(-1, 1) + gt[1]
            outside = ((xs < 0) | (xs > NET[1] - 1) | (ys < 0) | (ys > NET[0] - 1)).numpy()
            unexplained = ~v.numpy() & ~hole & ~outside & ~near_edge
            assert not unexplained.any(), f'{int(unexplained.sum())} invalid pixels away from depth edges'
            if kind == 'depth':
                assert not bool(v.numpy()[hole].any()) and hole.any()
                assert (~v.numpy() & ~hole & ~outside).any()  # disocclusions beside the near box
    assert 3.0 < float(np.mean(flows)) < 40.0
    # deterministic per (seed, epoch, index); another epoch or seed draws another field
    again = _training_pairs(kind, ['parallax'])[len(ds) + 1]
    first = ds[len(ds) + 1]
    for key in ('moving', 'fixed', 'gt_net', 'valid_net'):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(ds[1]['gt_net'], first['gt_net'])
    assert not torch.equal(_training_pairs(kind, ['parallax'], seed=1)[len(ds) + 1]['gt_net'], first['gt_net'])


def test_parallax_items_keep_random_borders_and_mix_with_smooth_families() -> None:
    """Content-free bands in both images, invalid under them, as for the other families; with [affine,
    parallax] both are drawn, and an affine item is exactly what `cue_free_pair` made before `parallax`
    existed (the family is drawn first from the same generator)."""
    from nmr.training.data import TRAIN_INVERSE_STRIDE, warmup_strength
    from nmr.training.families import choose_family, cue_free_pair, random_borders

    ds = _training_pairs('lwir', ['parallax'], border_prob=1.0, border_max=0.2)
    seen = 0
    for key in range(len(ds), 3 * len(ds)):
        it = ds[key]
        band = (it['moving'] == -1).all(0)
        assert bool((it['fixed'][0][band] == -1).all()) and not bool(it['valid_net'][0][band].any())
        seen += int(band.any())
    assert seen >= 3
    ds = _training_pairs('depth', ['affine', 'parallax'])
    drawn = set()
    for key in range(len(ds), 5 * len(ds)):
        it = ds[key]
        i, epoch = key % len(ds), key // len(ds)
        g = torch.Generator().manual_seed(ds._item_seed(i, epoch))
        moving, fixed, _, _ = ds._net_pair(i)
        family = choose_family(ds.augment, g)
        drawn.add(family)
        if family == 'affine':  # the pre-parallax call: cue_free_pair draws the family itself
            g = torch.Generator().manual_seed(ds._item_seed(i, epoch))
            ref = cue_free_pair(moving, fixed, ds.augment, g, strength=warmup_strength(ds.augment, epoch),
                                stride=TRAIN_INVERSE_STRIDE, out_hw=NET)
            assert ref.family == 'affine'
            m, f, v = random_borders(ref.moving, ref.fixed, ref.valid, ds.augment, g)
            assert torch.equal(it['gt_net'], ref.flow) and torch.equal(it['valid_net'], v)
            assert torch.equal(it['moving'], m) and torch.equal(it['fixed'], f)
    assert drawn == {'affine', 'parallax'}


def test_parallax_in_validation_items_and_the_config() -> None:
    """The validation path (native size, deterministic) draws parallax too, from the pair's own depth at
    native size; the config accepts `parallax` and still rejects unknown names; `cue_free_pair` refuses it
    with a line that says where it is made."""
    from nmr.errors import ConfigError
    from nmr.training.config import load_config
    from nmr.training.data import TrainingPairs
    from nmr.training.families import cue_free_pair

    cfg = AugmentConfig(enabled=True, families=['parallax'], mean_px=[10.0, 30.0])
    val = TrainingPairs(_pairs('depth', n=2), 'depth', NET, None, cfg, deterministic=True)
    a, b = val[0], val[0]
    assert a['gt_flow'].shape == (2, 192, 240) and bool(torch.isfinite(a['gt_flow']).all())
    assert torch.equal(a['gt_flow'], b['gt_flow']) and float(a['gt_flow'].norm(dim=0).mean()) > 1.0
    assert 0.4 < float(a['valid'].float().mean()) < 1.0
    assert load_config('config/train.yaml', ['augment.families=[affine,parallax]']).augment.families == \
        ['affine', 'parallax']
    assert 'parallax' not in load_config('config/train.yaml', []).augment.families
    with pytest.raises(ConfigError, match=r'augment\.families.*bogus'):
        load_config('config/train.yaml', ['augment.families=[parallax,bogus]'])
    with pytest.raises(ValueError, match='needs a depth map'):
        cue_free_pair(torch.rand(3, 40, 50), torch.rand(1, 40, 50), cfg, torch.Generator().manual_seed(0),
                      family='parallax')
