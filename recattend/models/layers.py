"""Small building blocks shared by the networks."""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

# The fused BatchNorm + ReLU CPU kernel (csrc/batchnorm_relu.cpp), built on first use by
# torch.utils.cpp_extension (~30 s once, then cached). Set to False to always use PyTorch's kernels.
FUSED_BATCHNORM_RELU = True
_SOURCE = Path(__file__).parent / "csrc" / "batchnorm_relu.cpp"
_EXTENSION = "recattend_batchnorm_relu"


@functools.cache
def _kernel() -> ModuleType | None:
    """The compiled kernel, or None (with one warning) where it cannot be built."""
    from torch.utils import cpp_extension

    flags = ["-O3", "-fopenmp-simd"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += ["-mavx2", "-mfma"]
    log.info("Loading the fused BatchNorm+ReLU CPU kernel (the first build takes ~30 s)")
    lock = Path(cpp_extension._get_build_directory(_EXTENSION, verbose=False)) / "lock"
    if lock.exists():  # torch waits for it without a word
        log.warning(
            "Waiting for %s: another process is building the BatchNorm+ReLU kernel, or a killed "
            "build left it behind; if nothing happens, remove it and start again.",
            lock,
        )
    try:
        return cpp_extension.load(_EXTENSION, [str(_SOURCE)], extra_cflags=flags)
    except Exception as error:  # no compiler, no ninja, ...: PyTorch's kernels still work
        lines = str(error).splitlines() or [type(error).__name__]
        reason = next((line for line in lines if "error" in line.lower()), lines[0])
        log.warning(
            "The fused BatchNorm+ReLU CPU kernel could not be built (%s); using PyTorch's "
            "kernels: training on CPU is about 1.15x slower. It needs a C++ compiler and ninja.",
            reason[:300],
        )
        return None


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) with batch statistics, forward and backward on the kernel (see
    :func:`batchnorm_relu`)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, var = _kernel().forward_train(x, weight, bias, shift, eps)
        ctx.save_for_backward(x, mean, var, weight, bias)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, mean, var, weight, bias = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = _kernel().backward_train(
            grad_y, x, mean, var, weight, bias, ctx.eps
        )
        return grad_x, grad_weight, grad_bias, None, None


def _fusable(norm: nn.Module, x: Tensor) -> bool:
    """Whether ``relu(norm(x))`` can run on the fused kernel."""
    channels = x.shape[1] if x.dim() == 4 else 0
    lanes = 16 if channels <= 16 else (32 if channels <= 32 else 64)
    return (
        FUSED_BATCHNORM_RELU
        and type(norm) is nn.BatchNorm2d  # not e.g. the SyncBatchNorm that DDP substitutes
        and norm.affine
        and norm.track_running_stats
        and x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32  # bf16 autocast: PyTorch's mixed-type kernels
        and x.numel() > channels
        and lanes % channels == 0
        and x.numel() % lanes == 0
        # Evaluation mode uses a forward-only kernel: with gradients wanted, PyTorch's path.
        and (norm.training or not torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and _kernel() is not None
    )


def batchnorm_relu(norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``relu(norm(x))`` for a 2-D BatchNorm, with the same statistics, buffers and gradients.

    On channels-last float32 CPU activations it runs the fused kernel (``csrc/batchnorm_relu.cpp``):
    two passes over memory forward and two backward where PyTorch's BatchNorm and ReLU take about
    twice as many, and PyTorch's channels-last kernels are several times slower still at C = 8
    (measured at (5, 8, 224, 224) on 2 cores: 0.7 vs 3.9 ms forward, 1.0 vs 6.9 ms backward).
    Running statistics follow :class:`torch.nn.BatchNorm2d` (momentum, or a cumulative average
    when it is None; the unbiased variance). Anything else -- CUDA, bfloat16, a SyncBatchNorm,
    evaluation mode with gradients enabled, compiled code, no compiler -- calls ``norm`` and then
    an in-place ReLU.

    Shapes: (N, C, H, W) -> (N, C, H, W), channels-last on the fused path.
    """
    if not _fusable(norm, x):
        return torch.relu_(norm(x))
    x = x.contiguous(memory_format=torch.channels_last)
    if not norm.training:
        return _kernel().forward_eval(
            x, norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
        )
    # The kernel sums x - shift and its square in one pass: shifting by a sample's mean (the middle
    # image row) keeps that variance accurate however far the mean is from 0.
    shift = x.detach()[:, :, x.shape[2] // 2].mean((0, 2))
    y, mean, var = _BatchNormReLU.apply(x, norm.weight, norm.bias, shift, norm.eps)
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        count = x.numel() // x.shape[1]
        norm.running_mean.lerp_(mean, factor)
        norm.running_var.lerp_(var * (count / (count - 1)), factor)
    return y


@contextlib.contextmanager
def restored_batchnorm_stats(norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Batch statistics still normalise, but the running averages of ``norms`` and their batch
    counters are put back afterwards, so a recomputation leaves them as the first pass did.

    The recomputation runs exactly the computation of the first pass (switching momentum off
    would not), which compiled step functions need: checkpointing checks that both save the same
    tensors, and Dynamo would compile a second graph for another momentum.
    """
    saved = [
        [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for live, kept in zip(
                    (m.running_mean, m.running_var, m.num_batches_tracked), buffers, strict=True
                ):
                    live.copy_(kept)


def recomputed(
    function: Callable[..., Any], norms: Sequence[nn.modules.batchnorm._BatchNorm], *args: Any
) -> Any:
    """``function(*args)`` under activation checkpointing: only its inputs and outputs are kept
    and the backward pass recomputes the rest; the running statistics of the BatchNorm layers
    ``norms`` are restored after the recomputation, so they move once per forward pass.

    ``function`` must draw no random numbers: the RNG state is not replayed (the parallel
    backward's threads, :mod:`recattend.lit.step_backward`, would restore it concurrently).
    """
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), restored_batchnorm_stats(norms)),
    )


def kaiming_init_(module: nn.Module) -> None:
    """He-normal weights (fan-out, ReLU) and zero biases for every conv and deconv of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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
