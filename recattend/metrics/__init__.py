"""Evaluation metrics with their exact definitions (each module states the definition it computes).

Instance metrics share one pairwise-overlap helper (:mod:`recattend.metrics.overlap`: overlaps,
best matches, 0/0-safe ratios) and one input check and summary (:mod:`recattend.metrics.per_image`);
the torchmetrics classes keep per-image values so mean and std are over images, also under DDP.
"""

from torch import nn

from recattend.metrics.cityscapes_ap import CityscapesAP, average_precision, match_image
from recattend.metrics.cvppp import (
    DifferenceInCount,
    ForegroundDice,
    RecAttendSBD,
    SymmetricBestDice,
    best_dice,
    count_instances,
    foreground_dice,
    recattend_sbd,
    symmetric_best_dice,
)
from recattend.metrics.kitti import Coverage, CoverageScores, coverage_scores
from recattend.metrics.overlap import Overlaps, best_match, instance_overlaps, safe_ratio
from recattend.metrics.per_image import LABEL_DTYPES, check_label_maps, mean_std


def instance_metrics() -> nn.ModuleDict:
    """Every label-map metric, keyed as the module passes inputs: official SBD (``sbd``), DiC and
    |DiC| (``dic``), rec-attend's SBD (``sbd_recattend``, on timestep maps), FgBgDice
    (``fg_dice``) and the KITTI coverage scores (``coverage``: MWCov, MUCov, AvgFP, AvgFN)."""
    return nn.ModuleDict(
        {
            "sbd": SymmetricBestDice(),
            "dic": DifferenceInCount(),
            "sbd_recattend": RecAttendSBD(),
            "fg_dice": ForegroundDice(),
            "coverage": Coverage(),
        }
    )


__all__ = [
    "LABEL_DTYPES",
    "CityscapesAP",
    "Coverage",
    "CoverageScores",
    "DifferenceInCount",
    "ForegroundDice",
    "Overlaps",
    "RecAttendSBD",
    "SymmetricBestDice",
    "average_precision",
    "best_dice",
    "best_match",
    "check_label_maps",
    "count_instances",
    "coverage_scores",
    "foreground_dice",
    "instance_metrics",
    "instance_overlaps",
    "match_image",
    "mean_std",
    "recattend_sbd",
    "safe_ratio",
    "symmetric_best_dice",
]
