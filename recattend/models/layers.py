"""Small building blocks shared by the networks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# Columns of the wide view used by :class:`BatchNormReLU2d`'s channels-last CPU path: the (M, C)
# memory of a channels-last activation with C = 1-8 float32 channels is seen as an (M C / K, K)
# matrix with K = 64 columns (column j holds channel j mod C), so that per-channel statistics are
# ordinary column sums and per-channel scaling runs on rows of whole AVX-512 vectors (16 floats);
# per-column sums are folded back into the C channels.
WIDE_COLUMNS = 64


def kaiming_init_(module: nn.Module) -> None:
    """He-normal weights (fan-out, ReLU) and zero biases for every conv and deconv of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _wide(x: Tensor, columns: int) -> Tensor:
    """(N, C, H, W) channels-last contiguous -> (N H W C / columns, columns) view of its memory."""
    return x.permute(0, 2, 3, 1).reshape(-1, columns)


def _unwide(wide: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`_wide`: (rows, columns) -> (N, C, H, W) = ``shape``, channels-last."""
    n, c, h, w = shape
    return wide.view(n, h, w, c).permute(0, 3, 1, 2)


def _fold(per_column: Tensor, channels: int) -> Tensor:
    """(columns,) per-column sums -> (channels,) per-channel sums."""
    return per_column.view(-1, channels).sum(0)


class _BatchNormReLUFunction(torch.autograd.Function):
    """Training-mode BatchNorm (batch statistics), then ReLU, on wide views of the memory.

    forward(x (N, C, H, W) channels-last contiguous, weight (C,), bias (C,), eps, columns)
    -> (y (N, C, H, W) channels-last, mean (C,), biased variance (C,)). ``columns`` is a multiple
    of C dividing x.numel(). Mean and variance are outputs for the running statistics only: they
    are not differentiable, their effect on y is part of dL/dx.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float, columns: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        repeats = columns // channels
        xw = _wide(x, columns)
        n = xw.shape[0] * repeats  # values per channel: N H W
        mean = _fold(xw.sum(0), channels) / n
        # Two passes (mean, then squared deviations) like PyTorch's kernels, accurate even when
        # |mean| >> std; the backward pass needs the centred input, saved instead of x.
        centred = xw - mean.repeat(repeats)
        var = _fold(torch.linalg.vecdot(centred, centred, dim=0), channels) / n
        invstd = torch.rsqrt(var + eps)
        y = torch.addcmul(bias.repeat(repeats), centred, (weight * invstd).repeat(repeats))
        y.clamp_min_(0.0)  # the ReLU, in place: no second output buffer
        ctx.save_for_backward(centred, y, weight, invstd)
        ctx.mark_non_differentiable(mean, var)
        return _unwide(y, x.shape), mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_y: Tensor, _grad_mean: Tensor | None, _grad_var: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        centred, y, weight, invstd = ctx.saved_tensors
        rows, columns = centred.shape
        channels = weight.shape[0]
        repeats = columns // channels
        n = rows * repeats
        g = _wide(grad_y.contiguous(memory_format=torch.channels_last), columns)
        g = torch.ops.aten.threshold_backward(g, y, 0.0)  # ReLU: g where y > 0, else 0
        grad_bias = _fold(g.sum(0), channels)
        grad_weight = _fold(torch.linalg.vecdot(g, centred, dim=0), channels) * invstd  # sum g x^
        # dL/dx = w invstd (g - mean(g) - x^ mean(g x^)) with x^ = (x - mean) invstd, written as
        # a g + b (x - mean) + c with per-channel a, b, c: two passes over memory.
        a = weight * invstd
        b = -a * invstd * grad_weight / n
        c = -a * grad_bias / n
        grad_x = torch.addcmul(c.repeat(repeats), centred, b.repeat(repeats))
        grad_x.addcmul_(g, a.repeat(repeats))
        shape = torch.Size((grad_y.shape[0], channels, *grad_y.shape[2:]))
        return _unwide(grad_x, shape), grad_weight, grad_bias, None, None


class BatchNormReLU2d(nn.BatchNorm2d):
    """``relu(BatchNorm2d(x))``, with a wide-view path for narrow channels-last CPU activations.

    Exactly :class:`torch.nn.BatchNorm2d` (same parameters, buffers and state_dict keys; batch
    statistics with the biased variance normalise, running statistics take the unbiased one with
    ``momentum``, read at every call so it may be changed at run time; ``num_batches_tracked``
    counts calls), followed by an in-place ReLU.

    Why a second path: PyTorch's channels-last CPU kernels (``batch_norm_kernel.cpp``) reduce
    over pixels into one row of C accumulators per thread, stored after every pixel. When a row is
    narrower than a 64-byte cache line (C = 8 float32: the 224x224 layers of the box CNN), the
    threads' rows share one line, which then moves between cores at every pixel (false sharing);
    one thread is unaffected. The wide-view path (:class:`_BatchNormReLUFunction`, see
    ``WIDE_COLUMNS``) reduces with ordinary column sums instead, and fuses the ReLU into the
    normalisation and its backward pass. With one thread the native kernel is faster (the wide
    path measured 0.86x forward, 0.80x backward at (5, 8, 224, 224)), so by default
    (``wide_path = None``) the wide path runs only where false sharing is possible: training-mode
    batch statistics on a contiguous channels-last float32/float64 CPU input with rows under 64
    bytes and more than one intra-op thread. ``wide_path = True`` takes it whenever the input
    allows (tests), ``False`` never. Anything else (evaluation mode, NCHW, CUDA, half precision,
    no affine parameters) runs the parent's forward, then ReLU.

    Use :func:`batchnorm_relu` to call it: a SyncBatchNorm conversion replaces this module by a
    plain :class:`torch.nn.SyncBatchNorm`, which has no ReLU.

    Shapes: (N, C, H, W) -> (N, C, H, W), same memory format.
    """

    wide_path: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        columns = self._wide_columns(x)
        if columns is None:
            return torch.relu_(super().forward(x))
        # Same bookkeeping as _BatchNorm.forward: count the batch, momentum None = cumulative mean.
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        y, mean, var = _BatchNormReLUFunction.apply(x, self.weight, self.bias, self.eps, columns)
        n = x.numel() // x.shape[1]
        with torch.no_grad():  # as the CPU kernel: factor * stat + (1 - factor) * running
            self.running_mean.copy_(factor * mean + (1 - factor) * self.running_mean)
            self.running_var.copy_(factor * var * (n / (n - 1)) + (1 - factor) * self.running_var)
        return y

    def _wide_columns(self, x: Tensor) -> int | None:
        """Columns of the wide view when the wide path is to run on ``x``, else None."""
        if self.wide_path is False or not (
            self.training
            and self.track_running_stats
            and self.affine
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.numel() > x.shape[1]  # one value per channel: the parent raises
        ):
            return None
        channels = x.shape[1]
        if self.wide_path is None and (
            channels * x.element_size() >= 64 or torch.get_num_threads() == 1
        ):
            return None  # no false sharing in the native kernel (class docstring)
        # The widest multiple of C up to WIDE_COLUMNS that tiles the N H W pixels.
        return channels * math.gcd(x.numel() // channels, max(1, WIDE_COLUMNS // channels))


def batchnorm_relu(norm: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``: one fused call for :class:`BatchNormReLU2d`, else norm then ReLU.

    Any other BatchNorm (e.g. the :class:`torch.nn.SyncBatchNorm` that Lightning's
    ``sync_batchnorm`` substitutes for a :class:`BatchNormReLU2d`) gets the ReLU here.
    """
    if isinstance(norm, BatchNormReLU2d):
        return norm(x)
    return torch.relu_(norm(x))


class ConvBlock(nn.Sequential):
    """3x3 conv (stride 1, same padding) -> BatchNorm -> ReLU -> optional max-pool.

    Shapes: (B, C_in, H, W) -> (B, C_out, H / pool, W / pool).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)
        if pool > 1:
            self.pool = nn.MaxPool2d(pool)


class DeconvBlock(nn.Sequential):
    """3x3 transposed conv with stride = unpool factor, then BatchNorm -> ReLU unless ``final``.

    Shapes: (B, C_in, H, W) -> (B, C_out, H * unpool, W * unpool).
    """

    def __init__(
        self, in_channels: int, out_channels: int, unpool: int = 1, final: bool = False
    ) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=unpool, padding=1, output_padding=unpool - 1
        )
        if not final:
            self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
            self.relu = nn.ReLU(inplace=True)
