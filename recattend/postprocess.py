"""Post-processing of the recurrent outputs into one instance label map (original system, 5.1).

The authors score label maps, not soft masks: each output mask y_t is weighted by its score s_t,
every pixel goes to the timestep with the largest weighted value, and weak pixels become
background. The stop signal (s_t < 0.5) drops no mask here either: a mask with a low score simply
loses its pixels to the threshold, as in the authors' code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


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


def timestep_labels(masks: Tensor, scores: Tensor, threshold: float = 0.3) -> Tensor:
    """The winning timestep of every pixel, before renumbering: t + 1 where output t has the
    largest score-weighted value and that value is > ``threshold``, else 0.

    Ids are the model's output slots (absent ids are empty outputs), which is what rec-attend's own
    SBD variant scores; :func:`label_map` renumbers them 1..K.

    Args:
        masks: (B, T, H, W) float soft masks in [0, 1]; scores: (B, T) float in [0, 1].

    Returns:
        (B, H, W) int64 in 0..T.
    """
    if masks.dim() != 4 or scores.shape != masks.shape[:2]:
        raise ValueError(
            f"expected masks (B, T, H, W) and scores (B, T), got {tuple(masks.shape)} and "
            f"{tuple(scores.shape)}"
        )
    best, timestep = (masks * scores[:, :, None, None]).max(dim=1)
    return torch.where(best > threshold, timestep + 1, 0)


def label_map(masks: Tensor, scores: Tensor, threshold: float = 0.3) -> Tensor:
    """One instance label per pixel from the soft masks y_t and scores s_t of every timestep.

    Steps (reference post-processing): weight each mask by its score (y_t * s_t); per pixel keep
    the timestep with the largest weighted value; keep the pixel only if that value is
    > ``threshold``. Labels are then numbered 1..K in timestep order, skipping timesteps left
    without a pixel. Upsample (bilinear) and blur the masks before calling this: both are linear,
    so they commute with the score weighting and the result matches the reference order.

    Args:
        masks: (B, T, H, W) float soft masks y_t in [0, 1].
        scores: (B, T) float scores s_t in [0, 1].
        threshold: minimum weighted value (exclusive) for a pixel to be foreground: 0.3 for CVPPP
            and KITTI, 0.6 for Cityscapes.

    Returns:
        (B, H, W) int64 label map on the masks' device: 0 = background, instances 1..K per image.
    """
    raw = timestep_labels(masks, scores, threshold)
    b, t, h, w = masks.shape
    raw = raw.view(b, h * w)
    # One histogram row per image says which timesteps kept a pixel, and a cumulative sum
    # numbers them in timestep order.
    present = torch.zeros(b, t + 1, dtype=torch.bool, device=masks.device)
    present.scatter_(1, raw, True)
    present[:, 0] = False
    return _consecutive_ids(present).gather(1, raw).view(b, h, w)


class FullResolution(NamedTuple):
    """Post-processed outputs of one image at its original size.

    labels: (H, W) int64, 0 = background, instances 1..K in timestep order; timesteps: (H, W)
    int64, the output slot t + 1 of each pixel (see :func:`timestep_labels`); scores: (K,) float,
    instance k's score s_t.
    """

    labels: Tensor
    timesteps: Tensor
    scores: Tensor


def full_resolution_labels(
    masks: Tensor, scores: Tensor, size: tuple[int, int], threshold: float = 0.3
) -> FullResolution:
    """One image's post-processed outputs at its original size (metrics.md, post-processing):
    the soft masks are upsampled bilinearly to ``size``, then weighted by their scores, one label
    per pixel kept and thresholded.

    Args:
        masks: (T, h, w) float soft masks in [0, 1] at network resolution.
        scores: (T,) float scores in [0, 1].
        size: the original (H, W).
        threshold: see :func:`label_map`.
    """
    up = torch.nn.functional.interpolate(
        masks[None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )
    timesteps = timestep_labels(up, scores[None], threshold)[0]
    kept = torch.unique(timesteps[timesteps > 0], sorted=True) - 1
    return FullResolution(relabel_consecutive(timesteps), timesteps, scores[kept])


def refine_labels(
    labels: Tensor,
    foreground: Tensor | None = None,
    dilate: int = 0,
    min_size: int = 0,
    foreground_threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """The authors' dataset-specific clean-up of a label map (metrics.md, post-processing step 5).

    In this order: grow every instance into background pixels by a ``dilate`` x ``dilate`` max
    filter (KITTI: 5; where two instances reach a pixel the larger id wins); keep only pixels whose
    ``foreground`` probability is > ``foreground_threshold`` (KITTI: the FCN foreground;
    Cityscapes: the semantic foreground); drop instances of at most ``min_size`` pixels
    (Cityscapes: 1200); renumber 1..K in the original order.

    Args:
        labels: (H, W) int64 label map, 0 = background.
        foreground: (H, W) float foreground probability, or None to skip the AND.
        dilate: odd filter size, 0 or 1 for none.
        min_size: instances with at most this many pixels are removed.

    Returns:
        (H, W) int64 label map with instances 1..K, and (K,) int64: the input id of each kept
        instance.
    """
    out = labels
    if dilate > 1:
        if dilate % 2 == 0:
            raise ValueError(f"dilate={dilate} must be odd")
        grown = torch.nn.functional.max_pool2d(
            labels[None, None].float(), dilate, stride=1, padding=dilate // 2
        )[0, 0].long()
        out = torch.where(out > 0, out, grown)
    if foreground is not None:
        out = torch.where(foreground > foreground_threshold, out, 0)
    if min_size > 0:
        sizes = torch.bincount(out.flatten(), minlength=int(out.max()) + 1)
        out = torch.where(sizes[out] > min_size, out, 0)
    return relabel_consecutive(out), torch.unique(out[out > 0], sorted=True)


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
