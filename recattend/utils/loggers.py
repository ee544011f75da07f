"""Logger helpers: a CSV logger safe to append to, and W&B run ids and tables.

``CSVLogger``: Lightning's CSV logger, made safe to append to an existing ``metrics.csv``.

Lightning 2.6's writer starts every process with an empty column list; when it later adds a column
it rewrites the file with only the columns it knows, and rows written earlier by another process
(``trainer.fit`` then ``trainer.test`` under ``ddp_spawn``, where the writer is created before the
fit and copied into each stage's processes) or by an earlier run (resume into the same folder) fail
with "dict contains fields not in fieldnames". This writer adds the header already in the file to
its columns before each save, so old rows and columns are kept.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """An ``ExperimentWriter`` that knows the columns of an existing metrics file."""

    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        return super()._record_new_keys()

    def _check_log_dir_exists(self) -> None:
        """Nothing to warn about: existing metrics are kept, not overwritten."""


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to an existing ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose checkpoint artifacts work offline too.

    Lightning refuses ``log_model`` with ``offline=True`` because nothing can be uploaded, but W&B
    records offline artifacts (the checkpoint is staged in W&B's data folder) and ``wandb sync``
    uploads them with the run. Offline with ``log_model`` therefore runs W&B in offline mode
    itself (``mode="offline"``) instead of through Lightning's switch.

    It also leaves out Lightning's ``anonymous=None``, which W&B answers with "The anonymous
    setting has no effect" on every run.

    Args:
        log_predictions: how many test images per process (with their predictions, SBD,
            |DiC| and count) the :class:`~recattend.evaluation.Evaluate` callback logs as the
            table ``test/predictions``, with ``per_image.csv`` as an artifact; 0: none.
        offline, log_model, kwargs: Lightning's ``WandbLogger``'s.
    """

    def __init__(
        self,
        *,
        offline: bool = False,
        log_model: bool | str = False,
        log_predictions: int = 0,
        **kwargs: Any,
    ):
        if log_predictions < 0:
            raise ValueError(f"logger.wandb.log_predictions={log_predictions}: use 0 or more")
        self.log_predictions = int(log_predictions)
        if offline and log_model:
            offline, kwargs["mode"] = False, "offline"
        super().__init__(offline=offline, log_model=log_model, **kwargs)
        # Lightning always passes anonymous (None unless asked for), and W&B (0.31) warns that
        # the setting has no effect whenever it is given: leave it unset.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


# W&B run folders: offline-run-<YYYYmmdd_HHMMSS>-<id> (offline) or run-<...>-<id> (online).
_WANDB_RUN = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(\w+)$")


def previous_wandb_id(wandb_dir: Path) -> str | None:
    """The id of the newest W&B run recorded under ``wandb_dir`` (a run folder's ``wandb/``)."""
    runs = [m for p in wandb_dir.glob("*run-*") if (m := _WANDB_RUN.match(p.name))]
    return max(runs, key=lambda m: m.group(1)).group(2) if runs else None


def log_metrics_table(loggers: Iterable[Any], metrics: Mapping[str, float | None]) -> None:
    """Log the final ``<split>/<metric>`` values as one W&B table (key ``metrics_table``): a row
    per split (train, val, test), a column per metric name. Loggers other than W&B are skipped."""
    wandb_loggers = [logger for logger in loggers if isinstance(logger, LightningWandbLogger)]
    if not wandb_loggers or not metrics:
        return
    found = {key.split("/", 1)[0] for key in metrics if "/" in key}
    splits = [s for s in ("train", "val", "test") if s in found] + sorted(
        found - {"train", "val", "test"}
    )
    names = sorted({key.split("/", 1)[1] for key in metrics if "/" in key})
    rows = [[split, *(metrics.get(f"{split}/{name}") for name in names)] for split in splits]
    for logger in wandb_loggers:
        logger.log_table(key="metrics_table", columns=["split", *names], data=rows)


def finish_wandb() -> None:
    """End the W&B run if one is open, so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")  # only if a W&B logger was used
    if wandb is not None and wandb.run is not None:
        wandb.finish()
