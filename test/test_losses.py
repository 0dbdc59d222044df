"""Losses: bilateral smoothness against a direct loop, detached bilateral weights, GAN modes, baselines."""

from __future__ import annotations

import math

import pytest
import torch

from nmr.training.losses import (
    GANLoss,
    baseline_similarity_loss,
    bilateral_smoothness,
    endpoint_error,
    local_ncc,
    sobel_edges,
    ssim,
)

torch.set_num_threads(1)


def _smoothness_loop(flow: torch.Tensor, image: torch.Tensor, alpha: float, bilateral: bool) -> float:
    """Paper eq. 2-3 written out: mean over v of sum over the 3x3 neighbours u of B(u, v) |phi(u) - phi(v)|_1,
    phi in normalised units (dx * 2 / W, dy * 2 / H), B = exp(-alpha * mean_c |O[u] - O[v]|)."""
    b, _, h, w = flow.shape
    total = 0.0
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if (dy, dx) == (0, 0):
                            continue
                        yy, xx = y + dy, x + dx
                        if not (0 <= yy < h and 0 <= xx < w):
                            continue
                        d = (
                            abs(float(flow[n, 0, yy, xx] - flow[n, 0, y, x])) * 2.0 / w
                            + abs(float(flow[n, 1, yy, xx] - flow[n, 1, y, x])) * 2.0 / h
                        )
                        weight = 1.0
                        if bilateral:
                            diff = (image[n, :, yy, xx] - image[n, :, y, x]).abs().mean()
                            weight = math.exp(-alpha * float(diff))
                        total += weight * d
    return total / (b * h * w)


@pytest.mark.parametrize('bilateral', [True, False])
def test_smoothness_equals_direct_loop(bilateral: bool) -> None:
    torch.manual_seed(0)
    flow = torch.randn(2, 2, 5, 7) * 3.0
    image = torch.rand(2, 3, 5, 7) * 2.0 - 1.0
    got = bilateral_smoothness(flow, image, alpha=1.0, bilateral=bilateral)
    assert float(got) == pytest.approx(_smoothness_loop(flow, image, 1.0, bilateral), rel=1e-5)


def test_smoothness_of_constant_flow_is_zero_and_alpha_matters() -> None:
    flow = torch.zeros(1, 2, 6, 6)
    flow[:, 0] = 4.0
    image = torch.rand(1, 3, 6, 6)
    assert float(bilateral_smoothness(flow, image)) == 0.0
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 2, 6, 6)
    edgy = torch.zeros(1, 1, 6, 6)
    edgy[..., 3:] = 2.0
    assert bilateral_smoothness(ramp, edgy, alpha=1.0) < bilateral_smoothness(ramp, edgy, alpha=0.0)


def test_no_gradient_flows_into_bilateral_weights() -> None:
    torch.manual_seed(1)
    flow = torch.randn(1, 2, 6, 8, requires_grad=True)
    image = torch.rand(1, 3, 6, 8, requires_grad=True)
    loss = bilateral_smoothness(flow, image, alpha=1.0)
    loss.backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0
    assert image.grad is None  # weights are constants (paper: "treated as constant at each backward pass")


@pytest.mark.parametrize('mode', ['vanilla', 'lsgan'])
def test_gan_loss_targets(mode: str) -> None:
    gan = GANLoss(mode)
    confident_real = torch.full((2, 1, 3, 3), 8.0 if mode == 'vanilla' else 1.0)
    assert float(gan(confident_real, True)) < 1e-3
    assert float(gan(confident_real, False)) > 0.9
    with pytest.raises(ValueError):
        GANLoss('wgan')


def test_ncc_ssim_and_edges_basics() -> None:
    torch.manual_seed(2)
    a = torch.rand(1, 1, 16, 16)
    assert float(local_ncc(a, 3.0 * a + 1.0)) == pytest.approx(1.0, abs=1e-3)
    assert float(local_ncc(a, torch.rand(1, 1, 16, 16))) < 0.5
    assert float(ssim(a * 2 - 1, a * 2 - 1)) == pytest.approx(1.0, abs=1e-5)
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    edges = sobel_edges(step)
    assert edges.shape == (1, 1, 8, 8) and float(edges[0, 0, 4, 3]) > float(edges[0, 0, 4, 0]) + 0.1


@pytest.mark.parametrize('kind', ['ncc', 'ncc_edges', 'ssim_edges'])
def test_baselines_are_lower_for_aligned_images(kind: str) -> None:
    img = torch.zeros(1, 1, 24, 24)
    img[..., 8:16, 6:14] = 1.0
    shifted = torch.roll(img, 3, dims=-1)
    aligned = baseline_similarity_loss(kind, img.expand(1, 3, -1, -1), sobel_edges(img), 1.0 - img)
    off = baseline_similarity_loss(kind, shifted.expand(1, 3, -1, -1), sobel_edges(shifted), 1.0 - img)
    assert float(aligned) < float(off)


def test_endpoint_error_respects_mask() -> None:
    gt = torch.zeros(1, 2, 2, 2)
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0] = 3.0
    pred[0, 1, 0, 0] = 4.0
    assert float(endpoint_error(pred, gt)) == pytest.approx(5.0 / 4)
    valid = torch.tensor([[False, True], [True, True]])
    assert float(endpoint_error(pred, gt, valid)) == 0.0


def test_reconstruction_l1_ignores_samples_from_outside_the_moving_image() -> None:
    from nmr.training.losses import reconstruction_l1

    fixed = torch.zeros(2, 1, 4, 5)
    fake = torch.zeros(2, 1, 4, 5)
    fake[:, :, :, 0] = 3.0  # error only in the first column
    valid = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    assert float(reconstruction_l1(fake, fixed, None)) == pytest.approx(3.0 / 5)
    assert float(reconstruction_l1(fake, fixed, valid)) == pytest.approx(3.0 / 5)
    valid[:, :, :, 0] = False
    assert float(reconstruction_l1(fake, fixed, valid)) == 0.0
    rgb = torch.zeros(2, 3, 4, 5)  # the mask broadcasts over channels
    rgb[:, :, :, 1] = 1.0
    assert float(reconstruction_l1(rgb, torch.zeros_like(rgb), valid)) == pytest.approx(1.0 / 4)
