"""BatchNormReLU2d is nn.BatchNorm2d + ReLU, on its wide-view path as on the parent's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recattend.models.layers import BatchNormReLU2d, _BatchNormReLUFunction, batchnorm_relu


def _pair(channels: int, momentum: float | None, dtype: torch.dtype = torch.float32):
    """A reference BatchNorm2d with non-trivial parameters and statistics, and a copy."""
    reference = nn.BatchNorm2d(channels, eps=1e-3, momentum=momentum).to(dtype)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
        reference.running_mean.uniform_(-1.0, 1.0)
        reference.running_var.uniform_(0.5, 2.0)
    fused = BatchNormReLU2d(channels, eps=1e-3, momentum=momentum).to(dtype)
    fused.load_state_dict(reference.state_dict())
    fused.wide_path = True  # whenever the input allows it, whatever the thread count
    return reference, fused


def _run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = batchnorm_relu(module, x)
    y.backward(grad)
    out = {"y": y, "dx": x.grad, "dw": module.weight.grad, "db": module.bias.grad}
    return out | {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.0, None])
@pytest.mark.parametrize("shape", [(5, 8, 12, 10), (3, 16, 7, 5), (2, 3, 5, 5), (2, 64, 4, 4)])
def test_training_matches_batchnorm2d_then_relu(shape, momentum, channels_last) -> None:
    torch.manual_seed(0)
    reference, fused = _pair(shape[1], momentum)
    fused.train(), reference.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # An offset mean, as conv outputs have: the variance must not lose precision to it.
    x = (torch.randn(shape) * 2 + 3).contiguous(memory_format=memory_format)
    grad = torch.randn(shape).contiguous(memory_format=memory_format)
    assert (fused._wide_columns(x) is not None) == channels_last
    expected, got = _run(reference, x, grad), _run(fused, x, grad)
    assert got["y"].is_contiguous(memory_format=memory_format)
    assert (got["y"] == 0).any() and (got["y"] > 0).any()  # the ReLU cuts somewhere
    for key, value in expected.items():
        if key == "y":
            value = torch.relu(value)
        assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-5), key
    assert got["num_batches_tracked"] == 1
    if momentum == 0.0:  # frozen statistics (the checkpoint recomputation) stay bit-exact
        assert torch.equal(got["running_mean"], reference.running_mean)
        assert torch.equal(got["running_var"], reference.running_var)


def test_running_statistics_after_several_batches() -> None:
    torch.manual_seed(0)
    reference, fused = _pair(8, 0.1)
    for _ in range(3):
        x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last) * 3 - 1
        reference(x), fused(x)
    for key, value in reference.state_dict().items():
        assert torch.allclose(fused.state_dict()[key], value, rtol=1e-5, atol=1e-6), key
    # Hand-checked: the running mean moves 10% of the way to the batch mean, here from zero.
    fresh = BatchNormReLU2d(2, eps=1e-3)
    fresh.wide_path = True
    x = (
        torch.tensor([1.0, 3.0, 2.0, 6.0])
        .view(2, 2, 1, 1)
        .contiguous(memory_format=torch.channels_last)
    )  # channel 0: (1, 2), channel 1: (3, 6)
    fresh(x)
    assert torch.allclose(fresh.running_mean, torch.tensor([0.15, 0.45]))
    # Unbiased variances 0.5 and 4.5: 0.9 * 1 + 0.1 * v.
    assert torch.allclose(fresh.running_var, torch.tensor([0.95, 1.35]))


@pytest.mark.parametrize("channels_last", [True, False])
def test_eval_mode_matches_batchnorm2d_then_relu(channels_last) -> None:
    torch.manual_seed(0)
    reference, fused = _pair(8, 0.1)
    reference.eval(), fused.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 8, 6, 6).contiguous(memory_format=memory_format)
    assert fused._wide_columns(x) is None  # running statistics: the parent's forward
    assert torch.allclose(fused(x), torch.relu(reference(x)), atol=1e-6)
    assert fused.num_batches_tracked == 0


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.empty(4, dtype=torch.float64).uniform_(0.5, 1.5)
    bias = torch.empty(4, dtype=torch.float64).uniform_(-0.3, 0.3)
    norm = BatchNormReLU2d(4, eps=1e-3).double()
    norm.wide_path = True
    columns = norm._wide_columns(x)
    assert columns == 4 * 2  # 18 pixels tile by 2 into 8 columns

    def function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return _BatchNormReLUFunction.apply(x, weight, bias, 1e-3, columns)[0]

    inputs = tuple(t.clone().requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(function, inputs)


def test_default_path_choice() -> None:
    norm = BatchNormReLU2d(8, eps=1e-3)
    narrow = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one thread: no false sharing, the native kernel is faster
        assert norm._wide_columns(narrow) is None
        torch.set_num_threads(2)
        assert norm._wide_columns(narrow) == 64  # 8 channels x 8 pixels
        assert norm._wide_columns(wide) is None  # 64-byte rows: own cache lines
        assert norm._wide_columns(narrow.double()) is None
        norm.wide_path = False
        assert norm._wide_columns(narrow) is None
    finally:
        torch.set_num_threads(threads)


def test_other_batchnorms_get_the_relu_from_the_helper() -> None:
    # What Lightning's sync_batchnorm leaves: a plain BatchNorm in place of BatchNormReLU2d.
    plain = nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    assert (batchnorm_relu(plain, x.clone()) >= 0).all()
    assert isinstance(BatchNormReLU2d(4), nn.BatchNorm2d)
    assert set(BatchNormReLU2d(4).state_dict()) == set(plain.state_dict())
