"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml) and config resolvers.

Resolvers (registered on import, which importing ``recattend.utils`` does):

* ``${sweep_group:<task_name>}``: the W&B group, ``<task_name>-<sweep folder name>`` inside a
  multirun, so a sweep's jobs are grouped together; otherwise ``<task_name>``.
* ``${sweep_job_name:}``: the W&B run name, the job's overrides (``model=iter1``) inside a
  multirun; otherwise None (W&B picks one).
* ``${run_dir:<runs folder>,<ckpt_path>,<train>}``: a single run's folder (``hydra.run.dir``):
  the folder of the run being resumed, or a new one named by the launch (see :func:`run_dir`).
"""

from __future__ import annotations

import os
from datetime import datetime
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


# When this process started: a run folder's time stamp. Fixed once, because the folder name is
# resolved more than once per process (Hydra creates the folder; Lightning's DDP launcher reads
# hydra.run.dir again to send ranks 1..N there), like Hydra's cached ${now:} resolver.
_STARTED = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def launch_name() -> str:
    """A new run folder's name, the same in every process of one launch.

    Processes started together by torchrun or srun each compose the config themselves, and their
    clocks may straddle a second: they use the launch's id (``torchrun-<TORCHELASTIC_RUN_ID>``,
    ``slurm-<job>.<step>``) so all ranks write to one folder. A single process uses its start time.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm-{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return _STARTED


def run_dir(runs: str, ckpt_path: str | None = None, train: bool = False) -> str:
    """``hydra.run.dir`` of a single run: a training run given a checkpoint continues in that
    checkpoint's run folder, so checkpoints, CSV, learning curve and W&B run carry on.

    * ``ckpt_path=last``: the run under ``runs`` whose ``checkpoints/last.ckpt`` was written most
      recently (an error if there is none);
    * ``ckpt_path=<run>/checkpoints/<file>.ckpt``: ``<run>``;
    * otherwise (no checkpoint, a checkpoint kept elsewhere, or not training): a new folder
      ``runs/<launch name>`` (:func:`launch_name`).
    """
    if train and ckpt_path == "last":
        found = list(Path(runs).glob("*/checkpoints/last.ckpt"))
        if not found:
            raise ValueError(
                f"ckpt_path=last: no run under '{runs}' has checkpoints/last.ckpt to resume. Pass "
                "the checkpoint itself (ckpt_path=<run>/checkpoints/<file>.ckpt), or check "
                "task_name and paths.log_dir (RECATTEND_OUTPUTS)"
            )
        return str(max(found, key=lambda p: p.stat().st_mtime).parent.parent)
    if train and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).absolute().parent.parent)
    return str(Path(runs) / launch_name())


OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)
