"""Evaluation metrics with their exact definitions (reference/metrics.md).

Instance metrics share one pairwise-overlap helper (:mod:`recattend.metrics.overlap`); the
torchmetrics classes keep per-image values so mean and std are over images, also under DDP.
"""

from recattend.metrics.cvppp import (
    DifferenceInCount,
    SymmetricBestDice,
    best_dice,
    count_instances,
    symmetric_best_dice,
)
from recattend.metrics.overlap import Overlaps, instance_overlaps

__all__ = [
    "DifferenceInCount",
    "Overlaps",
    "SymmetricBestDice",
    "best_dice",
    "count_instances",
    "instance_overlaps",
    "symmetric_best_dice",
]
