"""Lightning's CSV logger, made safe to append to an existing ``metrics.csv``.

Lightning 2.6's writer starts every process with an empty column list; when it later adds a column
it rewrites the file with only the columns it knows, and rows written earlier by another process
(``trainer.fit`` then ``trainer.test`` under ``ddp_spawn``, where the writer is created before the
fit and copied into each stage's processes) or by an earlier run (resume into the same folder) fail
with "dict contains fields not in fieldnames". This writer adds the header already in the file to
its columns before each save, so old rows and columns are kept.
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
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
