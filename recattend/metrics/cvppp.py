"""Official CVPPP leaf segmentation and counting metrics: SBD, DiC and |DiC| (metrics.md).

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

from recattend.metrics.overlap import instance_overlaps
from recattend.postprocess import relabel_consecutive

_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def best_dice(dice: Tensor) -> Tensor:
    """BD(A, B) = (1/|A|) Σ_{a ∈ A} max_{b ∈ B} Dice(a, b) from the Dice matrix of A against B.

    BD = 0 when A has no instance (official definition), and each max is 0 when B has none.

    Args:
        dice: (|A|, |B|) float Dice of every instance of A with every instance of B.

    Returns:
        0-d float tensor in [0, 1].
    """
    if dice.numel() == 0:
        return dice.new_zeros(())
    return dice.amax(dim=1).mean()


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


def count_instances(labels: Tensor) -> Tensor:
    """Number of non-empty instances (distinct non-zero labels) of one label map.

    Args:
        labels: (H, W) integer label map, 0 = background.

    Returns:
        0-d int64 tensor >= 0.
    """
    return (torch.unique(labels) != 0).sum()


def _check_label_maps(pred: Tensor, target: Tensor) -> None:
    """Raise ValueError unless pred and target are integer (B, H, W) label maps of one shape."""
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            "expected pred and target label maps of one shape (B, H, W), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dtype not in _LABEL_DTYPES or target.dtype not in _LABEL_DTYPES:
        raise ValueError(f"label maps must be integer tensors, got {pred.dtype} and {target.dtype}")


def _mean_std(name: str, values: Tensor) -> dict[str, Tensor]:
    """``{name: mean, name_std: population std}`` of per-image values."""
    return {name: values.mean(), f"{name}_std": values.std(correction=0)}


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
        _check_label_maps(pred, target)
        sbd = [symmetric_best_dice(p, t) for p, t in zip(pred, target, strict=True)]
        self.sbd.append(torch.stack(sbd))

    def compute(self) -> dict[str, Tensor]:
        """``{"sbd": mean, "sbd_std": population std}`` over all images seen (all ranks)."""
        return _mean_std("sbd", dim_zero_cat(self.sbd))


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
        _check_label_maps(pred, target)
        pred_counts = torch.stack([count_instances(p) for p in pred])
        if target_counts is None:
            target_counts = torch.stack([count_instances(t) for t in target])
        self.dic.append((pred_counts - target_counts.to(pred_counts)).float())

    def compute(self) -> dict[str, Tensor]:
        """Mean and population std of DiC and |DiC| over all images seen (all ranks)."""
        dic = dim_zero_cat(self.dic)
        return _mean_std("dic", dic) | _mean_std("abs_dic", dic.abs())
