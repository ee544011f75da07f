"""A learning curve against wall-clock time: validation metrics with the minutes elapsed."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn


class LearningCurve(L.Callback):
    """Appends ``minutes, step, <val metrics>`` to ``<run dir>/learning_curve.csv`` after each
    validation (rank zero only), so a time-budgeted run shows how held-out quality grew. The
    minutes survive a resume (kept in checkpoints): they count training time, not downtime.

    Args:
        filename: file name inside the trainer's ``default_root_dir``.
    """

    def __init__(self, filename: str = "learning_curve.csv") -> None:
        self.filename = filename
        self.start = time.monotonic()
        self.earlier = 0.0  # minutes trained before a resume (restored from the checkpoint)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.monotonic()

    def minutes(self) -> float:
        """Training minutes so far, those of the run before a resume included."""
        return self.earlier + (time.monotonic() - self.start) / 60

    def state_dict(self) -> dict[str, float]:
        return {"minutes": self.minutes()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.earlier = float(state_dict["minutes"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Points of the training only: not the sanity check, nor a trainer.validate afterwards.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not trainer.is_global_zero or trainer.sanity_checking or not fitting:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        row = {
            "minutes": round(self.minutes(), 2),
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
