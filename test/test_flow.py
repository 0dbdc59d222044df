"""nmr.flow: identity, known shifts, valid mask, colour wheel, overlay, resize_flow geometry."""

from __future__ import annotations

import numpy as np
import pytest

from nmr.flow import flow_to_rgb, identity, overlay, resize_flow, sample_maps, warp


def ramp(h: int = 6, w: int = 8, c: int | None = 3, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 200, size=shape).astype(dtype)


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize('c', [None, 1, 3, 4, 6])
def test_zero_flow_is_exact_identity(dtype, c):
    img = ramp(c=c, dtype=dtype)
    out, valid = warp(img, identity(6, 8))
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    assert valid.all()


def test_known_integer_shift():
    img = ramp(c=None, dtype=np.float32)
    flow = identity(6, 8)
    flow[..., 0] = 2.0  # registered(x, y) = moving(x + 2, y)
    flow[..., 1] = -1.0  # ... and row y - 1
    out, valid = warp(img, flow)
    np.testing.assert_array_equal(out[1:, :6], img[:-1, 2:])
    assert valid[1:, :6].all()
    assert not valid[0].any() and not valid[:, 6:].any()
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[:, 6:], 0)


def test_half_pixel_shift_is_bilinear():
    img = np.array([[0.0, 10.0, 20.0, 30.0]], dtype=np.float32)
    flow = identity(1, 4)
    flow[..., 0] = 0.5
    out, valid = warp(img, flow)
    np.testing.assert_allclose(out[0, :3], [5.0, 15.0, 25.0], atol=1e-4)
    assert valid.tolist() == [[True, True, True, False]]


def test_moving_of_other_size_and_nan_flow():
    moving = ramp(h=10, w=12, c=None, dtype=np.float32)
    flow = identity(4, 5)
    flow[0, 0] = np.nan
    out, valid = warp(moving, flow)
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out[1:], moving[1:4, :5])
    assert not valid[0, 0] and valid[1:].all()
    map_x, map_y = sample_maps(identity(2, 3))
    assert map_x.tolist() == [[0, 1, 2], [0, 1, 2]] and map_y.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_bool_images_warp():
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    flow = identity(4, 4)
    flow[..., 0] = 1
    out, _ = warp(mask, flow)
    assert out.dtype == bool and out[1, 0] and out.sum() == 1


def test_flow_to_rgb_middlebury_directions():
    flow = np.zeros((1, 5, 2), np.float32)
    flow[0, 1] = (1, 0)  # right: red-ish in the Middlebury wheel
    flow[0, 2] = (0, 1)  # down (+y)
    flow[0, 3] = (-1, 0)  # left: cyan-ish
    flow[0, 4] = (np.nan, 0)
    rgb = flow_to_rgb(flow)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # zero flow is white
    r, g, b = rgb[0, 1].astype(int)
    assert r > 200 and b < 100
    r, g, b = rgb[0, 3].astype(int)
    assert r < 100 and g > 150 and b > 150
    assert rgb[0, 4].tolist() == [0, 0, 0]
    assert not np.array_equal(rgb[0, 2], rgb[0, 1])
    # a fixed scale: half-length vectors are paler than at the data's own maximum
    assert rgb[0, 1, 1] < flow_to_rgb(flow, max_magnitude=2.0)[0, 1, 1]


def test_overlay():
    a = np.full((2, 2, 3), 100, np.uint8)
    b = np.full((2, 2, 3), 200, np.uint8)
    assert overlay(a, b, 0.0).tolist() == a.tolist()
    assert overlay(a, b, 0.5)[0, 0, 0] == 150
    assert overlay(a[..., 0], b, 1.0).tolist() == b.tolist()
    with pytest.raises(ValueError):
        overlay(a, b[:1], 0.5)
    with pytest.raises(ValueError):
        overlay(a, b, 1.5)


def test_resize_flow_identity_and_scaling():
    # same sizes: unchanged
    flow = np.random.default_rng(1).normal(size=(4, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(resize_flow(flow, (4, 6), (4, 6), (4, 6), (4, 6)), flow)
    # identity at every scale: zero flow with equal fixed and moving sizes stays zero
    z = resize_flow(identity(4, 6), (4, 6), (4, 6), (8, 12), (8, 12))
    np.testing.assert_allclose(z, 0, atol=1e-6)
    # a constant shift doubles when both images double
    shift = np.zeros((4, 6, 2), np.float32)
    shift[..., 0], shift[..., 1] = 1.5, -0.5
    up = resize_flow(shift, (4, 6), (4, 6), (8, 12), (8, 12))
    np.testing.assert_allclose(up[..., 0], 3.0, atol=1e-5)
    np.testing.assert_allclose(up[..., 1], -1.0, atol=1e-5)


def test_resize_flow_different_moving_size_matches_geometry():
    # zero flow between a 4x6 fixed and a 4x6 moving, re-expressed for a moving of 8x12:
    # fixed pixel x samples moving-native (x + 0.5) * 2 - 0.5 = 2x + 0.5.
    out = resize_flow(identity(4, 6), (4, 6), (4, 6), (4, 6), (8, 12))
    xs = np.arange(6, dtype=np.float32)
    np.testing.assert_allclose(out[0, :, 0], 2 * xs + 0.5 - xs, atol=1e-5)
    # and warping the big moving image with it picks the same content as the small one did
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, size=(4, 6)).astype(np.float32)
    big = np.kron(small, np.ones((2, 2), np.float32))
    reg, valid = warp(big, out)
    np.testing.assert_allclose(reg[valid], small[valid], atol=1e-3)
    with pytest.raises(ValueError):
        resize_flow(identity(3, 3), (4, 6), (4, 6), (4, 6), (4, 6))


def middlebury_reference(flow: np.ndarray) -> np.ndarray:
    """Baker et al.'s computeColor in float64 (as in flow_vis), written out plainly."""
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((55, 3))
    col = 0
    wheel[0:ry, 0] = 255
    wheel[0:ry, 1] = np.floor(255 * np.arange(ry) / ry)
    col += ry
    wheel[col : col + yg, 0] = 255 - np.floor(255 * np.arange(yg) / yg)
    wheel[col : col + yg, 1] = 255
    col += yg
    wheel[col : col + gc, 1] = 255
    wheel[col : col + gc, 2] = np.floor(255 * np.arange(gc) / gc)
    col += gc
    wheel[col : col + cb, 1] = 255 - np.floor(255 * np.arange(cb) / cb)
    wheel[col : col + cb, 2] = 255
    col += cb
    wheel[col : col + bm, 2] = 255
    wheel[col : col + bm, 0] = np.floor(255 * np.arange(bm) / bm)
    col += bm
    wheel[col : col + mr, 2] = 255 - np.floor(255 * np.arange(mr) / mr)
    wheel[col : col + mr, 0] = 255
    u, v = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    rad = np.sqrt(u**2 + v**2)
    u, v, rad = u / rad.max(), v / rad.max(), rad / rad.max()
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * 54
    k0 = np.floor(fk).astype(int)
    k1 = k0 + 1
    k1[k1 == 55] = 0
    f = fk - k0
    out = np.zeros((*u.shape, 3), np.uint8)
    for i in range(3):
        c = (1 - f) * wheel[k0, i] / 255 + f * wheel[k1, i] / 255
        c = np.where(rad <= 1, 1 - rad * (1 - c), c * 0.75)
        out[..., i] = np.floor(255 * c)
    return out


def test_flow_to_rgb_matches_reference_implementation():
    flow = np.random.default_rng(5).normal(size=(40, 50, 2)).astype(np.float32) * 4
    ours, ref = flow_to_rgb(flow).astype(int), middlebury_reference(flow).astype(int)
    assert np.abs(ours - ref).max() <= 1
    assert (ours != ref).mean() < 0.01
