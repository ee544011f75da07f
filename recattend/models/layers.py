"""Small building blocks shared by the networks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
