"""Post-processing: the recurrent outputs of a batch into one instance label map per image.

:class:`PostProcess` is the one post-processing of the project: built from the ``postprocess``
config node (``module.postprocess``, a ``_target_`` node), held by the segmenter module as
``module.postprocess``, and called by validation, test, ``eval.py`` and ``predict.py`` alike. Its
steps, in order, each one a setting:

1. stop rule (``stop_rule``): ``"weighted"`` keeps every timestep, ``"first_below"`` empties an
   image's outputs from its first score s_t < ``stop_score`` on;
2. score weighting: y_t <- y_t * s_t, so a mask with a low score loses its pixels to the
   threshold instead of being dropped;
3. ``upsample``: each weighted map resized to the requested size (the original image's),
   bilinear (the authors'), bicubic (clamped to [0, 1]) or nearest;
4. ``blur``: a bilateral filter of each map (:func:`bilateral_blur`);
5. ``dilate``: a k x k grey dilation (max filter) of each map, before the maps compete;
6. one label per pixel: the timestep with the largest value, kept only where that value is
   > ``threshold``;
7. ``foreground``: AND with a foreground probability > ``foreground_threshold``;
8. ``min_size``: instances of at most that many (original-image) pixels become background.

Steps 1-8 give slot maps (:meth:`PostProcess.slots`): pixel value t + 1 for output slot t, 0 for
background. Calling the object numbers each image's instances 1..K in timestep order and gives
their scores and, with semantic maps, their classes (:class:`Instances`).

The defaults reproduce the tables of the paper: they follow the authors' released evaluation,
which weights every mask by its score and runs all T steps (``stop_rule="weighted"``) although
the paper's text stops inference at the first s_t < 0.5 (``stop_rule="first_below"``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

STOP_RULES = ("weighted", "first_below")
UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")
# The authors' filter: cv2.bilateralFilter(d=5, sigmaColor=10, sigmaSpace=10) on [0, 1] maps.
BLUR_DIAMETER = 5
BLUR_SIGMA_COLOUR = 10.0
BLUR_SIGMA_SPACE = 10.0


class Instances(NamedTuple):
    """The post-processed instances of one image.

    labels: (H, W) int64, 0 = background, instances 1..K in timestep order; timesteps: (H, W)
    int64, the slot map (output slot t + 1 of each pixel, what rec-attend's own SBD variant
    scores); scores: (K,) float, instance k's score s_t; classes: (K,) int64 each instance's
    semantic class (train id), or None without semantic maps.
    """

    labels: Tensor
    timesteps: Tensor
    scores: Tensor
    classes: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """The post-processing (module docstring); the defaults are the authors' (CVPPP).

    Attributes:
        threshold: a pixel is foreground when its winning value is > this (CVPPP and KITTI 0.3,
            Cityscapes 0.6).
        stop_rule: ``"weighted"`` (run all T steps, no hard stop: the authors' code) or
            ``"first_below"`` (an image stops at its first s_t < ``stop_score``: the paper).
        stop_score: the stop threshold of ``"first_below"``; 0 never stops. Unused otherwise.
        upsample: how each weighted map is resized to the requested size (:func:`upsample_maps`):
            ``"bilinear"`` (the authors'), ``"bicubic"`` or ``"nearest"``.
        blur: bilateral filter of each weighted, upsampled map (:func:`bilateral_blur`).
        dilate: odd window of the per-map grey dilation, 0 or 1 for none (KITTI 5).
        foreground: AND with a foreground probability map (KITTI, Cityscapes): the
            pre-processor's (the outputs' ``foreground``) or external semantic maps'; without
            either the AND is skipped.
        foreground_threshold: the foreground is where that probability is > this.
        min_size: instances of at most this many pixels of the original image are dropped
            (Cityscapes 1200); 0 keeps all.

    Raises:
        ValueError: an invalid value, named as ``postprocess.<key>``.
    """

    threshold: float = 0.3
    stop_rule: str = "weighted"
    stop_score: float = 0.5
    upsample: str = "bilinear"
    blur: bool = True
    dilate: int = 0
    foreground: bool = False
    foreground_threshold: float = 0.3
    min_size: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.stop_rule not in STOP_RULES:
            problems.append(f"stop_rule={self.stop_rule!r} is not one of {', '.join(STOP_RULES)}")
        if not 0.0 <= self.stop_score <= 1.0:
            problems.append(f"stop_score={self.stop_score} is not in [0, 1]")
        if self.upsample not in UPSAMPLE_MODES:
            problems.append(f"upsample={self.upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        if self.dilate < 0 or (self.dilate > 1 and self.dilate % 2 == 0):
            problems.append(f"dilate={self.dilate} must be odd (or 0 for none)")
        if self.min_size < 0:
            problems.append(f"min_size={self.min_size} must be >= 0")
        if problems:
            raise ValueError("postprocess: " + "; ".join(problems))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The settings' names, in order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, overrides: Mapping[str, Any] | None) -> PostProcess:
        """These settings with every non-null value of ``overrides`` in place of its own (what
        ``eval.py postprocess.<key>=...`` and ``predict.py`` do to a checkpoint's).

        Raises:
            ValueError: a key that is not a setting (the message lists them) or an invalid value.
        """
        overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
        unknown = sorted(set(overrides) - set(self.keys()))
        if unknown:
            raise ValueError(
                f"postprocess.{unknown[0]}: not a post-processing setting; the settings are "
                f"{', '.join(self.keys())}"
            )
        return dataclasses.replace(self, **overrides)

    @property
    def network_stop(self) -> float:
        """The score below which the network stops an image early
        (:meth:`~recattend.models.SegmenterNetwork.predict`'s ``threshold``): ``stop_score``
        under ``first_below``, 0 (never) under ``weighted``."""
        return self.stop_score if self.stop_rule == "first_below" else 0.0

    def slots(
        self,
        masks: Tensor,
        scores: Tensor,
        size: tuple[int, int] | None = None,
        foreground: Tensor | None = None,
        pixel_area: Tensor | float = 1.0,
    ) -> Tensor:
        """Slot maps of soft masks and scores: steps 1-8 of the module docstring, in order.

        Args:
            masks: (B, T, h, w) float soft masks y_t in [0, 1] at network resolution.
            scores: (B, T) float scores s_t in [0, 1].
            size: the output (H, W); None keeps (h, w).
            foreground: (B, H, W) float foreground probability for the ``foreground`` AND, or
                None to skip it.
            pixel_area: see :func:`drop_small` (() or (B,)).

        Returns:
            (B, H, W) int64 slot maps on the masks' device: t + 1 where output slot t wins, 0
            for background.
        """
        if masks.dim() != 4 or scores.shape != masks.shape[:2]:
            raise ValueError(
                f"expected masks (B, T, H, W) and scores (B, T), got {tuple(masks.shape)} and "
                f"{tuple(scores.shape)}"
            )
        # bf16 outputs (mixed precision) are compared to the threshold in float32 at least.
        dtype = torch.promote_types(masks.dtype, torch.float32)
        masks, scores = masks.to(dtype), scores.to(dtype)
        if self.stop_rule == "first_below":
            masks, scores = stop_outputs(masks, scores, self.stop_score)
        maps = masks * scores[:, :, None, None]
        if size is not None and tuple(size) != tuple(maps.shape[-2:]):
            maps = upsample_maps(maps, tuple(size), self.upsample)
        if self.blur:
            maps = bilateral_blur(maps)
        maps = dilate_maps(maps, self.dilate)
        slots = winning_timesteps(maps, self.threshold)
        if self.foreground and foreground is not None:
            slots = torch.where(foreground > self.foreground_threshold, slots, 0)
        if self.min_size > 0:
            slots = drop_small(slots, self.min_size, pixel_area)
        return slots

    def __call__(
        self,
        out: Mapping[str, Tensor],
        size: tuple[int, int] | None = None,
        pixel_area: Tensor | float = 1.0,
        semantic: Sequence[Tensor] | None = None,
    ) -> list[Instances]:
        """The instances of a batch of network outputs, at ``size``.

        Args:
            out: the network's outputs for B images
                (:meth:`~recattend.models.SegmenterNetwork.predict`): ``masks`` (B, T, h, w)
                and ``scores`` (B, T); with a pre-processor also ``foreground`` (B, h, w), its
                foreground probability, and with a semantic one ``semantic`` (B, K + 1, h, w),
                its class probabilities. Both are resized bilinearly to ``size``: the foreground
                of the AND, and each instance's majority class.
            size: the labels' (H, W), the images' original size; None: network resolution.
            pixel_area: () or (B,) original-image pixels per output pixel (``min_size``).
            semantic: external semantic predictions (the authors' LRR maps for Cityscapes) in
                place of the pre-processor's: B integer (H_i, W_i) train-id maps
                (0 = background), any size, resized to ``size`` nearest-neighbour. Their
                non-background pixels are the foreground of the AND and their majority class
                each instance's.

        Returns:
            One :class:`Instances` per image at ``size``; ``classes`` only with semantic maps.
        """
        masks = out["masks"]
        size = tuple(size) if size is not None else tuple(masks.shape[-2:])
        foreground, classes = None, None
        if semantic is not None:
            if len(semantic) != masks.shape[0]:
                raise ValueError(
                    f"{len(semantic)} semantic maps for {masks.shape[0]} images: give one per image"
                )
            # Centred nearest-neighbour ("nearest-exact"), as the datasets resize their masks,
            # so a map at the original size lines up with the network-resolution batch.
            classes = torch.cat([
                torch.nn.functional.interpolate(
                    m.to(masks.device, torch.float32)[None, None], size=size, mode="nearest-exact"
                )[:, 0].long()
                for m in semantic
            ])  # fmt: skip
            foreground = (classes > 0).to(masks.dtype)
        else:
            if self.foreground and "foreground" in out:
                foreground = _resize(out["foreground"][:, None], size)[:, 0]
            if "semantic" in out:
                classes = _resize(out["semantic"], size).argmax(1)
        slots = self.slots(masks, out["scores"], size, foreground, pixel_area)
        results = []
        for i, image_slots in enumerate(slots):
            result = image_instances(image_slots, out["scores"][i])
            if classes is not None:
                result = result._replace(classes=majority_class(result.labels, classes[i]))
            results.append(result)
        return results


def image_outputs(outputs: Mapping[str, Tensor], i: int) -> dict[str, Tensor]:
    """The network outputs of image ``i`` of a batch, as a batch of one (every entry is
    batch-first), e.g. to post-process each image at its own size."""
    return {key: value[i : i + 1] for key, value in outputs.items()}


def image_instances(slots: Tensor, scores: Tensor) -> Instances:
    """One image's instances from its slot map, numbered 1..K in timestep order.

    Args:
        slots: (H, W) int64 slot map of :meth:`PostProcess.slots`; scores: (T,) float s_t.
    """
    kept = torch.unique(slots[slots > 0], sorted=True) - 1
    return Instances(relabel_consecutive(slots), slots, scores[kept])


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, h, w) probability maps resized bilinearly to ``size`` (H, W)."""
    return torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def stop_outputs(masks: Tensor, scores: Tensor, stop_score: float) -> tuple[Tensor, Tensor]:
    """The paper's stop rule: every output of an image from its first s_t < ``stop_score`` on
    becomes zero (what :meth:`RecurrentSegmenter.predict` returns with ``threshold=stop_score``).

    Args:
        masks: (B, T, H, W) float soft masks; scores: (B, T) float.

    Returns:
        The masks and scores, zero from each image's first low score on (same shapes, dtypes).
    """
    # A cumulative product of "still above" is 1 up to (excluding) the first low score.
    running = (scores >= stop_score).to(scores.dtype).cumprod(dim=1)
    return masks * running[:, :, None, None], scores * running


def _reflect_101(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices 0..n-1 of positions -radius..n-1+radius with the border mirrored about the edge
    pixel (cv2.BORDER_REFLECT_101: ``dcb|abcd|cba``); any size n >= 1 (n = 1: all 0)."""
    positions = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(positions)
    period = 2 * (n - 1)
    positions = positions.abs() % period
    return torch.where(positions < n, positions, period - positions)


def bilateral_blur(
    maps: Tensor,
    diameter: int = BLUR_DIAMETER,
    sigma_colour: float = BLUR_SIGMA_COLOUR,
    sigma_space: float = BLUR_SIGMA_SPACE,
) -> Tensor:
    """Bilateral filter of every (H, W) map, as OpenCV's ``bilateralFilter`` on float images.

    Each pixel becomes the weighted mean of its neighbours at distance r <= diameter // 2 (a disc:
    for diameter 5, the 13 pixels with dy^2 + dx^2 <= 4, not the whole 5 x 5 square), with weights
    exp(-r^2 / (2 sigma_space^2)) * exp(-(v - v0)^2 / (2 sigma_colour^2)), v0 the pixel's own
    value. Borders are mirrored about the edge pixel (BORDER_REFLECT_101). On maps in [0, 1] with
    the authors' sigma_colour = 10 the colour term lies in [0.995, 1]: the filter is nearly a
    fixed Gaussian blur, but it is computed exactly here.

    Args:
        maps: (..., H, W) float, any device and dtype (the weights follow them).

    Returns:
        (..., H, W), same dtype and device; a constant map is unchanged, values stay within the
        input's range.
    """
    radius = diameter // 2
    h, w = maps.shape[-2:]
    rows = _reflect_101(h, radius, maps.device)
    cols = _reflect_101(w, radius, maps.device)
    padded = maps[..., rows, :][..., cols]
    colour = -0.5 / sigma_colour**2
    numerator = torch.zeros_like(maps)
    denominator = torch.zeros_like(maps)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            r2 = dy * dy + dx * dx
            if r2 > radius * radius:
                continue
            neighbour = padded[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            weight = torch.exp(colour * (neighbour - maps) ** 2) * math.exp(
                -0.5 * r2 / sigma_space**2
            )
            numerator += weight * neighbour
            denominator += weight
    return numerator / denominator  # the centre's own weight is 1, so never 0


def dilate_maps(maps: Tensor, size: int) -> Tensor:
    """Grey dilation of every map: each pixel takes the maximum of its ``size`` x ``size``
    window (pixels outside the map do not count).

    Args:
        maps: (B, T, H, W) float; size: odd window, 0 or 1 for none.

    Returns:
        (B, T, H, W), same dtype and device.
    """
    if size <= 1:
        return maps
    return torch.nn.functional.max_pool2d(maps, size, stride=1, padding=size // 2)


def upsample_maps(maps: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize every map to ``size`` (pixel centres aligned, ``align_corners=False``).

    Args:
        maps: (B, T, h, w) float in [0, 1]; size: (H, W).
        mode: ``"bilinear"`` (the authors'), ``"bicubic"`` (its overshoot at edges clamped back
            to [0, 1], so a map stays a weighted probability the threshold can compare) or
            ``"nearest"`` (each output pixel takes the input pixel whose area holds its centre:
            an integer factor repeats every pixel).

    Returns:
        (B, T, H, W), same dtype and device, in [0, 1].
    """
    if mode == "nearest":
        # "nearest-exact" takes the input pixel under each output pixel's centre; torch's
        # "nearest" takes floor(dst * h / H), up to a pixel towards the top left when H / h is
        # not an integer (both repeat pixels for an integer factor).
        return torch.nn.functional.interpolate(maps, size=tuple(size), mode="nearest-exact")
    out = torch.nn.functional.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)
    return out.clamp(0.0, 1.0) if mode == "bicubic" else out


def winning_timesteps(maps: Tensor, threshold: float) -> Tensor:
    """The slot map of processed maps: t + 1 where map t has the largest value (the first one on
    ties) and that value is > ``threshold``, else 0.

    Args:
        maps: (B, T, H, W) float.

    Returns:
        (B, H, W) int64 in 0..T.
    """
    best, timestep = maps.max(dim=1)
    return torch.where(best > threshold, timestep + 1, 0)


def drop_small(slots: Tensor, min_size: float, pixel_area: Tensor | float = 1.0) -> Tensor:
    """Background for every instance covering at most ``min_size`` original-image pixels.

    Args:
        slots: (B, H, W) int64 slot maps, 0 = background.
        min_size: in pixels of the original image.
        pixel_area: () or (B,) float, how many original-image pixels one pixel of ``slots``
            stands for (1 at the original resolution).

    Returns:
        (B, H, W) int64, the small instances' pixels set to 0.
    """
    b = slots.shape[0]
    flat = slots.reshape(b, -1)
    counts = torch.zeros(b, int(slots.max()) + 1, dtype=torch.int64, device=slots.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    # float32 counts pixels exactly up to 2^24 (16.7 M), beyond any image here.
    area = torch.as_tensor(pixel_area, dtype=torch.float32, device=slots.device).reshape(-1, 1)
    large = (counts.float() * area > min_size).gather(1, flat).view_as(slots)
    return torch.where(large, slots, 0)


def relabel_consecutive(labels: Tensor) -> Tensor:
    """Renumber the instances of one label map to 1..K, keeping 0 as background.

    The official CVPPP scorer assumes consecutive ids, so gaps (e.g. ``{0, 7, 9}``) or offsets
    (every id + 100) would change its score; renumbering first makes any id scheme score the same.
    Instances keep their relative order (the smallest non-zero id becomes 1).

    Args:
        labels: (H, W) integer label map, 0 = background, any other value an instance id.

    Returns:
        (H, W) int64 label map with 0 = background and instances 1..K, K = number of distinct
        non-zero ids.
    """
    ids, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    present = ids != 0
    return (present.cumsum(0) * present)[inverse]


def majority_class(labels: Tensor, semantic: Tensor) -> Tensor:
    """Each instance's most frequent semantic class (Cityscapes: the instance's label).

    Args:
        labels: (H, W) int64 label map, instances 1..K.
        semantic: (H, W) int64 class map, 0 = background, classes 1..C.

    Returns:
        (K,) int64: instance k's class at index k - 1, counted over its non-background pixels
        (ties: the smaller class; an instance entirely on background: 0).
    """
    k = int(labels.max())
    c = int(semantic.max()) + 1
    counts = torch.zeros(k + 1, c, dtype=torch.int64, device=labels.device)
    counts.index_put_(
        (labels.flatten(), semantic.flatten()), torch.ones_like(labels.flatten()), accumulate=True
    )
    counts[:, 0] = 0
    best = counts.argmax(1)
    return torch.where(counts.amax(1) > 0, best, 0)[1:]
