"""``per_image.csv``: one row of scores per evaluated image, for error analysis and paired tests.

Columns, in order: ``id``, ``height``, ``width`` (of the label maps scored: the original size for
file datasets), ``sbd``, ``sbd_recattend``, ``fg_dice`` (fractions in [0, 1]), ``pred_count``,
``gt_count`` (integers), ``mwcov``, ``mucov`` (fractions), ``fp``, ``fn`` (counts, written as
floats). Rows are sorted by ``str(id)``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from recattend.metrics import (
    count_instances,
    coverage_scores,
    foreground_dice,
    recattend_sbd,
    symmetric_best_dice,
)

FILENAME = "per_image.csv"


def image_row(
    image_id: Any, timesteps: Tensor, pred: Tensor, target: Tensor, gt_count: int | Tensor
) -> dict[str, Any]:
    """The scores of one image.

    Args:
        image_id: the sample's ``meta["id"]``.
        timesteps: (H, W) int64 slot map (slot t + 1 per pixel), what rec-attend's SBD reads.
        pred: (H, W) integer final label map, 0 = background.
        target: (H, W) integer ground-truth label map, 0 = background.
        gt_count: the true number of ground-truth instances (may exceed those ``target`` holds).

    Returns:
        The row, keyed by the columns of the module docstring.
    """
    coverage = coverage_scores(pred, target)
    return {
        "id": image_id,
        "height": int(target.shape[0]),
        "width": int(target.shape[1]),
        "sbd": float(symmetric_best_dice(pred, target)),
        "sbd_recattend": float(recattend_sbd(timesteps, target)),
        "fg_dice": float(foreground_dice(pred, target)),
        "pred_count": int(count_instances(pred)),
        "gt_count": int(gt_count),
        **{k: float(v) for k, v in coverage._asdict().items()},
    }


def write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` (all of :func:`image_row`'s keys) to ``path`` sorted by ``str(id)``,
    creating its folder; nothing is written for no row."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: str(row["id"])))
