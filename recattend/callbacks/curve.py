"""A learning curve against wall-clock time: validation metrics with the minutes elapsed."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L


class LearningCurve(L.Callback):
    """Appends ``minutes, step, <val metrics>`` to ``<run dir>/learning_curve.csv`` after each
    validation (rank zero only), so a time-budgeted run shows how held-out quality grew.

    Args:
        filename: file name inside the trainer's ``default_root_dir``.
    """

    def __init__(self, filename: str = "learning_curve.csv") -> None:
        self.filename = filename
        self.start = time.monotonic()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row = {
            "minutes": round((time.monotonic() - self.start) / 60, 2),
            "step": trainer.global_step,
            **values,
        }
        path = Path(trainer.default_root_dir) / self.filename
        new = not path.exists()
        with path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
