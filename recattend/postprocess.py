"""Post-processing of the recurrent outputs into one instance label map per image (about 410
lines: one path with its switches, which must stay together for validation, test and prediction
to agree).

One path (:func:`postprocess`) serves validation, the test split at network resolution and at the
original resolution, and ``predict.py``. Its steps, in order, each one a switch of
:class:`PostProcess`:

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

The outputs are slot maps: pixel value t + 1 for output slot t, 0 for background. Instances are
numbered 1..K in timestep order afterwards (:func:`label_map`, :func:`image_instances`).

The defaults reproduce the tables of the paper: they follow the authors' released evaluation,
which weights every mask by its score and runs all T steps (``stop_rule="weighted"``) although
the paper's text stops inference at the first s_t < 0.5 (``stop_rule="first_below"``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor

STOP_RULES = ("weighted", "first_below")
UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")
# The keys of module.postprocess (the other PostProcess fields are module arguments of their own).
SWITCHES = ("blur", "dilate", "foreground", "foreground_threshold", "min_size", "upsample")
# The authors' filter: cv2.bilateralFilter(d=5, sigmaColor=10, sigmaSpace=10) on [0, 1] maps.
BLUR_DIAMETER = 5
BLUR_SIGMA_COLOUR = 10.0
BLUR_SIGMA_SPACE = 10.0


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """Settings of :func:`postprocess`; the defaults are the authors' (CVPPP).

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
        foreground: AND with a foreground probability map (KITTI, Cityscapes); the caller gives
            the map, none given skips the AND.
        foreground_threshold: the foreground is where that probability is > this.
        min_size: instances of at most this many pixels of the original image are dropped
            (Cityscapes 1200); 0 keeps all.
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
            problems.append(
                f"postprocess.upsample={self.upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}"
            )
        if self.dilate < 0 or (self.dilate > 1 and self.dilate % 2 == 0):
            problems.append(f"postprocess.dilate={self.dilate} must be odd (or 0 for none)")
        if self.min_size < 0:
            problems.append(f"postprocess.min_size={self.min_size} must be >= 0")
        if problems:
            raise ValueError("module: " + "; ".join(problems))

    @classmethod
    def from_module(
        cls,
        threshold: float,
        stop_rule: str,
        stop_score: float,
        switches: dict[str, object] | None,
    ) -> PostProcess:
        """The settings of a segmenter's arguments: ``threshold``, ``stop_rule``,
        ``stop_score`` and the ``postprocess`` mapping of switches (missing ones: defaults).

        Raises:
            ValueError: an unknown switch (names the known ones) or an invalid value.
        """
        switches = dict(switches or {})
        unknown = sorted(set(switches) - set(SWITCHES))
        if unknown:
            raise ValueError(
                f"module.postprocess: unknown keys {unknown}; known: {', '.join(SWITCHES)}"
            )
        return cls(
            threshold=float(threshold),
            stop_rule=str(stop_rule),
            stop_score=float(stop_score),
            **{k: v for k, v in switches.items() if v is not None},
        )


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


def postprocess(
    masks: Tensor,
    scores: Tensor,
    settings: PostProcess,
    size: tuple[int, int] | None = None,
    foreground: Tensor | None = None,
    pixel_area: Tensor | float = 1.0,
) -> Tensor:
    """Slot maps of soft masks and scores: every step of the module docstring, in that order.

    Args:
        masks: (B, T, h, w) float soft masks y_t in [0, 1] at network resolution.
        scores: (B, T) float scores s_t in [0, 1].
        settings: which steps run, and their parameters.
        size: the output (H, W); None keeps (h, w).
        foreground: (B, H, W) float foreground probability for ``settings.foreground``, or None
            to skip the AND.
        pixel_area: see :func:`drop_small` (() or (B,)).

    Returns:
        (B, H, W) int64 slot maps on the masks' device: t + 1 where output slot t wins, 0 for
        background.
    """
    if masks.dim() != 4 or scores.shape != masks.shape[:2]:
        raise ValueError(
            f"expected masks (B, T, H, W) and scores (B, T), got {tuple(masks.shape)} and "
            f"{tuple(scores.shape)}"
        )
    # bf16 outputs (mixed precision) are compared to the threshold in float32 at least.
    dtype = torch.promote_types(masks.dtype, torch.float32)
    masks, scores = masks.to(dtype), scores.to(dtype)
    if settings.stop_rule == "first_below":
        masks, scores = stop_outputs(masks, scores, settings.stop_score)
    maps = masks * scores[:, :, None, None]
    if size is not None and tuple(size) != tuple(maps.shape[-2:]):
        maps = upsample_maps(maps, tuple(size), settings.upsample)
    if settings.blur:
        maps = bilateral_blur(maps)
    maps = dilate_maps(maps, settings.dilate)
    slots = winning_timesteps(maps, settings.threshold)
    if settings.foreground and foreground is not None:
        slots = torch.where(foreground > settings.foreground_threshold, slots, 0)
    if settings.min_size > 0:
        slots = drop_small(slots, settings.min_size, pixel_area)
    return slots


def _consecutive_ids(present: Tensor) -> Tensor:
    """New id of every old id: the rank of the present ones, counted from 1, and 0 elsewhere.

    Args:
        present: (..., K) bool, whether each of the K old ids (in order) is kept.

    Returns:
        (..., K) int64 with the present ids numbered 1..(number present) in order, 0 elsewhere.
    """
    return present.cumsum(dim=-1) * present


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
    return _consecutive_ids(ids != 0)[inverse]


def label_map(
    masks: Tensor,
    scores: Tensor,
    settings: PostProcess | None = None,
    size: tuple[int, int] | None = None,
    foreground: Tensor | None = None,
) -> Tensor:
    """One instance label per pixel: :func:`postprocess`, then the slots that kept a pixel
    numbered 1..K in timestep order, per image.

    Args:
        masks, scores, size, foreground: see :func:`postprocess`.
        settings: default :class:`PostProcess` ().

    Returns:
        (B, H, W) int64 label map on the masks' device: 0 = background, instances 1..K per image.
    """
    slots = postprocess(masks, scores, settings or PostProcess(), size, foreground)
    b, t = masks.shape[:2]
    flat = slots.view(b, -1)
    # One histogram row per image says which slots kept a pixel, and a cumulative sum numbers them
    # in timestep order.
    present = torch.zeros(b, t + 1, dtype=torch.bool, device=slots.device)
    present.scatter_(1, flat, True)
    present[:, 0] = False
    return _consecutive_ids(present).gather(1, flat).view_as(slots)


class Instances(NamedTuple):
    """The post-processed instances of one image.

    labels: (H, W) int64, 0 = background, instances 1..K in timestep order; timesteps: (H, W)
    int64, the slot map (output slot t + 1 of each pixel, what rec-attend's own SBD variant
    scores); scores: (K,) float, instance k's score s_t; classes: (K,) int64 each instance's
    semantic class (train id), or None without a semantic pre-processor.
    """

    labels: Tensor
    timesteps: Tensor
    scores: Tensor
    classes: Tensor | None = None


def image_instances(slots: Tensor, scores: Tensor) -> Instances:
    """One image's instances from its slot map.

    Args:
        slots: (H, W) int64 slot map of :func:`postprocess`; scores: (T,) float scores s_t.
    """
    kept = torch.unique(slots[slots > 0], sorted=True) - 1
    return Instances(relabel_consecutive(slots), slots, scores[kept])


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
