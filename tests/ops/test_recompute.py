"""Activation checkpointing that restores BatchNorm statistics (recattend.ops.recompute)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recattend.ops.recompute import recomputed, restored_batchnorm_stats


def test_restored_batchnorm_stats_puts_the_running_averages_back() -> None:
    # Two channels, x = 0..15 as (2, 2, 2, 2): channel 0 holds 0..3 and 8..11 (mean 5.5), channel
    # 1 holds 4..7 and 12..15 (mean 9.5). Momentum 0.5: half-way from 0, inside the context only.
    norm = nn.BatchNorm2d(2, momentum=0.5)
    x = torch.arange(16.0).view(2, 2, 2, 2)
    with restored_batchnorm_stats([norm]):
        y = norm(x)
        assert torch.equal(norm.running_mean, torch.tensor([2.75, 4.75]))
        assert int(norm.num_batches_tracked) == 1
    assert torch.equal(norm.running_mean, torch.zeros(2))
    assert torch.equal(norm.running_var, torch.ones(2))
    assert int(norm.num_batches_tracked) == 0
    # Batch statistics normalised all the same: channel 0 has mean 0.
    assert abs(y[:, 0].mean().item()) < 1e-6
    # Also when the block fails.
    with pytest.raises(RuntimeError, match="fails"), restored_batchnorm_stats([norm]):
        norm(x)
        raise RuntimeError("fails")
    assert torch.equal(norm.running_mean, torch.zeros(2)) and int(norm.num_batches_tracked) == 0


def test_recomputed_gives_the_same_values_and_gradients_and_moves_statistics_once() -> None:
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.5)
    reference_conv, reference_norm = copy.deepcopy(conv), copy.deepcopy(norm)
    x = torch.randn(2, 2, 5, 5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = recomputed(lambda v: torch.relu(norm(conv(v))), [norm], xa)
    assert (2, 3, 5, 5) not in saved  # only the input and output are kept, not conv(x)
    expected = torch.relu(reference_norm(reference_conv(xb)))
    torch.testing.assert_close(y, expected)
    after_forward = norm.running_mean.clone()
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    # The recomputation left the running statistics as the forward pass did: moved once.
    assert torch.equal(norm.running_mean, after_forward)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(norm, name), getattr(reference_norm, name))
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(conv.weight.grad, reference_conv.weight.grad)
    torch.testing.assert_close(norm.weight.grad, reference_norm.weight.grad)
