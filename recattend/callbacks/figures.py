"""Saves (and logs to W&B) the module's picture of a few validation images after each validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch


class ValidationFigures(L.Callback):
    """Asks the module for ``figure(batch) -> (H, W, 3) uint8 RGB`` on the first ``num_images``
    images of the validation loop's first batch.

    The segmenter draws the paper's Figure 1 (attention, box, step mask, masks so far per step),
    the pre-processor Figure 3 (input, foreground, angle map), each with its rows and columns
    named and a legend of its colours (:mod:`recattend.visualise`). Files go to
    ``<run dir>/figures/val_step<step>.png``; W&B loggers get them under ``val/figure``.

    Args:
        num_images: validation images drawn.
    """

    def __init__(self, num_images: int = 2) -> None:
        self.num_images = num_images
        self._batch: dict[str, Any] | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # The validation loop's own first batch (already on the device): a DataLoader made here
        # would start worker processes again at every validation.
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self._batch = {k: v[: self.num_images] for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if batch is None or not trainer.is_global_zero:
            return
        with torch.no_grad():
            picture: np.ndarray = pl_module.figure(batch)
        path = Path(trainer.default_root_dir) / "figures" / f"val_step{trainer.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        for logger in trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.WandbLogger):
                logger.log_image(key="val/figure", images=[str(path)], step=trainer.global_step)
