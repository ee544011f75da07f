"""The FCN pre-processor (paper section 2 "Input pre-processing", Figure 3).

An encoder of :class:`ConvBlock` s with max-pooling and a DeconvNet-style decoder of
:class:`DeconvBlock` s with skip connections, predicting per pixel a foreground logit (or semantic
class logits) and 8 angle-class logits (the angle of the pixel to its instance centroid, see
:func:`recattend.data.targets.angle_classes`). The layer pattern is that of the authors' FCN
(their KITTI and Cityscapes sizes are the ``experiment=kitti_preprocessor`` and
``experiment=cityscapes_preprocessor`` recipes); the defaults are a small network for the
synthetic data.

Skips: before some decoder layers the decoder input is concatenated (on channels) with an earlier
activation of the same resolution. Which one is chosen in one of two ways:

* ``decoder_skips`` alone (the default rule): the last encoder output at that resolution, or the
  input image at full resolution. This happens to be the authors' KITTI wiring (h16, h12, h4 and
  the image), and it is how every network trained before ``decoder_skip_sources`` existed is wired.
* ``decoder_skip_sources``: the source named per decoder layer, an encoder layer index or the
  image. The authors' Cityscapes FCN needs it: its skips take the first encoder output after each
  pooling (e.g. h16 at stride 32, where the last output at stride 32 is h18).

Here ``h_i`` is the output of encoder layer ``i`` (0-based), after its max-pooling if it has one.
Skips carry no parameters, so both ways give the same state_dict keys and shapes.

Initialisation (``module.net.init``, as the segmenter's ``model.segmenter.init``): by default
He-normal convolutions, not the authors' truncated N(0, 0.01) for every weight and bias
(``init: authors``). They trained this FCN with momentum SGD; with Adam, weights of scale 0.01
change by ~10% per step, BatchNorm running statistics lag behind the weights, and evaluation-mode
outputs degrade (measured: foreground BCE 0.007 in training mode vs 0.21 in evaluation mode after
1000 steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recattend.models.layers import ConvBlock, DeconvBlock, initialise_
from recattend.structures import NUM_ANGLE_CLASSES

IMAGE = -1
"""Skip source index of the input image (written ``-1`` or ``x`` in ``decoder_skip_sources``)."""


class Preprocessor(nn.Module):
    """Foreground (or semantic) and angle maps from an image.

    Args:
        in_channels: input channels (3 for RGB).
        encoder_channels: output channels of each encoder layer.
        encoder_pools: max-pool factor after each encoder layer (1 = none).
        decoder_channels: output channels of each decoder layer but the last, whose width is
            given by the heads (foreground or semantic classes, plus 8 angle classes).
        decoder_unpools: stride of each decoder layer, one more entry than ``decoder_channels``.
        decoder_skips: per decoder layer, whether a skip connection enters before it; the source
            is the last encoder output at the layer's resolution, or the image at full resolution.
            May be ``None`` when ``decoder_skip_sources`` is given; must agree with it otherwise.
        decoder_skip_sources: per decoder layer, ``None`` (no skip), an encoder layer index ``i``
            (its output ``h_i``), or ``-1`` / ``"x"`` (the input image). ``None`` for the whole
            argument: the rule of ``decoder_skips``.
        num_classes: 0 for a 1-channel foreground logit; K > 0 for background + K semantic classes.
        angles: predict the 8-way angle map (off for an FCN trained without angles).
        init: ``"kaiming"`` (He-normal convolutions and deconvolutions, zero biases) or
            ``"authors"`` (every conv and deconv weight and bias truncated N(0, 0.01) at
            +-2 std); BatchNorm starts at gamma 1, beta 0 either way
            (:func:`~recattend.models.layers.initialise_`, shared with the segmenter).

    Attributes:
        settings: the arguments as plain values, which rebuild this network (saved in
            checkpoints, also in a segmenter's that reads it).
        stride: the encoder's total down-sampling (product of ``encoder_pools``).
        skip_sources: per decoder layer, ``None``, an encoder layer index, or ``-1`` (the image),
            resolved from either argument.

    Shapes:
        input (B, in_channels, H, W) float32, H and W divisible by :attr:`stride`.
        output dict: ``foreground`` (B, 1, H, W) logits when ``num_classes == 0``, else
        ``semantic`` (B, K + 1, H, W) logits; ``angles`` (B, 8, H, W) logits when ``angles``.

    Raises:
        ValueError: inconsistent lengths or strides, an unknown skip source, a source whose
            resolution differs from that of the decoder layer receiving it, or an unknown
            ``init``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        encoder_channels: Sequence[int] = (16, 16, 32, 32, 64, 64),
        encoder_pools: Sequence[int] = (1, 2, 1, 2, 1, 2),
        decoder_channels: Sequence[int] = (64, 32, 32, 16, 16),
        decoder_unpools: Sequence[int] = (2, 1, 2, 1, 2, 1),
        decoder_skips: Sequence[bool] | None = (False, True, False, True, False, True),
        decoder_skip_sources: Sequence[int | str | None] | None = None,
        num_classes: int = 0,
        angles: bool = True,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.settings: dict[str, Any] = {
            "in_channels": int(in_channels),
            "encoder_channels": [int(c) for c in encoder_channels],
            "encoder_pools": [int(p) for p in encoder_pools],
            "decoder_channels": [int(c) for c in decoder_channels],
            "decoder_unpools": [int(u) for u in decoder_unpools],
            "decoder_skips": None if decoder_skips is None else [bool(f) for f in decoder_skips],
            "decoder_skip_sources": None
            if decoder_skip_sources is None
            else [s if s is None or isinstance(s, str) else int(s) for s in decoder_skip_sources],
            "num_classes": int(num_classes),
            "angles": bool(angles),
            "init": str(init),
        }
        num_decoder = len(decoder_channels) + 1
        if len(encoder_pools) != len(encoder_channels):
            raise ValueError("encoder_pools needs one entry per encoder layer (encoder_channels)")
        flags = decoder_skips
        if flags is None and decoder_skip_sources is None:
            raise ValueError("give decoder_skips or decoder_skip_sources (or both)")
        for name, entries in (
            ("decoder_unpools", decoder_unpools),
            ("decoder_skips", flags),
            ("decoder_skip_sources", decoder_skip_sources),
        ):
            if entries is not None and len(entries) != num_decoder:
                raise ValueError(
                    f"{name} has {len(entries)} entries: decoder_unpools, decoder_skips and "
                    "decoder_skip_sources need one entry per decoder layer: len(decoder_channels) "
                    f"+ 1 = {num_decoder} (the last layer is the output layer)"
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

        # Stride and width of every possible skip source: the image, then each h_i.
        source_stride, source_width = {IMAGE: 1}, {IMAGE: in_channels}
        self.encoder = nn.ModuleList()
        stride, width = 1, in_channels
        for i, (out, pool) in enumerate(zip(encoder_channels, encoder_pools, strict=True)):
            self.encoder.append(ConvBlock(width, out, pool))
            width, stride = out, stride * pool
            source_stride[i], source_width[i] = stride, out

        if decoder_skip_sources is None:
            sources = self._default_sources(flags, source_stride, stride, decoder_unpools)
        else:
            sources = [
                _parse_source(s, i, len(encoder_channels))
                for i, s in enumerate(decoder_skip_sources)
            ]
            if flags is not None:
                for i, (flag, source) in enumerate(zip(flags, sources, strict=True)):
                    if bool(flag) != (source is not None):
                        raise ValueError(
                            f"decoder layer {i}: decoder_skips says {bool(flag)} but "
                            f"decoder_skip_sources says {decoder_skip_sources[i]!r}; make them "
                            "agree or set decoder_skips to null"
                        )
        self.skip_sources: tuple[int | None, ...] = tuple(sources)

        self.decoder = nn.ModuleList()
        outs = [*decoder_channels, self.head_channels]
        for i, (out, unpool, source) in enumerate(zip(outs, decoder_unpools, sources, strict=True)):
            if source is not None:
                if source_stride[source] != stride:
                    at_stride = [_name(j) for j, s in source_stride.items() if s == stride]
                    raise ValueError(
                        f"decoder layer {i} runs at stride {stride} but its skip source "
                        f"{_name(source)} is at stride {source_stride[source]}; sources at stride "
                        f"{stride}: {', '.join(at_stride) or 'none'}"
                    )
                width += source_width[source]
            self.decoder.append(DeconvBlock(width, out, unpool, final=i == len(outs) - 1))
            width, stride = out, stride // unpool
        # Encoder outputs that forward() keeps for the decoder.
        self._kept = frozenset(s for s in sources if s is not None and s != IMAGE)
        initialise_(self, init, "module.net.init")

    @staticmethod
    def _default_sources(
        flags: Sequence[bool],
        source_stride: dict[int, int],
        stride: int,
        decoder_unpools: Sequence[int],
    ) -> list[int | None]:
        """The default rule: the last encoder output at the decoder layer's stride, or the image
        at stride 1 (even where encoder layers also run at stride 1)."""
        last = {1: IMAGE}
        for index, s in source_stride.items():
            if index != IMAGE and s > 1:
                last[s] = index  # ascending index: the last one wins
        sources: list[int | None] = []
        for i, (flag, unpool) in enumerate(zip(flags, decoder_unpools, strict=True)):
            if flag and stride not in last:
                raise ValueError(f"decoder layer {i}: no encoder output at stride {stride}")
            sources.append(last[stride] if flag else None)
            stride //= unpool
        return sources

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is not divisible by the stride {self.stride}"
            )
        kept = {IMAGE: x}
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i in self._kept:
                kept[i] = h
        for layer, source in zip(self.decoder, self.skip_sources, strict=True):
            if source is not None:
                h = torch.cat([h, kept[source]], dim=1)
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


def _parse_source(source: int | str | None, layer: int, num_encoder: int) -> int | None:
    """One entry of ``decoder_skip_sources`` as ``None``, an encoder index or :data:`IMAGE`."""
    if source is None:
        return None
    if isinstance(source, str) and source.strip().lower() == "x":
        return IMAGE
    # bool is an int: a decoder_skips list passed here by mistake would otherwise read as h0/h1.
    if (
        isinstance(source, int)
        and not isinstance(source, bool)
        and (source == IMAGE or 0 <= source < num_encoder)
    ):
        return source
    raise ValueError(
        f"decoder_skip_sources[{layer}]={source!r}: use null (no skip), an encoder layer index "
        f"0..{num_encoder - 1}, or -1 / 'x' for the input image"
    )


def _name(source: int) -> str:
    return "the input image x" if source == IMAGE else f"encoder layer {source} (h{source})"


def foreground_probability(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 1, H, W) foreground probability of :meth:`Preprocessor.forward`'s outputs: sigmoid of
    the foreground logit, or 1 - p(background) of the semantic classes."""
    if "semantic" in out:
        return 1 - out["semantic"].softmax(1)[:, :1]
    return out["foreground"].sigmoid()
