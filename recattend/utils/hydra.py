"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml) and config resolvers.

Resolvers (registered on import, by whatever composes the configs):

* ``${sweep_group:<task_name>}``: the W&B group, ``<task_name>-<sweep folder name>`` inside a
  multirun, so a sweep's jobs are grouped together; otherwise ``<task_name>``.
* ``${sweep_job_name:}``: the W&B run name, the job's overrides (``model=iter1``) inside a
  multirun; otherwise None (W&B picks one).
* ``${run_stamp:}``: a new folder's name, unique per process and sorted by start time
  (:func:`run_stamp`); a multirun's folder (``hydra.sweep.dir``). Cached in the config, so the
  jobs of a sweep (SLURM ones too) keep their launcher's value.
* ``${run_dir:<runs folder>,<ckpt_path>,<train>}``: a single run's folder (``hydra.run.dir``):
  the folder of the run being resumed, or a new one named by the launch (see :func:`run_dir`).
* ``${main_metric:<DataModule class>}``: the validation metric of the dataset's benchmark,
  ``val/<its main_metric>`` (``conf/monitor/segmenter.yaml``): the one place that says it is
  the DataModule class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recattend.utils.config import require_writable_dir
from recattend.utils.resume import last_run


class OutputDirCheck(Callback):
    """Fails before Hydra creates the run folder if it could not be written, and notes the
    multirun folder it is about to create (:func:`remove_empty_sweep_dir`).

    Hydra would otherwise stop with a bare ``PermissionError`` from ``mkdir``; this names the
    setting to change.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        require_writable_dir(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _SWEEP_DIR
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        new = not sweep_dir.exists()
        require_writable_dir(sweep_dir, "hydra.sweep.dir")
        _SWEEP_DIR = sweep_dir if new else None


# The multirun folder that this process created, if it did.
_SWEEP_DIR: Path | None = None


def remove_empty_sweep_dir() -> None:
    """Remove this process's multirun folder if it holds nothing but Hydra's ``multirun.yaml``.

    Hydra's sweeper creates the folder and writes ``multirun.yaml`` before it composes the jobs'
    configs; a mistyped key among the swept overrides (``-m trainer.max_epoch=1,2``) would leave
    that folder behind, a multirun that never ran. Called by :func:`recattend.utils.cli.hydra_main`
    when the config fails before any job has run.
    """
    if _SWEEP_DIR is None or not _SWEEP_DIR.is_dir():
        return
    if {p.name for p in _SWEEP_DIR.iterdir()} <= {"multirun.yaml"}:
        (_SWEEP_DIR / "multirun.yaml").unlink(missing_ok=True)
        _SWEEP_DIR.rmdir()


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


def _stamp(started: datetime, pid: int) -> str:
    """A run folder's name: start time to the microsecond, then the process id.

    Names sort by start time (``ls``); the pid tells apart processes started in the same
    microsecond on one machine, so two runs started together never share a folder.
    """
    return f"{started:%Y-%m-%d_%H-%M-%S_%f}-{pid}"


# This process's folder name. Fixed once, because the folder name is resolved more than once per
# process (Hydra creates the folder; Lightning's DDP launcher reads hydra.run.dir again to send
# ranks 1..N there).
_STARTED = _stamp(datetime.now(), os.getpid())


def run_stamp() -> str:
    """A new folder's name, e.g. ``2026-05-04_13-07-42_481516-3121`` (see :func:`_stamp`): this
    process's start time and pid."""
    return _STARTED


def _process_start(pid: int) -> datetime | None:
    """When process ``pid`` started (Linux ``/proc``), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc(5), starttime, in clock ticks after boot
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def launch_name() -> str:
    """A new run folder's name, the same in every process of one launch.

    A single process: its start time and pid (:func:`run_stamp`). Processes started together by
    torchrun or srun each compose the config themselves, at slightly different times: they use
    what the launch gives all of them. torchrun: ``torchrun-<rdzv id>``; with torchrun's default id
    ``none`` (not unique) on one node, the start time and pid of the torchrun process, the ranks'
    common parent. srun: ``slurm-<job>.<step>``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id == "none" and int(os.environ.get("LOCAL_WORLD_SIZE", "0")) == world:
            agent = os.getppid()
            started = _process_start(agent)
            if started is not None:
                return _stamp(started, agent)
        return f"torchrun-{run_id}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm-{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return _STARTED


def run_dir(
    runs: str,
    ckpt_path: str | None = None,
    train: bool = False,
    overrides: Sequence[str] | None = None,
) -> str:
    """``hydra.run.dir`` of a single run: a training run given a checkpoint continues in that
    checkpoint's run folder, so checkpoints, CSV, learning curve and W&B run carry on.

    * ``ckpt_path=last``: the newest run under ``runs`` (by the time its ``checkpoints/last.ckpt``
      was written) that was started with the same overrides as this command (``overrides``, the
      resolver passes ``hydra.overrides.task``; None matches every run), compared with the run's
      ``.hydra/overrides.yaml``. Parsed values are compared, in any order. Free to differ: the
      resume itself (``ckpt_path``), how long to train (``trainer.max_steps``, ``max_epochs``,
      ``max_time``), ``test``, ``tags``, and the ``logger``, ``paths`` and ``hydra`` settings
      (:data:`RESUME_FREE_KEYS`, :data:`RESUME_FREE_GROUPS`). Newer runs passed over are
      recorded (:func:`resume_choice`) for the task to log. An error lists the runs and how they
      differ when none matches, or says that no run has a ``last.ckpt``;
    * ``ckpt_path=<run>/checkpoints/<file>.ckpt``: ``<run>``, whatever its overrides;
    * otherwise (no checkpoint, a checkpoint kept elsewhere, or not training): a new folder
      ``runs/<launch name>`` (:func:`launch_name`), unique per launch.

    One process always gets the same answer for the same arguments.
    """
    if train and ckpt_path == "last":
        return last_run(str(runs), overrides)
    if train and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).absolute().parent.parent)
    return str(Path(runs) / launch_name())


def _run_dir_resolver(runs: str, ckpt_path: str | None, train: bool, _root_: DictConfig) -> str:
    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None)
    if overrides is None and HydraConfig.initialized():
        overrides = HydraConfig.get().overrides.task
    return run_dir(runs, ckpt_path, train, list(overrides or []))


def main_metric(target: str) -> str:
    """``val/<main_metric>`` of the DataModule class ``target`` (its dotted name)."""
    return f"val/{get_class(target).main_metric}"


OmegaConf.register_new_resolver("run_dir", _run_dir_resolver, replace=True)
OmegaConf.register_new_resolver("main_metric", main_metric, replace=True)
OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name, replace=True)
