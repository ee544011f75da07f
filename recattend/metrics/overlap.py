"""Pixel overlaps between every predicted and every ground-truth instance of one image.

A single joint histogram of (prediction id, ground-truth id) gives all intersections and areas at
once, so every instance metric (SBD, MWCov, MUCov, FP/FN) builds on the same counts instead of
looping over instance pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Elementwise float32 ``numerator / denominator`` with 0/0 := 0 (benchmark convention).

    Args:
        numerator: integer or float tensor.
        denominator: integer or float tensor broadcastable with ``numerator``, values >= 0.

    Returns:
        float32 tensor of the broadcast shape; 0 wherever ``denominator`` is 0.
    """
    quotient = numerator.float() / denominator.clamp(min=1).float()
    return torch.where(denominator > 0, quotient, 0.0)


class Overlaps(NamedTuple):
    """Pixel counts of the instances of one image, P predicted and G ground-truth.

    Attributes:
        intersection: (P, G) int64, |p_i ∩ g_j|.
        pred_area: (P,) int64, |p_i|.
        target_area: (G,) int64, |g_j|.
    """

    intersection: Tensor
    pred_area: Tensor
    target_area: Tensor

    def dice(self) -> Tensor:
        """(P, G) float32 Dice(p_i, g_j) = 2|p_i ∩ g_j| / (|p_i| + |g_j|) in [0, 1], 0/0 := 0."""
        total = self.pred_area[:, None] + self.target_area[None, :]
        return safe_ratio(2 * self.intersection, total)

    def iou(self) -> Tensor:
        """(P, G) float32 IoU(p_i, g_j) = |p_i ∩ g_j| / |p_i ∪ g_j| in [0, 1], 0/0 := 0."""
        union = self.pred_area[:, None] + self.target_area[None, :] - self.intersection
        return safe_ratio(self.intersection, union)


def instance_overlaps(pred: Tensor, target: Tensor) -> Overlaps:
    """Intersections and areas of all pairs of instances of two label maps of one image.

    Instance k is the set of pixels labelled k, for k = 1..max label; an id in that range with no
    pixel is an empty instance (an all-zero row or column), which is how per-timestep outputs keep
    their slots. The histogram has (P + 1)(G + 1) bins, so pass small ids: renumber arbitrary ids
    with :func:`recattend.postprocess.relabel_consecutive` first.

    Args:
        pred: (H, W) integer label map, values >= 0, 0 = background, P = its largest value.
        target: (H, W) integer label map of the same shape, values >= 0, G = its largest value.

    Returns:
        The :class:`Overlaps` of the P predicted and G ground-truth instances, on pred's device.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"label maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    num_pred, num_target = int(pred.max()), int(target.max())
    joint = pred * (num_target + 1) + target
    counts = torch.bincount(joint, minlength=(num_pred + 1) * (num_target + 1))
    counts = counts.view(num_pred + 1, num_target + 1)
    # Row 0 / column 0 are background: they still count towards the other side's areas.
    return Overlaps(counts[1:, 1:], counts[1:].sum(dim=1), counts[:, 1:].sum(dim=0))


def best_match(scores: Tensor) -> Tensor:
    """Best score of each row: max_b scores[a, b], and 0 for every row when there is no column.

    Shared by every "max over the other side's instances" of the instance metrics (best Dice,
    rec-attend's SBD, coverage): a max over no instance is 0, as is the score of any pair with an
    empty instance.

    Args:
        scores: (A, B) float pairwise scores (e.g. :meth:`Overlaps.dice` or
            :meth:`Overlaps.iou`), all >= 0; A or B may be 0.

    Returns:
        (A,) tensor of ``scores``' dtype, each value >= 0.
    """
    # A zero column makes the max over no column 0 (scores are >= 0, so it changes no other max).
    return F.pad(scores, (0, 1)).amax(dim=1)
