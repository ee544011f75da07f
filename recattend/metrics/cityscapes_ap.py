"""Cityscapes instance-level AP and AP50% with the semantics of the official cityscapesScripts.

Our own implementation of what ``evalInstanceLevelSemanticLabeling.py`` (``assignGt2Preds``,
``evaluateMatches``, ``computeAverages``) computes, without distance-based AP50m / AP100m.

Ground truth is a Cityscapes ``instanceIds`` map: a pixel holds ``label_id * 1000 + k`` on an
instance of a class with instances, and the plain label id elsewhere (stuff, void, and the group /
crowd regions of instance classes, e.g. 26 for a crowd of cars). Each distinct id is a *region*.

Per class c (person 24, rider 25, car 26, truck 27, bus 28, train 31, motorcycle 32, bicycle 33) and
overlap threshold th in 0.50, 0.55, ..., 0.95:

- **GT instances** are the regions with id >= 1000, id // 1000 == c and at least
  :data:`MIN_REGION_SIZE` (100) pixels. Only they count towards recall.
- **Predictions** of class c with at least one pixel are scored; predictions of other label ids
  and empty masks are skipped, as the official script does.
- **Match**: IoU = |p ∩ g| / (|g| + |p| - |p ∩ g|) strictly greater than th (official ``>``). IoU is
  compared exactly as ``20 |p ∩ g| > (20 th) (|g| + |p| - |p ∩ g|)`` on integers; this equals the
  official float64 test, whose ``np.arange`` thresholds lie at or just above k / 20, so an IoU of
  exactly k / 20 never matches there either. For th >= 0.5 a prediction matches at most one GT.
- **Duplicates**: of all predictions matching one GT instance, the highest-scoring one is a TP and
  every other one is an FP (official: the lower score is appended as a false positive).
- **Ignore**: a prediction that matches no GT instance is an FP unless its ignore fraction
  ``ignore_pixels / |p|`` is strictly greater than th, in which case it is dropped (neither TP nor
  FP; official ``proportionIgnore <= overlapTh`` keeps it as an FP). ``ignore_pixels`` counts, as
  the official script does:

  1. prediction pixels on a region whose raw id is a label with ``ignoreInEval`` in the official
     ``labels.py``: :data:`IGNORE_IN_EVAL_LABEL_IDS` = 0..6 (the "void" category: unlabeled, ego
     vehicle, rectification border, out of roi, static, dynamic, ground) plus 9 parking, 10 rail
     track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan group, 30 trailer group.
     The official ``boolVoid`` mask is ``np.in1d(instanceIds, ignoreInEval ids)``, so all of these
     are void there, not only 0..6; caravan / trailer *instances* (29xxx, 30xxx) are not in that
     list, hence not void (a car predicted on a caravan instance is an FP, officially too);
  2. plus prediction pixels on the group region of class c itself (raw id == c; a group of another
     class, e.g. a person predicted on a car crowd, is not ignored);
  3. plus prediction pixels on instances of class c smaller than :data:`MIN_REGION_SIZE`.

  Rules 2 and 3 are added independently, as in the official loop over ``matchedGt``, so a *group*
  region of class c smaller than 100 pixels counts its pixels twice (an official quirk we
  reproduce: it can only turn an FP into an ignored prediction). A prediction whose IoU with an
  ignore region exceeds th is ignored by this rule as well, since then ignore / |p| >= IoU > th,
  which is why the official ``foundGt`` test over group and small regions needs no separate code.

**AP of one class and threshold** (:func:`average_precision`, official ``evaluateMatches``): the
kept predictions of all images are sorted by score; for every distinct score s_0 < ... < s_{U-1},
precision p_i and recall r_i are those of the predictions with score >= s_i (recall over all N_gt
GT instances, matched or not). The curve is closed by an artificial last point p_U = 1, r_U = 0
(precision 1 at recall 0, whatever the precision of the top score group), and

    AP = sum_{i=0..U} p_i * (r_{i-1} - r_{i+1}) / 2,   with r_{-1} := r_0 and r_{U+1} := 0,

the official "step" integration written as a convolution of recall with [-0.5, 0, 0.5]: each
point takes half the recall gap to each neighbour. The artificial point weighs r_{U-1} / 2, so it
adds (1 - p_{U-1}) r_{U-1} / 2 over repeating p_{U-1} there: the two closures differ exactly when
the top score group holds both a TP and an FP (e.g. tied top scores). Example: N_gt = 2, scores
1.0 TP, 1.0 FP, 0.5 TP give p = (2/3, 1/2, 1), r = (1, 1/2, 0), widths (1/4, 1/2, 1/4), and
AP = 1/6 + 1/4 + 1/4 = 2/3 (13/24 if p_U repeated 1/2). There is no monotone precision envelope
and no 101-point sampling (unlike COCO). AP is nan without GT instances, and 0 with GT but no kept
prediction (the official script gives 0 when no prediction of the class exists at all; when
predictions exist but all were ignored it fails on an empty array, and 0 is the consistent value).

**Averages** (official ``computeAverages``): AP of a class is the mean over the 10 thresholds; "ap"
is the mean over classes with GT instances and thresholds (classes without GT are nan and skipped),
"ap50" the same at th = 0.5 only. Values are fractions in [0, 1], not percent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# Evaluated classes (official ``hasInstances and not ignoreInEval``), label ids in official order.
CLASS_LABEL_IDS: dict[str, int] = {
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASS_LABEL_IDS)
# Overlap thresholds k / 20 for k = 10..19 (official ``np.arange(0.5, 1., 0.05)``).
_THRESHOLD_TWENTIETHS: tuple[int, ...] = tuple(range(10, 20))
OVERLAP_THRESHOLDS: tuple[float, ...] = tuple(k / 20 for k in _THRESHOLD_TWENTIETHS)
# GT instances below this many pixels are ignored (official ``minRegionSizes[0]``).
MIN_REGION_SIZE = 100
# instanceIds values >= this encode instances: label_id * INSTANCE_ID_OFFSET + k.
INSTANCE_ID_OFFSET = 1000
# Raw ids of the labels with ``ignoreInEval`` in the official labels.py (license plate -1 omitted:
# it never occurs in an instanceIds map).
IGNORE_IN_EVAL_LABEL_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class ImageMatches(NamedTuple):
    """Matching result of one image: one record per kept (prediction, threshold) pair.

    M records, C = len(CLASS_NAMES) = 8 classes. Ignored predictions have no record at that
    threshold; a kept prediction has one record per threshold at which it is kept.

    Attributes:
        class_index: (M,) int64 index into :data:`CLASS_NAMES`, in [0, 8).
        threshold_index: (M,) int64 index into :data:`OVERLAP_THRESHOLDS`, in [0, 10).
        score: (M,) float64 confidence of the prediction.
        is_tp: (M,) bool, True for a true positive, False for a false positive.
        num_gt: (C,) int64 number of GT instances (>= 100 px) of each class in the image.
    """

    class_index: Tensor
    threshold_index: Tensor
    score: Tensor
    is_tp: Tensor
    num_gt: Tensor


def _check_image(
    pred_masks: Tensor, pred_labels: Tensor, pred_scores: Tensor, gt_ids: Tensor
) -> None:
    """Raise ValueError unless the inputs of one image have the documented shapes and dtypes."""
    if gt_ids.dim() != 2 or gt_ids.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"gt_ids must be an integer (H, W) map, got {gt_ids.dtype} {tuple(gt_ids.shape)}"
        )
    if pred_masks.dtype != torch.bool or pred_masks.dim() != 3:
        raise ValueError(
            f"pred_masks must be a bool (N, H, W) tensor, got {pred_masks.dtype} "
            f"{tuple(pred_masks.shape)}"
        )
    if pred_masks.shape[1:] != gt_ids.shape:
        raise ValueError(
            f"pred_masks {tuple(pred_masks.shape)} and gt_ids {tuple(gt_ids.shape)} differ in size"
        )
    num_pred = pred_masks.shape[0]
    if pred_labels.shape != (num_pred,) or pred_labels.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"pred_labels must be integer ({num_pred},), got {pred_labels.dtype} "
            f"{tuple(pred_labels.shape)}"
        )
    if pred_scores.shape != (num_pred,) or not pred_scores.is_floating_point():
        raise ValueError(
            f"pred_scores must be float ({num_pred},), got {pred_scores.dtype} "
            f"{tuple(pred_scores.shape)}"
        )
    if not torch.isfinite(pred_scores).all():
        raise ValueError("pred_scores must be finite")


def match_image(
    pred_masks: Tensor, pred_labels: Tensor, pred_scores: Tensor, gt_ids: Tensor
) -> ImageMatches:
    """Classify every prediction of one image as TP, FP or ignored, per class and threshold.

    See the module docstring for the exact rules (official ``assignGt2Preds`` plus the per-image
    part of ``evaluateMatches``).

    Args:
        pred_masks: (N, H, W) bool instance masks, True = pixel of the instance; may overlap.
        pred_labels: (N,) integer Cityscapes label ids; only 24..28 and 31..33 are scored, other
            ids are skipped.
        pred_scores: (N,) float finite confidences; higher is more confident.
        gt_ids: (H, W) integer Cityscapes instanceIds map at the same resolution.

    Returns:
        The :class:`ImageMatches` of the image, on gt_ids' device.
    """
    _check_image(pred_masks, pred_labels, pred_scores, gt_ids)
    device = gt_ids.device
    class_ids = torch.tensor(list(CLASS_LABEL_IDS.values()), device=device)

    # Regions: every distinct id of the GT map, with its pixel count.
    region_ids, inverse, region_area = torch.unique(
        gt_ids.reshape(-1).long(), return_inverse=True, return_counts=True
    )
    is_instance = region_ids >= INSTANCE_ID_OFFSET
    region_label = torch.where(is_instance, region_ids // INSTANCE_ID_OFFSET, region_ids)
    is_small = region_area < MIN_REGION_SIZE
    is_gt = is_instance & ~is_small  # official filter: instID >= 1000 and pixelCount >= 100
    is_void = torch.isin(region_ids, torch.tensor(IGNORE_IN_EVAL_LABEL_IDS, device=device))
    num_gt = ((region_label[:, None] == class_ids[None, :]) & is_gt[:, None]).sum(dim=0)

    # Scored predictions: an evaluated class and at least one pixel (official skips the rest).
    flat = pred_masks.flatten(start_dim=1).to(device)
    labels = pred_labels.to(device).long()
    same_label = labels[:, None] == class_ids[None, :]  # (N, C)
    keep = same_label.any(dim=1) & flat.any(dim=1)
    flat, labels, same_label = flat[keep], labels[keep], same_label[keep]
    scores = pred_scores.to(device=device, dtype=torch.float64)[keep]
    class_index = same_label.long().argmax(dim=1)

    # (P, G) intersections from one joint histogram of (prediction, region) over predicted pixels.
    num_pred, num_regions = flat.shape[0], region_ids.numel()
    pred_index, pixel = flat.nonzero(as_tuple=True)
    joint = pred_index * num_regions + inverse[pixel]
    intersection = torch.bincount(joint, minlength=num_pred * num_regions)
    intersection = intersection.view(num_pred, num_regions)
    pred_area = flat.sum(dim=1)
    union = pred_area[:, None] + region_area[None, :] - intersection

    same_class = region_label[None, :] == labels[:, None]  # (P, G)
    candidate = same_class & is_gt[None, :]
    # Ignore weights: void regions, plus this class's group region and small instances, added
    # independently as the official loop does (a small group region counts twice).
    ignore_weight = (
        is_void[None, :].long()
        + (same_class & ~is_instance[None, :]).long()
        + (same_class & is_small[None, :]).long()
    )
    ignore_pixels = (intersection * ignore_weight).sum(dim=1)

    records: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for t, k in enumerate(_THRESHOLD_TWENTIETHS if num_pred else ()):
        # IoU > k / 20 and ignore / |p| > k / 20 in exact integer arithmetic.
        match = candidate & (20 * intersection > k * union)
        matched = match.any(dim=1)
        # The highest-scoring prediction on each matched GT is its TP; the other matches are FPs.
        best = torch.where(match, scores[:, None], -torch.inf).argmax(dim=0)
        is_tp = torch.zeros(num_pred, dtype=torch.bool, device=device)
        is_tp[best[match.any(dim=0)]] = True
        kept = matched | (20 * ignore_pixels <= k * pred_area)
        records.append(
            (class_index[kept], torch.full_like(class_index[kept], t), scores[kept], is_tp[kept])
        )
    if not records:
        empty = class_index.new_empty(0)
        return ImageMatches(empty, empty, scores.new_empty(0), empty.bool(), num_gt)
    cls, thr, score, tp = (torch.cat(column) for column in zip(*records, strict=True))
    return ImageMatches(cls, thr, score, tp, num_gt)


def average_precision(scores: Tensor, is_tp: Tensor, num_gt: int | Tensor) -> Tensor:
    """Official Cityscapes AP of one class at one threshold from the kept predictions of all images.

    Step rule of ``evaluateMatches`` (see the module docstring): precision and recall at every
    distinct score, an artificial last point with precision 1 and recall 0, then
    AP = Σ_i p_i (r_{i-1} - r_{i+1}) / 2 with r_{-1} := r_0 and r_{U+1} := 0. Ties in score form one
    point, so the result does not depend on the order of tied predictions.

    Args:
        scores: (M,) float confidences of the kept predictions (TPs and FPs).
        is_tp: (M,) bool, True for a TP; at most num_gt of them.
        num_gt: number of GT instances (>= 0), matched or not.

    Returns:
        0-d float64 tensor in [0, 1]; nan when num_gt == 0, 0 when there is no prediction.
    """
    num_gt = int(num_gt)
    if num_gt == 0:
        return torch.tensor(torch.nan, dtype=torch.float64, device=scores.device)
    if scores.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=scores.device)
    order = torch.argsort(scores)
    sorted_scores, sorted_tp = scores[order], is_tp[order].long()
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    first = torch.cumsum(counts, dim=0) - counts  # first sorted position of each distinct score
    tp_before = torch.cat([sorted_tp.new_zeros(1), torch.cumsum(sorted_tp, dim=0)])[first]
    tp = (sorted_tp.sum() - tp_before).double()  # TPs with score >= s_i
    num_at_or_above = (sorted_scores.numel() - first).double()
    precision = tp / num_at_or_above
    recall = tp / num_gt
    # Artificial last point closing the curve: precision 1 at recall 0 (official
    # ``precision[-1] = 1.``, ``recall[-1] = 0.``), not the precision of the top score group.
    precision = torch.cat([precision, precision.new_ones(1)])
    recall = torch.cat([recall, recall.new_zeros(1)])
    # Step widths (r_{i-1} - r_{i+1}) / 2 with r_{-1} := r_0 and r_{U+1} := 0: the official
    # convolution of [r_0, r_0, ..., r_U, 0] with [-0.5, 0, 0.5] in "valid" mode.
    padded = torch.cat([recall[:1], recall, recall.new_zeros(1)])
    widths = (padded[:-2] - padded[2:]) / 2
    return (precision * widths).sum()


class CityscapesAP(Metric):
    """Official Cityscapes instance-level AP and AP50%, accumulated over images (DDP-safe).

    ``update(pred_masks, pred_labels, pred_scores, gt_ids)`` takes one list entry per image (images
    may differ in size and instance count); see :func:`match_image` for each entry's shapes. The
    states are the per-(prediction, threshold) records of :func:`match_image`, gathered with
    ``cat`` under DDP, and per-class GT counts summed over ranks, so every image counts once and the
    result equals the single-process one.

    ``compute()`` returns 0-d float32 tensors in [0, 1] (not percent): ``"ap"`` (mean over classes
    with GT and the 10 thresholds), ``"ap50"`` (threshold 0.5 only) and ``"ap_<class>"`` for every
    name of :data:`CLASS_NAMES` (mean over thresholds; nan for a class without GT). ``"ap"`` and
    ``"ap50"`` are nan when no class has GT.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("class_index", default=[], dist_reduce_fx="cat")
        self.add_state("threshold_index", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("is_tp", default=[], dist_reduce_fx="cat")
        num_gt = torch.zeros(len(CLASS_NAMES), dtype=torch.long)
        self.add_state("num_gt", default=num_gt, dist_reduce_fx="sum")

    def update(
        self,
        pred_masks: list[Tensor],
        pred_labels: list[Tensor],
        pred_scores: list[Tensor],
        gt_ids: list[Tensor],
    ) -> None:
        """Match the predictions of each image of a batch against its instanceIds map.

        Args:
            pred_masks: per image, (N_i, H_i, W_i) bool masks.
            pred_labels: per image, (N_i,) integer Cityscapes label ids.
            pred_scores: per image, (N_i,) float confidences.
            gt_ids: per image, (H_i, W_i) integer instanceIds map.
        """
        if not len(pred_masks) == len(pred_labels) == len(pred_scores) == len(gt_ids):
            raise ValueError(
                "expected one entry per image in every list, got "
                f"{len(pred_masks)}, {len(pred_labels)}, {len(pred_scores)}, {len(gt_ids)}"
            )
        if not gt_ids:
            return
        matches = [
            match_image(m, lab, s, g)
            for m, lab, s, g in zip(pred_masks, pred_labels, pred_scores, gt_ids, strict=True)
        ]
        # One (possibly empty) tensor per state and update, so every rank has something to gather.
        self.class_index.append(torch.cat([m.class_index for m in matches]).to(self.device))
        self.threshold_index.append(torch.cat([m.threshold_index for m in matches]).to(self.device))
        self.score.append(torch.cat([m.score for m in matches]).to(self.device))
        self.is_tp.append(torch.cat([m.is_tp for m in matches]).to(self.device))
        self.num_gt += torch.stack([m.num_gt for m in matches]).sum(dim=0).to(self.num_gt)

    def _records(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All records seen (all ranks after sync): class index, threshold index, score, is_tp."""
        states = (self.class_index, self.threshold_index, self.score, self.is_tp)
        if isinstance(self.class_index, list) and not self.class_index:
            dtypes = (torch.long, torch.long, torch.float64, torch.bool)
            return tuple(torch.empty(0, dtype=d, device=self.device) for d in dtypes)
        return tuple(dim_zero_cat(s) for s in states)

    def compute(self) -> dict[str, Tensor]:
        """``{"ap", "ap50", "ap_<class>"...}`` over all images seen, as 0-d float32 tensors."""
        class_index, threshold_index, score, is_tp = self._records()
        ap = torch.full(
            (len(CLASS_NAMES), len(OVERLAP_THRESHOLDS)),
            torch.nan,
            dtype=torch.float64,
            device=self.device,
        )
        for c, num_gt in enumerate(self.num_gt.tolist()):
            if num_gt == 0:
                continue  # nan: official computeAverages skips the class with nanmean
            for t in range(len(OVERLAP_THRESHOLDS)):
                selected = (class_index == c) & (threshold_index == t)
                ap[c, t] = average_precision(score[selected], is_tp[selected].bool(), num_gt)
        has_gt = self.num_gt > 0
        out = {"ap": ap[has_gt].mean(), "ap50": ap[has_gt, 0].mean()}
        out |= {f"ap_{name}": ap[c].mean() for c, name in enumerate(CLASS_NAMES)}
        return {key: value.float() for key, value in out.items()}
