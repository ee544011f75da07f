"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml) and config resolvers.

Resolvers (registered on import, which importing ``recattend.utils`` does):

* ``${sweep_group:<task_name>}``: the W&B group, ``<task_name>-<sweep folder name>`` inside a
  multirun, so a sweep's jobs are grouped together; otherwise ``<task_name>``.
* ``${sweep_job_name:}``: the W&B run name, the job's overrides (``model=iter1``) inside a
  multirun; otherwise None (W&B picks one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recattend.utils.config import require_writable_dir


class OutputDirCheck(Callback):
    """Fails before Hydra creates the run folder if it could not be written.

    Hydra would otherwise stop with a bare ``PermissionError`` from ``mkdir``; this names the
    setting to change.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        require_writable_dir(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        require_writable_dir(OmegaConf.select(config, "hydra.sweep.dir"), "hydra.sweep.dir")


def _multirun_job() -> Any | None:
    """The Hydra config of the running multirun job, or None outside a multirun."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get()
    return None


def sweep_group(task_name: str) -> str:
    """W&B group of a run: its sweep inside a multirun, else the task name."""
    job = _multirun_job()
    return f"{task_name}-{Path(job.sweep.dir).name}" if job else task_name


def sweep_job_name() -> str | None:
    """W&B run name inside a multirun: the job's overrides (or its number)."""
    job = _multirun_job()
    return (job.job.override_dirname or str(job.job.num)) if job else None


OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)
