"""Gaussian filterbank maths (eq. 11-16, 19, 25) with hand-computed expectations."""

from __future__ import annotations

import math

import torch

from recattend.models.filterbank import (
    box_edges_to_center_size,
    extract,
    filterbank,
    reproject,
    rows_layout,
)


def test_kernel_values_by_hand() -> None:
    # One axis of length 4, patch of 2, centre 1.5, delta 3 (extent 4): mu_i = 1.5 + 4 (i - 0.5) / 2
    # = 0.5 and 2.5 (eq. 11). With variance 1: F[a, i] = exp(-(a - mu_i)^2 / 2) / sqrt(2 pi).
    center, size, var = (
        torch.tensor([[1.5, 1.5]]),
        torch.tensor([[3.0, 3.0]]),
        torch.tensor([[1.0, 1.0]]),
    )
    f_y, f_x = filterbank(center, size, var, (4, 4), (2, 2))
    a = torch.arange(4.0)[:, None]
    mu = torch.tensor([[0.5, 2.5]])
    expected = torch.exp(-((a - mu) ** 2) / 2) / math.sqrt(2 * math.pi)
    assert (
        f_y.shape == (1, 4, 2)
        and torch.allclose(f_y[0], expected)
        and torch.allclose(f_x[0], expected)
    )


def smooth_image(h: int, w: int) -> torch.Tensor:
    """Low-frequency test image: a Gaussian blur of sigma ~1-2 px changes it by < 0.02."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.sin(yy / 15) + torch.cos(xx / 13)


def test_whole_image_box_extracts_a_resampled_copy() -> None:
    # A box over the whole 32x32 image read at 32x32 puts kernel centres on pixel centres; with the
    # reference variance (the stride, 31/32) each row of F is a unit-mass Gaussian, so the patch is
    # the image blurred by sigma ~1, i.e. equal to a smooth image away from the borders.
    h = 32
    image = smooth_image(h, h)[None, None]
    center, size = box_edges_to_center_size(torch.tensor([[0.0, 0.0, h, h]]))
    assert torch.allclose(center, torch.tensor([[15.5, 15.5]])) and torch.allclose(
        size, torch.tensor([[31.0, 31.0]])
    )
    f_y, f_x = filterbank(center, size, size / h, (h, h), (h, h))
    assert torch.allclose(f_y[0, 3:-3].sum(1), torch.ones(h - 6), atol=1e-3)
    assert torch.allclose(
        extract(image, f_y, f_x)[..., 3:-3, 3:-3], image[..., 3:-3, 3:-3], atol=0.02
    )
    # At patch size 16 the samples fall at mu_i = 15.5 + 32 (i - 7.5) / 16 = 0.5, 2.5, ..., 30.5
    # (eq. 11): on a linear ramp the Gaussian average is exactly mu_i.
    ramp = torch.arange(h, dtype=torch.float32).expand(1, 1, h, h).clone()
    f_y, f_x = filterbank(center, size, torch.full((1, 2), 2.0), (h, h), (16, 16))
    patch = extract(ramp, f_y, f_x)[0, 0]
    mu = 15.5 + 32 * (torch.arange(16.0) - 7.5) / 16
    assert torch.allclose(patch[4, 3:13], mu[3:13], atol=1e-3)


def test_extract_then_reproject_reproduces_a_smooth_image_inside_the_box() -> None:
    h = 64
    smooth = smooth_image(h, h)
    center, size = box_edges_to_center_size(torch.tensor([[16.0, 8.0, 48.0, 56.0]]))
    f_y, f_x = filterbank(center, size, size / 24, (h, h), (24, 24))
    back = reproject(extract(smooth[None, None], f_y, f_x), f_y, f_x)[0, 0]
    # Re-projection density inside the box is F / (delta + 1) per axis.
    density = (24 / 32) * (24 / 48)
    inside = back[20:44, 14:50] / density
    assert torch.allclose(inside, smooth[20:44, 14:50], atol=0.02)
    assert back[:8].abs().max() < 1e-3  # nothing far outside the box


def test_gradients_reach_every_box_parameter() -> None:
    center = torch.tensor([[20.0, 30.0]], requires_grad=True)
    size = torch.tensor([[15.0, 25.0]], requires_grad=True)
    var = torch.tensor([[0.5, 0.8]], requires_grad=True)
    image = torch.rand(1, 2, 48, 64)
    f_y, f_x = filterbank(center, size, var, (48, 64), (8, 8))
    (extract(image, f_y, f_x) ** 2).sum().backward()
    for tensor in (center, size, var):
        assert tensor.grad is not None and (tensor.grad != 0).all()


def test_extract_in_any_layout_is_the_per_channel_sum() -> None:
    # eq. (16) written out: p[b, c, i, j] = sum_{a, d} F_Y[b, a, i] x[b, c, a, d] F_X[b, d, j], for
    # x as given, channels-last and in rows_layout (same values, stored as (B, H, C, W)).
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 5)
    f_y, f_x = torch.rand(2, 6, 4), torch.rand(2, 5, 3)
    expected = (f_y[:, None, :, None, :, None] * x[:, :, :, :, None, None]).sum(2)  # (B,C,W,h,1)
    expected = (expected[..., 0].permute(0, 1, 3, 2)[..., None] * f_x[:, None, None]).sum(3)
    rows = rows_layout(x)
    assert torch.equal(rows, x) and rows.permute(0, 2, 1, 3).is_contiguous()
    for layout in (x, x.contiguous(memory_format=torch.channels_last), rows):
        assert torch.allclose(extract(layout, f_y, f_x), expected, atol=1e-5)
