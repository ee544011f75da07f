"""Class-agnostic mask AP of label maps: the validation stand-in for the benchmarks' AP.

The Cityscapes and COCO benchmarks score AP at the original resolution (Cityscapes per class,
with its crowd and void regions; COCO with pycocotools), which only the test split does. Validation
scores every dataset at network resolution against the batch's own instance slots, where neither
classes nor ignore regions exist; this module gives that setting an AP with the Cityscapes rules
(:mod:`recattend.metrics.cityscapes_ap`) minus the classes and the ignore regions, so that the best
checkpoint of a Cityscapes or COCO run is chosen by AP:

- **Instances.** Predictions are the non-empty instances 1..K of a label map, each with its score;
  ground-truth instances are the non-empty instances of the target label map, all counted.
- **Match** at overlap threshold th in 0.50, 0.55, ..., 0.95: IoU strictly greater than th,
  compared exactly on pixel counts as ``20 |p ∩ g| > 20 th |p ∪ g|``. A label map's instances are
  disjoint, and an IoU above 0.5 covers more than half of both masks, so a prediction matches at
  most one ground-truth instance and the other way round: a matched prediction is a TP, any other
  prediction an FP.
- **AP** of one threshold: :func:`~recattend.metrics.cityscapes_ap.average_precision` of all
  images' (score, TP) records against the number of ground-truth instances. ``mask_ap`` is the mean
  over the 10 thresholds, ``mask_ap50`` the value at 0.5; fractions in [0, 1], nan when no image
  had a ground-truth instance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from recattend.metrics.cityscapes_ap import OVERLAP_THRESHOLDS, average_precision
from recattend.metrics.overlap import instance_overlaps
from recattend.metrics.per_image import check_label_maps

# Thresholds k / 20 for k = 10..19, as integers for the exact IoU test.
_TWENTIETHS = torch.arange(10, 20)


def match_instances(pred: Tensor, scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
    """TP / FP of every predicted instance of one image at each threshold.

    Args:
        pred: (H, W) integer label map, instances 1..K (an id without pixels is skipped).
        scores: (K,) float score of instance k at index k - 1.
        target: (H, W) integer ground-truth label map of the same shape, 0 = background.

    Returns:
        ``(score, is_tp, num_gt)``: score (P,) float64 of the P non-empty predictions, is_tp
        (10, P) bool at each threshold of :data:`OVERLAP_THRESHOLDS`, num_gt the number of
        non-empty ground-truth instances.
    """
    overlaps = instance_overlaps(pred, target)
    kept = overlaps.pred_area > 0
    union = overlaps.pred_area[:, None] + overlaps.target_area[None, :] - overlaps.intersection
    intersection, union = overlaps.intersection[kept], union[kept]
    thresholds = _TWENTIETHS.to(pred.device)[:, None, None]
    is_tp = (20 * intersection[None] > thresholds * union[None]).any(dim=2)
    score = scores[: len(kept)][kept].to(torch.float64)
    return score, is_tp, int((overlaps.target_area > 0).sum())


class MaskAP(Metric):
    """Class-agnostic mask AP and AP50 over images (module docstring), DDP-safe.

    ``update(pred, scores, target)`` takes (B, H, W) integer label maps and one (K_i,) score
    tensor per image. The states are one (threshold, score, TP) record per prediction and
    threshold, gathered with ``cat`` under DDP, and the ground-truth count summed over ranks, so
    every image counts once. ``compute()`` returns ``{"mask_ap", "mask_ap50"}`` as 0-d float32
    tensors in [0, 1] (nan without any ground-truth instance).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("threshold_index", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("is_tp", default=[], dist_reduce_fx="cat")
        self.add_state("num_gt", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, scores: list[Tensor], target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` (B, H, W) label maps, ``scores`` B tensors (K_i,)
        of the instances 1..K_i of each ``pred``."""
        check_label_maps(pred, target)
        for image_pred, image_scores, image_target in zip(pred, scores, target, strict=True):
            score, is_tp, num_gt = match_instances(image_pred, image_scores, image_target)
            thresholds = torch.arange(len(OVERLAP_THRESHOLDS), device=self.device)
            self.threshold_index.append(thresholds.repeat_interleave(len(score)))
            self.score.append(score.to(self.device).repeat(len(OVERLAP_THRESHOLDS)))
            self.is_tp.append(is_tp.to(self.device).reshape(-1))
            self.num_gt += num_gt

    def compute(self) -> dict[str, Tensor]:
        """``{"mask_ap": mean over thresholds, "mask_ap50": threshold 0.5}`` over all images."""
        if isinstance(self.score, list) and not self.score:  # no image on any rank
            nan = torch.tensor(torch.nan, device=self.device)
            return {"mask_ap": nan, "mask_ap50": nan}
        threshold, score, is_tp = (
            dim_zero_cat(s) for s in (self.threshold_index, self.score, self.is_tp)
        )
        ap = torch.stack(
            [
                average_precision(score[threshold == t], is_tp[threshold == t], self.num_gt)
                for t in range(len(OVERLAP_THRESHOLDS))
            ]
        )
        return {"mask_ap": ap.mean().float(), "mask_ap50": ap[0].float()}
