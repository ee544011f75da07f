"""Convolution stacks whose weights are shared over the T timesteps of the recurrent segmenter
while each timestep has its own BatchNorm (as in the authors' code): the box network's CNN, and the
segmentation network's CNN and D-CNN. Their BatchNorm + ReLU and small convolutions run on the CPU
fast path (:mod:`recattend.ops`) where it applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recattend.ops import batchnorm_relu, conv3x3, recomputed


class TimestepConvStack(nn.Module):
    """3x3 convs shared over timesteps, each followed by a per-timestep BatchNorm, ReLU, max-pool.

    With ``recompute_full_resolution`` set (training memory, see
    :class:`~recattend.lit.segmenter.SegmenterModule`'s ``recompute``), the layers at the
    input resolution (:attr:`full_resolution_layers`) keep no activations when gradients are on:
    the backward pass recomputes them.

    Shapes: (B, C_in, H, W) and step t -> list of every layer's output, the last one
    (B, channels[-1], H / prod(pools), W / prod(pools)).
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], pools: Sequence[int], steps: int
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, channels, strict=False)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(c, eps=1e-3) for c in channels) for _ in range(steps)
        )
        self.pools = list(pools)
        self.stride = math.prod(pools)
        self.recompute_full_resolution = False

    @property
    def full_resolution_layers(self) -> int:
        """How many layers run at the input resolution (up to and with the first pooling)."""
        return next((i + 1 for i, pool in enumerate(self.pools) if pool > 1), len(self.pools))

    def forward(self, x: Tensor, t: int) -> list[Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # see RecurrentSegmenter: ~1.5x on CPU
        if not (self.recompute_full_resolution and torch.is_grad_enabled()):
            return self._layers(x, t, 0, len(self.convs))
        head = self.full_resolution_layers
        outs = self._recomputed_layers(x, t, head)
        return outs + self._layers(outs[-1], t, head, len(self.convs))

    # Dynamo cannot trace a checkpoint that restores BatchNorm statistics: under torch.compile these
    # layers run eagerly (a graph break), the rest of the step compiled.
    @torch.compiler.disable
    def _recomputed_layers(self, x: Tensor, t: int, stop: int) -> list[Tensor]:
        """Layers 0..stop-1 at step t, recomputed in the backward pass."""
        return recomputed(self._layers, self.norms[t][:stop], x, t, 0, stop)

    def _layers(self, x: Tensor, t: int, first: int, stop: int) -> list[Tensor]:
        """Layers first..stop-1 at step t; every layer's output."""
        outs = []
        for i in range(first, stop):
            x = batchnorm_relu(self.norms[t][i], conv3x3(self.convs[i], x), self.pools[i])
            outs.append(x)
        return outs


class TimestepDeconvStack(nn.Module):
    """3x3 transposed convs (stride = unpool factor), per-timestep BatchNorm, ReLU on every layer.

    Skip input i (or None) is concatenated on channels before layer i.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        unpools: Sequence[int],
        skip_channels: Sequence[int],
        steps: int,
    ) -> None:
        super().__init__()
        layers, width = [], in_channels
        for out, unpool, skip in zip(channels, unpools, skip_channels, strict=True):
            layers.append(
                nn.ConvTranspose2d(
                    width + skip, out, 3, stride=unpool, padding=1, output_padding=unpool - 1
                )
            )
            width = out
        self.deconvs = nn.ModuleList(layers)
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(c, eps=1e-3) for c in channels) for _ in range(steps)
        )

    def forward(self, x: Tensor, skips: Sequence[Tensor | None], t: int) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for deconv, norm, skip in zip(self.deconvs, self.norms[t], skips, strict=True):
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = batchnorm_relu(norm, deconv(x))
        return x
