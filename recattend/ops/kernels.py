"""CPU kernels for the networks' small-channel layers, with PyTorch's kernels as the fallback.

Both run on channels-last float32 CPU tensors, built from ``csrc/`` by
:mod:`torch.utils.cpp_extension` (~1 min once, then cached; a C++ compiler and ninja are needed,
otherwise one warning and PyTorch's kernels) when :func:`recattend.ops.configure` switches the fast
path on, or else on first use:

* :func:`batchnorm_relu`: BatchNorm (batch or running statistics) fused with ReLU and, optionally,
  the 2x2 max-pooling after it;
* :func:`conv3x3`: a 3x3, stride-1, zero-padded convolution to 8 channels, the box CNN's layers at
  the input resolution (the largest in a step) and the attention CNN's first layers.

``recattend.ops.configure(fast_path=False)`` (which clears :data:`ENABLED`) makes both call
PyTorch's kernels; :func:`kernels_available` says whether the compiled kernels can run here.

How the extension is built and cached, and why no lock can block a run: :mod:`recattend.ops.build`.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from recattend.ops.build import BuildLockTimeoutError, extension_name, load_extension

log = logging.getLogger(__name__)

ENABLED = True
"""Whether the compiled kernels may be used; set by :func:`recattend.ops.configure` only."""
_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / name for name in ("bindings.cpp", "batchnorm_relu.cpp", "conv3x3.cpp")]
_EXTENSION = "recattend_cpu_kernels"


def _flags() -> tuple[list[str], list[str]]:
    """The compiler and linker flags of the kernels on this machine."""
    flags, link = ["-O3"], []
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += ["-mavx2", "-mfma"]
    # OpenMP threads (csrc/kernels.h: parallel_tasks), as PyTorch's own CPU ops use; the process
    # already holds PyTorch's libgomp, which the extension then shares. Elsewhere: one thread.
    if platform.system() == "Linux" and torch.backends.openmp.is_available():
        flags, link = [*flags, "-fopenmp"], ["-fopenmp"]
    else:
        flags.append("-fopenmp-simd")
    return flags, link


def _hashed_files() -> list[Path]:
    """Every file the build reads from ``csrc/``: the sources and the headers they include."""
    return sorted(p for p in _CSRC.iterdir() if p.suffix in (".cpp", ".h", ".hpp"))


def extension() -> str:
    """The kernels' extension name on this machine (:func:`recattend.ops.build.extension_name`)."""
    return extension_name(_hashed_files(), *_flags(), prefix=_EXTENSION)


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    """The compiled kernels and ``""``, or None (with one warning) and why they cannot be built."""
    try:
        return load_extension(extension(), _SOURCES, *_flags()), ""
    except BuildLockTimeoutError as error:
        log.warning("%s; using PyTorch's kernels (training on CPU is about 1.15x slower)", error)
        return None, str(error)
    except Exception as error:  # no compiler, no ninja, ...: PyTorch's kernels still work
        lines = str(error).splitlines() or [type(error).__name__]
        # The compiler's own message ("error: ...") rather than ninja's summary.
        reason = next(
            (line for line in lines if "error:" in line.lower()),
            next((line for line in lines if "error" in line.lower()), lines[0]),
        )[:300]
        log.warning(
            "The CPU kernels could not be built (%s); using PyTorch's kernels: training on CPU "
            "is about 1.15x slower. They need a C++ compiler and ninja.",
            reason,
        )
        return None, reason


def _kernel() -> ModuleType | None:
    """The compiled kernels, or None where they cannot be built (see :func:`_load`)."""
    return _load()[0]


def kernels_available() -> tuple[bool, str]:
    """Whether the compiled kernels can run here: ``(True, "")``, or ``(False, reason)`` with the
    build's error (e.g. no C++ compiler). The first call builds or loads them (see the module
    docstring); the fast path's switch does not enter into it."""
    kernel, reason = _load()
    return kernel is not None, reason


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) with batch statistics, then a ``pool`` x ``pool`` max-pooling (1: none),
    forward and backward on the kernel (see :func:`batchnorm_relu`)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, shift: Tensor, eps: float, pool: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, var = _kernel().forward_train(x, weight, bias, shift, eps, pool)
        ctx.save_for_backward(x, mean, var, weight, bias)
        ctx.eps, ctx.pool = eps, pool
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, mean, var, weight, bias = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = _kernel().backward_train(
            grad_y, x, mean, var, weight, bias, ctx.eps, ctx.pool
        )
        return grad_x, grad_weight, grad_bias, None, None, None


def _fusable(norm: nn.Module, x: Tensor, pool: int) -> bool:
    """Whether ``max_pool2d(relu(norm(x)), pool)`` can run on the fused kernel."""
    if not ENABLED:  # before reading shapes, which a TorchScript trace would record as constants
        return False
    channels = x.shape[1] if x.dim() == 4 else 0
    lanes = 16 if channels <= 16 else (32 if channels <= 32 else 64)
    return (
        type(norm) is nn.BatchNorm2d  # not e.g. the SyncBatchNorm that DDP substitutes
        and norm.affine
        and norm.track_running_stats
        and x.dim() == 4
        and (pool == 1 or (pool == 2 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0))
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


def batchnorm_relu(norm: nn.BatchNorm2d, x: Tensor, pool: int = 1) -> Tensor:
    """``max_pool2d(relu(norm(x)), pool)`` for a 2-D BatchNorm (``pool`` 1: no pooling), with the
    same statistics, buffers and gradients.

    On channels-last float32 CPU activations it runs the fused kernel (``csrc/batchnorm_relu.cpp``):
    two passes over memory forward and two backward where PyTorch's BatchNorm and ReLU take about
    twice as many, and PyTorch's channels-last kernels are several times slower still at C = 8
    (measured at (5, 8, 224, 224) on 2 cores: 0.7 vs 3.9 ms forward, 1.0 vs 6.9 ms backward).
    With ``pool`` 2 the pooling happens in the same passes: neither the full-size ReLU output nor
    pooling indices are stored, and the gradient reaches each window's first maximum, as with
    PyTorch's max_pool2d. Running statistics follow :class:`torch.nn.BatchNorm2d` (momentum, or a
    cumulative average when it is None; the unbiased variance). Anything else -- CUDA, bfloat16,
    a SyncBatchNorm, evaluation mode with gradients enabled, compiled code, other pooling, no
    compiler, the fast path switched off -- calls ``norm``, an in-place ReLU and ``max_pool2d``.

    Shapes: (N, C, H, W) -> (N, C, H / pool, W / pool), channels-last on the fused path.
    """
    if not _fusable(norm, x, pool):
        y = torch.relu_(norm(x))
        return nn.functional.max_pool2d(y, pool) if pool > 1 else y
    x = x.contiguous(memory_format=torch.channels_last)
    if not norm.training:
        return _kernel().forward_eval(
            x, norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps, pool
        )
    # The kernel sums x - shift and its square in one pass: shifting by a sample's mean (the middle
    # image row) keeps that variance accurate however far the mean is from 0.
    shift = x.detach()[:, :, x.shape[2] // 2].mean((0, 2))
    y, mean, var = _BatchNormReLU.apply(x, norm.weight, norm.bias, shift, norm.eps, pool)
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        count = x.numel() // x.shape[1]
        norm.running_mean.lerp_(mean, factor)
        norm.running_var.lerp_(var * (count / (count - 1)), factor)
    return y


def _taps(weight: Tensor) -> Tensor:
    """(8, C, 3, 3) conv weight -> (3, 3 C, 8): taps[kh][kw C + ci][co] (csrc/kernels.h)."""
    return weight.permute(2, 3, 1, 0).reshape(3, -1, weight.shape[0]).contiguous()


class _Conv3x3(torch.autograd.Function):
    """conv2d(x, weight, bias, padding=1) to 8 channels on the kernel (see :func:`conv3x3`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _kernel().conv3x3_forward(x, _taps(weight), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if x.shape[1] == 8:
                # The input gradient is the 3x3 convolution of grad_y with the weight flipped in
                # space and transposed in channels: the forward kernel once more.
                flipped = _taps(weight.flip(2, 3).transpose(0, 1))
                grad_x = _kernel().conv3x3_forward(grad_y, flipped, grad_y.new_zeros(8))
            else:
                grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_y, padding=1)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            taps_grad, grad_bias = _kernel().conv3x3_weight_grad(x, grad_y)
            # Back to (8, C, 3, 3), in the weight's own layout (as PyTorch's convolution gives).
            grad_weight = torch.empty_like(weight).copy_(
                taps_grad.view(3, 3, x.shape[1], 8).permute(3, 2, 0, 1)
            )
        return grad_x, grad_weight, grad_bias


def _conv_fusable(conv: nn.Module, x: Tensor) -> bool:
    """Whether ``conv(x)`` can run on the 3x3 kernel."""
    return (
        ENABLED
        and type(conv) is nn.Conv2d
        and conv.out_channels == 8
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.bias is not None
        and x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")  # bf16 autocast: PyTorch's bf16 convolution
        and not torch.compiler.is_compiling()
        and _kernel() is not None
    )


def conv3x3(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a 3x3, stride-1, zero-padded conv to 8 channels, same values and gradients.

    On float32 CPU tensors it runs ``csrc/conv3x3.cpp``: at the box CNN's 224x224 layers (batch
    5) about 1.6x (forward) and 1.7-2.2x (backward) faster than PyTorch's oneDNN convolution on
    one core, 1.4x on two. Anything else -- other shapes, CUDA, autocast, compiled code, no
    compiler, the fast path switched off -- calls ``conv``.

    Shapes: (N, C, H, W) -> (N, 8, H, W), channels-last on the kernel.
    """
    if not _conv_fusable(conv, x):
        return conv(x)
    x = x.contiguous(memory_format=torch.channels_last)
    return _Conv3x3.apply(x, conv.weight, conv.bias)
