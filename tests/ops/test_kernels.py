"""The CPU kernels (recattend.ops.kernels) against hand-computed values and against PyTorch:
the fused BatchNorm + ReLU (+ max-pooling) against BatchNorm2d, ReLU and max_pool2d, the 3x3
convolution against conv2d."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from recattend.ops import kernels
from recattend.ops.kernels import batchnorm_relu

CL = torch.channels_last


def _norm(channels: int, seed: int = 0, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d(channels, eps=1e-3, momentum=momentum)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0.0, 0.3)
        norm.running_mean.normal_(0.0, 1.0)
        norm.running_var.uniform_(0.5, 2.0)
    return norm


def test_hand_computed_single_channel(kernel) -> None:
    # One channel, values 0..15 (16 values: one lane block): mean 7.5, biased variance 21.25.
    x = torch.arange(16.0).view(1, 1, 4, 4).contiguous(memory_format=CL).requires_grad_()
    norm = nn.BatchNorm2d(1, eps=0.0, momentum=0.5)
    y = batchnorm_relu(norm, x)
    expected = ((torch.arange(16.0) - 7.5) / 21.25**0.5).clamp(min=0).view(1, 1, 4, 4)
    assert torch.allclose(y, expected, atol=1e-6)
    # Running statistics: half-way (momentum 0.5) from (0, 1) to (7.5, unbiased 21.25 * 16 / 15).
    assert torch.allclose(norm.running_mean, torch.tensor([3.75]))
    assert torch.allclose(norm.running_var, torch.tensor([0.5 + 0.5 * 21.25 * 16 / 15]))
    assert int(norm.num_batches_tracked) == 1
    # Loss = sum(y): the gradient through the ReLU is 1 on the 8 positive outputs (x = 8..15).
    # dL/dbias = 8; dL/dweight = sum of x^ over them = sum((8..15) - 7.5) / std = 32 / std.
    y.sum().backward()
    std = 21.25**0.5
    assert torch.allclose(norm.bias.grad, torch.tensor([8.0]))
    assert torch.allclose(norm.weight.grad, torch.tensor([32.0 / std]), atol=1e-5)
    # dL/dx = (g - mean(g) - x^ mean(g x^)) / std with g = [x >= 8].
    xhat = (torch.arange(16.0) - 7.5) / std
    g = (torch.arange(16.0) >= 8).float()
    grad = (g - g.mean() - xhat * (g * xhat).mean()) / std
    assert torch.allclose(x.grad.flatten(), grad, atol=1e-6)


def _relu_pool(y: torch.Tensor, pool: int) -> torch.Tensor:
    return nn.functional.max_pool2d(torch.relu(y), pool) if pool > 1 else torch.relu(y)


@pytest.mark.parametrize("pool", [1, 2], ids=["no_pool", "pool2"])
@pytest.mark.parametrize("channels", [1, 2, 8, 16, 32, 64])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_matches_batchnorm_relu_pool(
    kernel, channels: int, momentum: float | None, pool: int
) -> None:
    torch.manual_seed(channels)
    x = (torch.randn(3, channels, 8, 8) * 2 + 3).contiguous(memory_format=CL)
    grad_y = torch.randn(3, channels, 8 // pool, 8 // pool)
    fused, reference = _norm(channels, momentum=momentum), _norm(channels, momentum=momentum)
    for step in range(2):  # twice: the running statistics and counters build up alike
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = batchnorm_relu(fused, xa, pool), _relu_pool(reference(xb), pool)
        assert ya.is_contiguous(memory_format=CL) and ya.shape == yb.shape
        # Away from the ReLU's kink, where rounding may flip a value across 0.
        assert ((ya > 0) == (yb > 0)).all(), step
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        ya.backward(grad_y)
        yb.backward(grad_y)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused, name), getattr(reference, name))
    for name in ("weight", "bias"):
        torch.testing.assert_close(
            getattr(fused, name).grad, getattr(reference, name).grad, atol=1e-4, rtol=1e-4
        )
    fused.eval(), reference.eval()
    torch.testing.assert_close(batchnorm_relu(fused, x, pool), _relu_pool(reference(x), pool))


def test_hand_computed_pooling_routes_the_gradient_to_the_first_maximum(kernel) -> None:
    # One channel, 4x4 (mean 2.75), four 2x2 windows. Top left: 5 three times, the first (0, 0)
    # takes the gradient; top right: maximum 1 < mean, bottom left: all < mean, both cut by the
    # ReLU; bottom right: 9 at (2, 2) first, then (2, 3), (3, 2).
    values = [[5.0, 5, 0, 1], [2, 5, 1, 0], [-3, -2, 9, 9], [-4, -1, 9, 8]]
    x = torch.tensor(values).view(1, 1, 4, 4).contiguous(memory_format=CL).requires_grad_()
    norm = nn.BatchNorm2d(1, eps=1e-5)
    y = batchnorm_relu(norm, x, 2)
    flat = torch.tensor(values).flatten()
    std = (flat.var(unbiased=False) + 1e-5).sqrt()
    xhat = (flat - 2.75) / std
    assert torch.allclose(y.flatten(), torch.stack([xhat[0], 0 * std, 0 * std, xhat[10]]))
    y.sum().backward()
    g = torch.zeros(16)
    g[[0, 10]] = 1.0  # (0, 0) and (2, 2): each window's first maximum that passes the ReLU
    grad = (g - g.mean() - xhat * (g * xhat).mean()) / std
    assert torch.allclose(x.grad.flatten(), grad, atol=1e-6)
    assert torch.allclose(norm.bias.grad, torch.tensor([2.0]))
    assert torch.allclose(norm.weight.grad, (xhat[0] + xhat[10]).view(1), atol=1e-6)
    # PyTorch's max_pool2d breaks the ties alike.
    xb = x.detach().clone().requires_grad_()
    _relu_pool(nn.BatchNorm2d(1, eps=1e-5)(xb), 2).sum().backward()
    assert torch.allclose(x.grad, xb.grad, atol=1e-6)


def _on_2_then_1_thread(run) -> list[tuple[torch.Tensor, ...]]:
    """``run()`` (a tuple of tensors) on 2 threads, then on 1."""
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    return results


def test_pooling_does_not_depend_on_the_thread_count(kernel) -> None:
    # Partial sums over fixed blocks of rows, added in order.
    x = torch.randn(3, 8, 38, 22).contiguous(memory_format=CL).requires_grad_()
    grad_y = torch.randn(3, 8, 19, 11)

    def run() -> tuple[torch.Tensor, ...]:
        norm = _norm(8)
        x.grad = None
        y = batchnorm_relu(norm, x, 2)
        y.backward(grad_y)
        return y.detach(), x.grad, norm.weight.grad, norm.running_var

    two, one = _on_2_then_1_thread(run)
    assert all(torch.equal(a, b) for a, b in zip(two, one, strict=True))  # bit for bit


@pytest.mark.parametrize("shape, pool", [((2, 8, 5, 4), 2), ((2, 8, 6, 6), 3)])
def test_other_pooling_falls_back_to_pytorch(kernel, monkeypatch, shape, pool: int) -> None:
    # An odd height, or pooling other than 2x2: BatchNorm2d, ReLU and max_pool2d themselves.
    monkeypatch.setattr(kernels._BatchNormReLU, "apply", None)  # would fail if called
    x = torch.randn(*shape).contiguous(memory_format=CL)
    norm = _norm(8)
    reference = copy.deepcopy(norm)
    assert torch.equal(batchnorm_relu(norm, x, pool), _relu_pool(reference(x), pool))


def test_statistics_are_accurate_far_from_zero(kernel) -> None:
    # mean 1000, std 1 (running mean still near 0): a one-pass variance in float32 loses everything;
    # the kernel shifts by a sample mean and accumulates in float64, matching a float64 reference.
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 16, 16) + 1000.0).contiguous(memory_format=CL)
    norm = _norm(8)
    reference = nn.functional.batch_norm(
        x.double(), None, None, norm.weight.double(), norm.bias.double(), True, 0.0, norm.eps
    ).relu()
    y = batchnorm_relu(norm, x)
    # float32 holds values near 1000 to 6.1e-5 (one ulp): allow a few ulps; a naive float32
    # one-pass variance is off by O(1) here (measured 0.97 before shifting).
    assert (y.double() - reference).abs().max() < 3e-4
    mean = x.double().mean((0, 2, 3)).float()
    torch.testing.assert_close(norm.running_mean, 0.9 * _norm(8).running_mean + 0.1 * mean)


@pytest.mark.parametrize(
    "case",
    ["disabled", "bfloat16", "twelve_channels", "nchw_odd_size", "subclass", "eval_with_grad"],
)
def test_other_inputs_fall_back_to_pytorch(kernel, monkeypatch, case: str) -> None:
    # Everything the kernel does not take gives exactly BatchNorm2d then ReLU.
    channels, shape, dtype = 8, (2, 8, 4, 4), torch.float32
    norm_type = nn.BatchNorm2d
    if case == "disabled":
        monkeypatch.setattr(kernels, "ENABLED", False)
    elif case == "bfloat16":
        dtype = torch.bfloat16
    elif case == "twelve_channels":  # 12 does not divide a 16-lane block
        channels, shape = 12, (2, 12, 4, 4)
    elif case == "nchw_odd_size":  # 8 * 3 * 3 * 1 values: not a whole number of lane blocks
        shape = (1, 8, 3, 3)
    elif case == "eval_with_grad":  # the evaluation kernel has no backward
        pass
    else:  # e.g. the SyncBatchNorm that DDP substitutes has no ReLU of its own

        class Other(nn.BatchNorm2d):
            pass

        norm_type = Other
    torch.manual_seed(0)
    x = torch.randn(*shape)
    fused = norm_type(channels).to(dtype)
    if case == "eval_with_grad":
        x = x.contiguous(memory_format=CL)
        fused.eval()
    reference = copy.deepcopy(fused)
    xa, xb = x.to(dtype).requires_grad_(), x.to(dtype).requires_grad_()
    y, expected = batchnorm_relu(fused, xa), torch.relu(reference(xb))
    assert torch.equal(y, expected)
    assert torch.equal(fused.running_mean, reference.running_mean)
    y.sum().backward()
    expected.sum().backward()
    assert torch.equal(xa.grad, xb.grad) and torch.equal(fused.weight.grad, reference.weight.grad)


def test_unbuildable_kernel_warns_once_and_falls_back(monkeypatch, caplog, tmp_path) -> None:
    from torch.utils import cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: error: no such compiler")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there yet
    monkeypatch.setattr(cpp_extension, "load", fail)
    kernels._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"):
            norm, x = _norm(8), torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)
            reference = copy.deepcopy(norm)
            for _ in range(2):
                y = batchnorm_relu(norm, x)
        warnings = [r for r in caplog.records if "could not be built" in r.getMessage()]
        assert len(warnings) == 1 and "no such compiler" in warnings[0].getMessage()
        reference(x)
        assert torch.equal(y, torch.relu(reference(x)))
        # The error's line, for a test's skip reason.
        message = "Error building extension: c++: error: no such compiler"
        assert kernels.kernels_available() == (False, message)
    finally:
        kernels._load.cache_clear()


@pytest.mark.parametrize("check", ["_fusable", "_conv_fusable"], ids=["batchnorm_relu", "conv3x3"])
def test_segmenter_training_step_matches_pytorch_kernels(kernel, monkeypatch, check: str) -> None:
    # The whole model: one training step (checkpointed, all T steps) and inference give the same
    # loss, gradients, running statistics and masks with each kernel as with PyTorch's (the
    # kernel's check refuses every input). The tiny net's last box layer and second attention
    # layer are 4 -> 8 channel convolutions.
    from tests.helpers import tiny_batch, tiny_segmenter

    batch = tiny_batch()
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(kernels, check, lambda *args: False)
        torch.manual_seed(0)
        module = tiny_segmenter()
        monkeypatch.setattr(module, "log", lambda *a, **k: None)
        monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
        module.train()
        loss = module.training_step(batch, 0)
        loss.backward()
        net = module.net
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
        module.eval()
        masks = net.predict(batch["image"], threshold=0.0)["masks"]
        results.append((loss.detach(), grads, stats, masks))
    (loss_a, grads_a, stats_a, masks_a), (loss_b, grads_b, stats_b, masks_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    for name, grad in grads_a.items():  # atol: conv biases before BatchNorm have 0 gradient
        torch.testing.assert_close(grad, grads_b[name], atol=1e-5, rtol=1e-3, msg=name)
    for key, value in stats_a.items():
        torch.testing.assert_close(value, stats_b[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(masks_a, masks_b, atol=1e-5, rtol=1e-4)


# The 3x3 convolution to 8 channels (csrc/conv3x3.cpp).


def _conv(in_channels: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, 8, 3, padding=1).to(memory_format=CL)


def test_conv3x3_hand_computed(kernel) -> None:
    # A 3x3 image of ones, output channel co's weights all co + 1, bias co: each output pixel
    # sums the taps inside the image, 4 at a corner, 6 on an edge, 9 in the middle.
    conv = _conv(1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 9.0).view(8, 1, 1, 1).expand(8, 1, 3, 3))
        conv.bias.copy_(torch.arange(8.0))
    x = torch.ones(1, 1, 3, 3).contiguous(memory_format=CL)
    y = kernels.conv3x3(conv, x)
    inside = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]])
    expected = torch.arange(1.0, 9.0).view(8, 1, 1) * inside + torch.arange(8.0).view(8, 1, 1)
    assert torch.equal(y[0], expected)
    # Gradient of output channel 2 alone: tap (kh, kw) of the weight sees as many image pixels as
    # there are outputs whose window puts that tap inside the image: the same 4 / 6 / 9 pattern.
    grad_y = torch.zeros(1, 8, 3, 3)
    grad_y[0, 2] = 1.0
    y.backward(grad_y)
    assert torch.equal(conv.weight.grad[2, 0], inside)
    assert conv.weight.grad[[0, 1, 3, 4, 5, 6, 7]].abs().sum() == 0
    assert torch.equal(conv.bias.grad, torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    "in_channels, height, width",
    # 8 input channels: the input gradient runs on the kernel too. Widths 1, 2 (edges only) to
    # 21 (two blocks of 8 interior pixels and a remainder); 13 channels: a remainder of taps.
    [(8, 5, 21), (8, 1, 1), (8, 3, 2), (4, 7, 10), (1, 2, 9), (13, 4, 12)],
)
def test_conv3x3_matches_conv2d(kernel, in_channels: int, height: int, width: int) -> None:
    conv = _conv(in_channels)
    reference = copy.deepcopy(conv)
    x = torch.randn(2, in_channels, height, width).contiguous(memory_format=CL)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, expected = kernels.conv3x3(conv, xa), reference(xb)
    assert y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    expected.backward(grad_y)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(conv.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-5)
    # The weight gradient has the weight's (channels-last) layout, as conv2d gives it.
    assert conv.weight.grad.stride() == conv.weight.stride()


def test_conv3x3_does_not_depend_on_the_thread_count(kernel) -> None:
    # The weight gradient adds fixed blocks of rows in order.
    conv = _conv(8)
    x = torch.randn(3, 8, 37, 23).contiguous(memory_format=CL).requires_grad_()
    grad_y = torch.randn(3, 8, 37, 23)

    def run() -> tuple[torch.Tensor, ...]:
        conv.zero_grad()
        x.grad = None
        y = kernels.conv3x3(conv, x)
        y.backward(grad_y)
        return y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()

    two, one = _on_2_then_1_thread(run)
    assert all(torch.equal(a, b) for a, b in zip(two, one, strict=True))  # bit for bit


@pytest.mark.parametrize(
    "case", ["disabled", "sixteen_out", "stride_2", "no_bias", "bfloat16", "autocast", "reflect"]
)
def test_conv3x3_other_inputs_fall_back_to_pytorch(kernel, monkeypatch, case: str) -> None:
    # Everything the kernel does not take calls the module itself: exactly conv2d's values.
    conv_args: dict = {"padding": 1}
    out, dtype = 8, torch.float32
    if case == "disabled":
        monkeypatch.setattr(kernels, "ENABLED", False)
    elif case == "sixteen_out":
        out = 16
    elif case == "stride_2":
        conv_args["stride"] = 2
    elif case == "no_bias":
        conv_args["bias"] = False
    elif case == "bfloat16":
        dtype = torch.bfloat16
    elif case == "reflect":
        conv_args["padding_mode"] = "reflect"
    torch.manual_seed(0)
    conv = nn.Conv2d(4, out, 3, **conv_args).to(dtype)
    x = torch.randn(2, 4, 6, 6, dtype=dtype)
    monkeypatch.setattr(kernels._Conv3x3, "apply", None)  # would fail if called
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        y, expected = kernels.conv3x3(conv, x), conv(x)
    assert torch.equal(y, expected) and y.dtype == expected.dtype


def test_conv3x3_kernel_rejects_bad_tensors(kernel) -> None:
    taps, bias = torch.zeros(3, 12, 8), torch.zeros(8)
    with pytest.raises(RuntimeError, match="channels-last"):
        kernel.conv3x3_forward(torch.zeros(1, 4, 3, 5), taps, bias)
    with pytest.raises(RuntimeError, match=r"\(3, 3 C, 8\)"):
        kernel.conv3x3_forward(
            torch.zeros(1, 4, 3, 5).contiguous(memory_format=CL), taps[:, :6], bias
        )
    with pytest.raises(RuntimeError, match="8 channels"):
        kernel.conv3x3_weight_grad(
            torch.zeros(1, 4, 3, 5).contiguous(memory_format=CL),
            torch.zeros(1, 4, 3, 5).contiguous(memory_format=CL),
        )
