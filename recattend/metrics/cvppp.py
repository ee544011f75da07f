"""CVPPP leaf segmentation and counting metrics (the CVPPP 2017 scorer's definitions).

Official definitions: SBD, DiC, |DiC| and the CVPPP 2017 scorer's FgBgDice. Also rec-attend's own
SBD variant (the authors' evaluation code), to compare with the paper's validation numbers.

Every image gets its own value, kept in a list state gathered with ``cat`` under DDP, so each image
counts exactly once and ``compute()`` reports the mean and population standard deviation over
images, as the published "mean (std)" tables do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from recattend.metrics.overlap import best_match, instance_overlaps, safe_ratio
from recattend.metrics.per_image import check_label_maps, mean_std
from recattend.postprocess import relabel_consecutive


def best_dice(dice: Tensor) -> Tensor:
    """BD(A, B) = (1/|A|) Σ_{a ∈ A} max_{b ∈ B} Dice(a, b) from the Dice matrix of A against B.

    BD = 0 when A has no instance (official definition), and each max is 0 when B has none.

    Args:
        dice: (|A|, |B|) float Dice of every instance of A with every instance of B.

    Returns:
        0-d float tensor in [0, 1].
    """
    best = best_match(dice)
    return best.sum() / max(best.numel(), 1)


def symmetric_best_dice(pred: Tensor, target: Tensor) -> Tensor:
    """Official CVPPP SBD of one image: min(BD(pred, gt), BD(gt, pred)).

    Both maps are renumbered to consecutive ids first, so gaps or offsets in ids do not matter.
    An empty prediction scores 0; so does an image whose ground truth is empty, whatever the
    prediction, because BD of an empty set is 0 (literal official definition).

    Args:
        pred: (H, W) integer predicted label map, 0 = background.
        target: (H, W) integer ground-truth label map, 0 = background.

    Returns:
        0-d float32 tensor in [0, 1].
    """
    dice = instance_overlaps(relabel_consecutive(pred), relabel_consecutive(target)).dice()
    return torch.minimum(best_dice(dice), best_dice(dice.T))


def recattend_sbd(pred: Tensor, target: Tensor) -> Tensor:
    """rec-attend's own SBD of one image (authors' evaluation code, not the official SBD).

    With outputs y_1..y_T in model order, ground-truth instances g_1..g_N and N' = max(N, 1)::

        SBD_recattend = min((1/N') Σ_{t<N'} max_j Dice(y_t, g_j),
                            (1/N') Σ_{j<N'} max_t Dice(g_j, y_t))

    Only the first N' outputs count in the first term, so the value depends on the output order
    and differs from the official SBD whenever #pred != #gt (e.g. an extra output after the N'-th
    is ignored here but halves the official BD(pred, gt) of a one-instance image).

    ``pred`` is NOT renumbered: its ids are the model's timestep slots, id t + 1 = output y_t
    (t = 0..T-1), and an id absent from the map is an empty output that still takes its slot.
    Renumbering would move later outputs into the first N' slots and change the score. Empty
    outputs after the largest id present score 0 in both terms, so they need not be represented.
    Note that the post-processing's ``labels`` skip timesteps left without a pixel when they
    number instances: they are the right input only when no output before the N'-th is empty;
    otherwise pass its ``timesteps`` (:class:`recattend.postprocess.Instances`), the map
    labelled timestep + 1.

    ``target`` is renumbered to consecutive ids. The authors sort the GT by area, largest first,
    so that their first N' GT slots are exactly the non-empty instances of a padded stack; after
    renumbering every GT instance is non-empty and N' = N (or there is none), so both terms run
    over all of them and their order does not change the value: no sort is needed.

    Images with no GT score 0 whatever the prediction (N' = 1 and the max over no GT is 0).

    Args:
        pred: (H, W) integer label map of outputs in model order, 0 = background, id t + 1 =
            output t (keep ids small: the overlap histogram has one row per id up to the max).
        target: (H, W) integer ground-truth label map, 0 = background, any instance ids.

    Returns:
        0-d float32 tensor in [0, 1].
    """
    dice = instance_overlaps(pred, relabel_consecutive(target)).dice()  # (T, N)
    slots = max(dice.shape[1], 1)
    # Rows past the last id present are empty outputs: scoring 0, they add nothing to the sums.
    outputs_to_gt = best_match(dice[:slots]).sum()
    gt_to_outputs = best_match(dice.T).sum()
    return torch.minimum(outputs_to_gt, gt_to_outputs) / slots


def foreground_dice(pred: Tensor, target: Tensor) -> Tensor:
    """FgBgDice of one image (CVPPP 2017 scorer): Dice(pred > 0, target > 0).

    Instance ids do not matter, only foreground versus background. 0 when both are empty
    (the scorer's convention: 0 when the denominator is 0).

    Args:
        pred: (H, W) integer predicted label map, 0 = background.
        target: (H, W) integer ground-truth label map of the same shape, 0 = background.

    Returns:
        0-d float32 tensor in [0, 1].
    """
    pred_fg, target_fg = pred > 0, target > 0
    return safe_ratio(2 * (pred_fg & target_fg).sum(), pred_fg.sum() + target_fg.sum())


def count_instances(labels: Tensor) -> Tensor:
    """Number of non-empty instances (distinct non-zero labels) of one label map.

    Args:
        labels: (H, W) integer label map, 0 = background.

    Returns:
        0-d int64 tensor >= 0.
    """
    return (torch.unique(labels) != 0).sum()


class SymmetricBestDice(Metric):
    """Official CVPPP Symmetric Best Dice, per image, then mean and population std over images.

    ``update(pred, target)`` takes (B, H, W) integer label maps (0 = background) at the ground
    truth's resolution; see :func:`symmetric_best_dice` for the per-image value, empty cases
    included. ``compute()`` (after at least one image) returns ``{"sbd", "sbd_std"}`` as 0-d float32
    tensors in [0, 1] (not percent).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sbd", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the SBD of each image of a batch of (B, H, W) integer label maps."""
        check_label_maps(pred, target)
        sbd = [symmetric_best_dice(p, t) for p, t in zip(pred, target, strict=True)]
        self.sbd.append(torch.stack(sbd))

    def compute(self) -> dict[str, Tensor]:
        """``{"sbd": mean, "sbd_std": population std}`` over all images seen (all ranks)."""
        return mean_std("sbd", dim_zero_cat(self.sbd))


class DifferenceInCount(Metric):
    """CVPPP Difference in Count DiC = #pred - #gt and |DiC|, per image, then over images.

    Counts are numbers of non-empty instances (distinct non-zero labels), so ids need no
    renumbering. ``update(pred, target)`` takes (B, H, W) integer label maps (0 = background).
    ``compute()`` (after at least one image) returns ``{"dic", "dic_std", "abs_dic",
    "abs_dic_std"}``: means and population stds over images as 0-d float32 tensors.
    """

    is_differentiable = False
    higher_is_better = None  # signed DiC is best at 0, neither high nor low
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("dic", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor, target_counts: Tensor | None = None) -> None:
        """Add the signed DiC of each image of a batch of (B, H, W) integer label maps.

        ``target_counts`` (B,) overrides the ground-truth counts read from ``target``: the batch
        contract's true ``num_instances``, which may exceed the instances a truncated label map
        holds.
        """
        check_label_maps(pred, target)
        pred_counts = torch.stack([count_instances(p) for p in pred])
        if target_counts is None:
            target_counts = torch.stack([count_instances(t) for t in target])
        self.dic.append((pred_counts - target_counts.to(pred_counts)).float())

    def compute(self) -> dict[str, Tensor]:
        """Mean and population std of DiC and |DiC| over all images seen (all ranks)."""
        dic = dim_zero_cat(self.dic)
        return mean_std("dic", dic) | mean_std("abs_dic", dic.abs())


class RecAttendSBD(Metric):
    """rec-attend's own SBD variant, per image, then mean and population std over images.

    ``update(pred, target)`` takes (B, H, W) integer label maps (0 = background): ``pred`` with id
    t + 1 = the model's output t, absent ids being empty outputs (not renumbered), ``target`` with
    any ids; see :func:`recattend_sbd`. Use it to compare with the paper's own validation numbers,
    :class:`SymmetricBestDice` for published tables. ``compute()`` (after at least one image)
    returns ``{"sbd_recattend", "sbd_recattend_std"}`` as 0-d float32 tensors in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sbd_recattend", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the rec-attend SBD of each image of a batch of (B, H, W) integer label maps."""
        check_label_maps(pred, target)
        sbd = [recattend_sbd(p, t) for p, t in zip(pred, target, strict=True)]
        self.sbd_recattend.append(torch.stack(sbd))

    def compute(self) -> dict[str, Tensor]:
        """Mean and population std of the rec-attend SBD over all images seen (all ranks)."""
        return mean_std("sbd_recattend", dim_zero_cat(self.sbd_recattend))


class ForegroundDice(Metric):
    """FgBgDice = Dice(pred > 0, target > 0), per image, then mean and population std over images.

    ``update(pred, target)`` takes (B, H, W) integer label maps (0 = background); see
    :func:`foreground_dice`. ``compute()`` (after at least one image) returns
    ``{"fg_dice", "fg_dice_std"}`` as 0-d float32 tensors in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("fg_dice", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the foreground Dice of each image of a batch of (B, H, W) integer label maps."""
        check_label_maps(pred, target)
        dice = [foreground_dice(p, t) for p, t in zip(pred, target, strict=True)]
        self.fg_dice.append(torch.stack(dice))

    def compute(self) -> dict[str, Tensor]:
        """Mean and population std of the foreground Dice over all images seen (all ranks)."""
        return mean_std("fg_dice", dim_zero_cat(self.fg_dice))
