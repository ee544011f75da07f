"""Post-processing of the recurrent outputs into one instance label map (original system, 5.1).

The authors score label maps, not soft masks: each output mask y_t is weighted by its score s_t,
every pixel goes to the timestep with the largest weighted value, and weak pixels become
background. The stop signal (s_t < 0.5) drops no mask here either: a mask with a low score simply
loses its pixels to the threshold, as in the authors' code.
"""

from __future__ import annotations

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
    if masks.dim() != 4 or scores.shape != masks.shape[:2]:
        raise ValueError(
            f"expected masks (B, T, H, W) and scores (B, T), got {tuple(masks.shape)} and "
            f"{tuple(scores.shape)}"
        )
    b, t, h, w = masks.shape
    best, timestep = (masks * scores[:, :, None, None]).max(dim=1)
    # Label t + 1 for timestep t, 0 for background: one histogram row per image then says which
    # timesteps kept a pixel, and a cumulative sum numbers them in timestep order.
    raw = torch.where(best > threshold, timestep + 1, 0).view(b, h * w)
    present = torch.zeros(b, t + 1, dtype=torch.bool, device=masks.device)
    present.scatter_(1, raw, True)
    present[:, 0] = False
    return _consecutive_ids(present).gather(1, raw).view(b, h, w)


def full_resolution_labels(
    masks: Tensor, scores: Tensor, size: tuple[int, int], threshold: float = 0.3
) -> tuple[Tensor, Tensor]:
    """One image's label map at its original size, and each instance's score.

    The reference order (metrics.md, post-processing): the soft masks are upsampled bilinearly to
    ``size``, then :func:`label_map` weights them by their scores, keeps one label per pixel and
    thresholds.

    Args:
        masks: (T, h, w) float soft masks in [0, 1] at network resolution.
        scores: (T,) float scores in [0, 1].
        size: the original (H, W).
        threshold: see :func:`label_map`.

    Returns:
        (H, W) int64 labels (0 = background, 1..K) and (K,) float scores: instance k's is the
        score s_t of the timestep it came from.
    """
    up = torch.nn.functional.interpolate(
        masks[None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )
    labels = label_map(up, scores[None], threshold)[0]
    timestep = (up[0] * scores[:, None, None]).argmax(0)
    # Instances are numbered in timestep order, so the k-th kept timestep is instance k.
    kept = torch.unique(timestep[labels > 0], sorted=True)
    return labels, scores[kept]
