"""The FCN pre-processor (paper section 2 "Input pre-processing", Figure 3).

An encoder of :class:`ConvBlock` s with max-pooling and a DeconvNet-style decoder of
:class:`DeconvBlock` s with skip connections, predicting per pixel a foreground logit (or semantic
class logits) and 8 angle-class logits (the angle of the pixel to its instance centroid, see
:func:`recattend.data.targets.angle_classes`). Sizes follow the authors' ``fg_model.py``
(reference/original-system.md section 1.2); the defaults are a small network for the synthetic data.

Skip rule: before a decoder layer flagged in ``decoder_skips``, the decoder input is concatenated
with the last encoder activation at the same resolution, or with the input image at full
resolution. This reproduces the reference's KITTI and Cityscapes skip wiring (e.g. KITTI's decoder
layer 1 takes h16, the last encoder output at stride 16, and layer 10 the RGB input).

Deliberate difference: weights start He-normal, not truncated N(0, 0.01) as in the reference. The
reference trained this FCN with momentum SGD; with Adam, weights of scale 0.01 change by ~10% per
step, BatchNorm running statistics lag behind the weights, and evaluation-mode outputs degrade
(measured: foreground BCE 0.007 in training mode vs 0.21 in evaluation mode after 1000 steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from recattend.data.targets import NUM_ANGLE_CLASSES
from recattend.models.layers import ConvBlock, DeconvBlock, kaiming_init_


class Preprocessor(nn.Module):
    """Foreground (or semantic) and angle maps from an image.

    Args:
        in_channels: input channels (3 for RGB).
        encoder_channels: output channels of each encoder layer.
        encoder_pools: max-pool factor after each encoder layer (1 = none).
        decoder_channels: output channels of each decoder layer but the last, whose width is
            given by the heads (foreground or semantic classes, plus 8 angle classes).
        decoder_unpools: stride of each decoder layer, one more entry than ``decoder_channels``.
        decoder_skips: per decoder layer, whether a skip connection enters before it.
        num_classes: 0 for a 1-channel foreground logit; K > 0 for background + K semantic classes.
        angles: predict the 8-way angle map (off for the ``no_angle`` ablation).

    Shapes:
        input (B, in_channels, H, W) float32, H and W divisible by :attr:`stride`.
        output dict: ``foreground`` (B, 1, H, W) logits when ``num_classes == 0``, else
        ``semantic`` (B, K + 1, H, W) logits; ``angles`` (B, 8, H, W) logits when ``angles``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        encoder_channels: Sequence[int] = (16, 16, 32, 32, 64, 64),
        encoder_pools: Sequence[int] = (1, 2, 1, 2, 1, 2),
        decoder_channels: Sequence[int] = (64, 32, 32, 16, 16),
        decoder_unpools: Sequence[int] = (2, 1, 2, 1, 2, 1),
        decoder_skips: Sequence[bool] = (False, True, False, True, False, True),
        num_classes: int = 0,
        angles: bool = True,
    ) -> None:
        super().__init__()
        if len(encoder_pools) != len(encoder_channels):
            raise ValueError("encoder_pools needs one entry per encoder layer (encoder_channels)")
        if not len(decoder_unpools) == len(decoder_skips) == len(decoder_channels) + 1:
            raise ValueError(
                "decoder_unpools and decoder_skips need one entry per decoder layer: "
                "len(decoder_channels) + 1 (the last layer is the output layer)"
            )
        self.stride = math.prod(encoder_pools)
        if math.prod(decoder_unpools) != self.stride:
            raise ValueError(
                f"the decoder upsamples by {math.prod(decoder_unpools)} but the encoder "
                f"downsamples by {self.stride}: decoder_unpools must multiply to encoder_pools"
            )
        self.num_classes, self.angles = num_classes, angles
        self.head_channels = (num_classes + 1 if num_classes else 1) + (
            NUM_ANGLE_CLASSES if angles else 0
        )

        # Channels of the skip source at each stride: the last encoder output there, or the image.
        skip_width = {1: in_channels}
        self.encoder = nn.ModuleList()
        stride, width = 1, in_channels
        self._skip_layer: dict[int, int] = {}  # stride -> encoder layer whose output is the skip
        for i, (out, pool) in enumerate(zip(encoder_channels, encoder_pools, strict=True)):
            self.encoder.append(ConvBlock(width, out, pool))
            width, stride = out, stride * pool
            if stride > 1:
                self._skip_layer[stride] = i
                skip_width[stride] = out

        self.decoder = nn.ModuleList()
        self._skip_stride: list[int | None] = []
        outs = [*decoder_channels, self.head_channels]
        for i, (out, unpool, skip) in enumerate(
            zip(outs, decoder_unpools, decoder_skips, strict=True)
        ):
            if skip:
                if stride not in skip_width:
                    raise ValueError(f"decoder layer {i}: no encoder output at stride {stride}")
                width += skip_width[stride]
            self._skip_stride.append(stride if skip else None)
            self.decoder.append(DeconvBlock(width, out, unpool, final=i == len(outs) - 1))
            width, stride = out, stride // unpool
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is not divisible by the stride {self.stride}"
            )
        skips = {1: x}
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            for stride, index in self._skip_layer.items():
                if index == i:
                    skips[stride] = h
        for layer, stride in zip(self.decoder, self._skip_stride, strict=True):
            if stride is not None:
                h = torch.cat([h, skips[stride]], dim=1)
            h = layer(h)
        fg_channels = self.num_classes + 1 if self.num_classes else 1
        out = {"semantic" if self.num_classes else "foreground": h[:, :fg_channels]}
        if self.angles:
            out["angles"] = h[:, fg_channels:]
        return out

    def feature_channels(self, angles: bool = True) -> int:
        """Channels :meth:`features` returns."""
        return (self.num_classes + 1 if self.num_classes else 1) + (
            NUM_ANGLE_CLASSES if angles else 0
        )

    def features(self, x: torch.Tensor, angles: bool = True) -> torch.Tensor:
        """The segmenter's extra input channels (paper: the 9-channel pre-processed image).

        (B, C, H, W) -> (B, :meth:`feature_channels`, H, W) probabilities: the foreground
        probability (or the K + 1 semantic class probabilities), then, with ``angles``, the 8
        angle-class probabilities.

        Raises:
            ValueError: ``angles`` requested from a network without an angle head.
        """
        if angles and not self.angles:
            raise ValueError("this pre-processor has no angle head")
        out = self(x)
        channels = [out["semantic"].softmax(1) if self.num_classes else out["foreground"].sigmoid()]
        if angles:
            channels.append(out["angles"].softmax(1))
        return torch.cat(channels, 1)
