"""The test split's predictions in W&B: a table to sort and browse, and ``per_image.csv``.

With ``logger.wandb.log_predictions=N`` (N > 0), the first N test images of every rank (in the
order they are scored) become rows of the W&B table ``test/predictions``: the image as the
network saw it, the predicted instances over it (:func:`~recattend.evaluation.export.overlay`),
SBD, |DiC| and the number of instances, scored as the test split is (at the original size for
file datasets). Both pictures are shrunk to at most :data:`SIDE` pixels a side. The same table,
with the run's ``per_image.csv`` when the test evaluator writes one, also goes into the artifact
``test_predictions``: W&B's offline runs keep a logged table's pictures only in an artifact.
Offline runs keep everything for ``wandb sync``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import Tensor

from recattend.evaluation.distributed import all_gather_objects, is_global_zero
from recattend.evaluation.export import overlay
from recattend.metrics import count_instances, symmetric_best_dice

SIDE = 256  # the largest side of the table's pictures (px)
COLUMNS = ("id", "image", "overlay", "sbd", "abs_dic", "count")


class PredictionGallery:
    """Collects up to ``size`` test images with their predictions on each rank (module docstring).

    Args:
        size: the most images kept per rank.

    Attributes:
        rows: this rank's rows: ``id``, ``image`` and ``overlay`` (uint8 RGB arrays), ``sbd``,
            ``abs_dic``, ``count``.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"logger.wandb.log_predictions={size}: use 0 (none) or more")
        self.size = size
        self.rows: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.rows = []

    def add(
        self, image_id: Any, image: Tensor, labels: Tensor, target: Tensor, gt_count: int
    ) -> None:
        """One scored image, while fewer than ``size`` are kept.

        Args:
            image: (C, h, w) float in [0, 1], as the network saw it.
            labels: (H, W) int64 predicted instances, at the resolution scored.
            target: (H, W) integer ground truth at that resolution.
            gt_count: the true number of ground-truth instances.
        """
        if len(self.rows) >= self.size:
            return
        pixels = (image[:3].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
        pixels = pixels.cpu().numpy()
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        h, w = pixels.shape[:2]
        scale = min(1.0, SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2: (width, height)
        shown = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        mapped = cv2.resize(
            labels.cpu().numpy().astype(np.int32), size, interpolation=cv2.INTER_NEAREST_EXACT
        )
        count = int(count_instances(labels))
        self.rows.append(
            {
                "id": str(image_id),
                "image": shown,
                "overlay": overlay(shown, mapped),
                "sbd": float(symmetric_best_dice(labels, target)),
                "abs_dic": abs(count - int(gt_count)),
                "count": count,
            }
        )

    def log(self, loggers: Iterable[Any], output_dir: Path | None, per_image: str) -> None:
        """Log every rank's rows as the table ``test/predictions``, and the artifact
        ``test_predictions`` of that table and ``output_dir/per_image`` (when it exists), to
        each W&B logger (global rank 0; a collective under DDP: every rank calls it)."""
        rows = all_gather_objects(self.rows)
        if not is_global_zero():
            return
        import wandb

        csv = output_dir / per_image if output_dir is not None else None
        for logger in loggers:
            data = [
                [r["id"], wandb.Image(r["image"]), wandb.Image(r["overlay"]), r["sbd"],
                 r["abs_dic"], r["count"]]
                for r in rows
            ]  # fmt: skip
            table = wandb.Table(columns=list(COLUMNS), data=data)
            logger.experiment.log({"test/predictions": table})
            artifact = wandb.Artifact("test_predictions", type="evaluation")
            artifact.add(table, "predictions")
            if csv is not None and csv.is_file():
                artifact.add_file(str(csv))
            logger.experiment.log_artifact(artifact)
