"""KITTI car segmentation metrics as used by Zhang et al. and the paper: MWCov, MUCov, FP, FN.

Definitions (as in Zhang et al.'s evaluation). Per image, with ground-truth instances
G_1..G_N (N' = max(N, 1)) and non-empty predicted instances P_i:

- MUCov = (1/N') Σ_j max_i IoU(P_i, G_j)
- MWCov = Σ_j (|G_j| / Σ_k |G_k|) max_i IoU(P_i, G_j)   (0 when there is no GT)
- FP = #{i : IoU(P_i, G_j) = 0 for every j}   (a prediction touching no GT pixel)
- FN = #{j : IoU(P_i, G_j) = 0 for every i}   (a GT instance no prediction touches)

As in :mod:`recattend.metrics.cvppp`, every image keeps its own values in list states gathered
with ``cat`` under DDP, so ``compute()`` reports means (AvgFP, AvgFN for the counts) and
population standard deviations over images, each image counted once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from recattend.metrics.overlap import best_match, instance_overlaps
from recattend.metrics.per_image import check_label_maps, mean_std
from recattend.postprocess import relabel_consecutive


class CoverageScores(NamedTuple):
    """KITTI scores of one image.

    Attributes:
        mwcov: 0-d float32 in [0, 1], mean weighted coverage (a fraction, not percent).
        mucov: 0-d float32 in [0, 1], mean unweighted coverage.
        fp: 0-d int64 >= 0, predicted instances touching no GT pixel.
        fn: 0-d int64 >= 0, GT instances touched by no prediction.
    """

    mwcov: Tensor
    mucov: Tensor
    fp: Tensor
    fn: Tensor


def coverage_scores(pred: Tensor, target: Tensor) -> CoverageScores:
    """MWCov, MUCov, FP and FN of one image (KITTI, Zhang et al.).

    Both maps are renumbered to consecutive ids first, so gaps or offsets in ids do not matter and
    every instance is non-empty (an absent id is no instance). Edge cases follow the definitions:
    an empty prediction gives MWCov = MUCov = 0, FP = 0, FN = N; an image without GT gives
    MWCov = MUCov = 0, FN = 0 and FP = the number of predicted instances.

    Args:
        pred: (H, W) integer predicted label map, 0 = background.
        target: (H, W) integer ground-truth label map of the same shape, 0 = background.

    Returns:
        The image's :class:`CoverageScores`, on pred's device.
    """
    overlaps = instance_overlaps(relabel_consecutive(pred), relabel_consecutive(target))
    coverage = best_match(overlaps.iou().T)  # (N,) max_i IoU(P_i, G_j), 0 without prediction
    area = overlaps.target_area.float()
    # Σ_k |G_k| is 0 only without GT, where the sum is empty and MWCov is 0.
    mwcov = (area * coverage).sum() / area.sum().clamp(min=1)
    mucov = coverage.sum() / max(coverage.numel(), 1)
    # Instances are non-empty after renumbering, so IoU = 0 exactly when the intersection is 0.
    touches = overlaps.intersection > 0  # (P, N)
    fp = (~touches.any(dim=1)).sum()
    fn = (~touches.any(dim=0)).sum()
    return CoverageScores(mwcov, mucov, fp, fn)


class Coverage(Metric):
    """KITTI MWCov, MUCov, AvgFP and AvgFN, per image, then mean and population std over images.

    ``update(pred, target)`` takes (B, H, W) integer label maps (0 = background, any ids) at the
    ground truth's resolution; see :func:`coverage_scores` for the per-image values, empty cases
    included. ``compute()`` (after at least one image) returns ``{"mwcov", "mwcov_std", "mucov",
    "mucov_std", "fp", "fp_std", "fn", "fn_std"}`` as 0-d float32 tensors: MWCov and MUCov as
    fractions in [0, 1] (tables print percent), ``fp`` / ``fn`` = AvgFP / AvgFN, the mean counts
    per image (not rates).
    """

    is_differentiable = False
    higher_is_better = None  # coverages are better high, FP and FN low
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in CoverageScores._fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the scores of each image of a batch of (B, H, W) integer label maps."""
        check_label_maps(pred, target)
        per_image = [coverage_scores(p, t) for p, t in zip(pred, target, strict=True)]
        for name, values in zip(CoverageScores._fields, zip(*per_image, strict=True), strict=True):
            getattr(self, name).append(torch.stack(values).float())

    def compute(self) -> dict[str, Tensor]:
        """Mean and population std of MWCov, MUCov, FP and FN over all images seen (all ranks)."""
        out: dict[str, Tensor] = {}
        for name in CoverageScores._fields:
            out |= mean_std(name, dim_zero_cat(getattr(self, name)))
        return out
