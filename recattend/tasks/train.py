"""Training task: ``python train.py [overrides]`` or ``recattend-train [overrides]``.

Order: start-up checks -> seed -> data and the dataset's evaluator -> module and the
process-wide settings it needs (:func:`recattend.ops.configure`) -> weights from ``init_from`` if
set -> callbacks and loggers -> trainer -> fit -> (``final_validation``: validate) -> test, both
with the checkpoint ``test_ckpt`` names (the best on validation, or the last weights) ->
``metrics.json`` in the run folder (and a W&B table). W&B runs are finished in every case, so each
job of a multirun gets its own run.

Resuming (``ckpt_path=last`` or a checkpoint path): Hydra's run folder is the resumed run's
(:func:`recattend.utils.hydra.run_dir`), Lightning restores weights, optimiser, step and the
callbacks' stage and schedule, and the W&B logger continues the run's W&B id.

Interrupting (Ctrl-C, SIGTERM, SIGUSR1; :mod:`recattend.callbacks.interrupt`): training stops
after the current step (or validation batch) with ``checkpoints/last.ckpt`` saved, the test split
is skipped, ``metrics.json`` is marked ``"interrupted": true``, the command that resumes is
logged, and the process exits with status 128 + the signal number.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from recattend import ops
from recattend.callbacks import ProcessGroupTeardown, ProcessSettings
from recattend.callbacks.checkpoint import AtomicCheckpointIO
from recattend.callbacks.interrupt import Interrupted, SaveOnInterrupt
from recattend.data.base import InstanceDataModule
from recattend.evaluation import Evaluate
from recattend.lit import PreprocessorModule, SegmenterModule
from recattend.report import metrics_table
from recattend.utils.checkpoint import listed, load_weights, misfits, read_checkpoint
from recattend.utils.cli import hydra_main, resume_command
from recattend.utils.config import (
    check_checkpointing,
    check_multirun_strategy,
    checked_choice,
    checked_seed,
    instantiate_data,
    instantiate_group,
    instantiate_trainer,
    process_settings,
    require_writable_dir,
    resolved_devices,
)
from recattend.utils.log_filters import silence_known_noise
from recattend.utils.loggers import finish_wandb, log_metrics_table, previous_wandb_id
from recattend.utils.resume import resume_choice
from recattend.utils.summary import checkpoint_summary, run_summary

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """Train (and test) what ``cfg`` describes; returns ``cfg.optimized_metric`` if set (for
    Hydra sweepers): for the monitored metric its best validation value, else its final value
    (``metrics.json``)."""
    silence_known_noise()
    output_dir = require_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    check_multirun_strategy(cfg.trainer)
    check_checkpointing(cfg.get("callbacks"))
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), output_dir)
    for line in run_summary(cfg, output_dir, ckpt_path):
        log.info(line)
    seed = checked_seed(cfg.get("seed"))
    test_ckpt = checked_choice("test_ckpt", cfg.get("test_ckpt", "best"), ("best", "last"))
    if seed is not None:
        L.seed_everything(seed, workers=True)

    datamodule, evaluator = instantiate_data(
        cfg.dataset, OmegaConf.select(cfg, "preprocessors.semantic_dir")
    )
    if cfg.get("test", False) and not datamodule.labelled("test"):
        raise ValueError(  # before training, so no work is lost at the end
            "the test split has no labels (e.g. dataset.test_root is the unlabelled official "
            "test set): run with test=false, or point dataset.test_root at a labelled folder"
        )
    module: L.LightningModule = instantiate(cfg.module, _convert_="all")
    segmenter = isinstance(module, SegmenterModule)
    settings = process_settings(
        cfg,
        resolved_devices(cfg.trainer)[0],
        steps=module.net.steps if segmenter else None,
        compiled=segmenter and module.hparams.compile,
        training=cfg.get("train", True),
    )
    ops.configure(**settings)
    if cfg.get("init_from"):
        load_weights(module, cfg.init_from, fit=_fit_resolution(module) if segmenter else None)
    if ckpt_path is not None:  # before Lightning's own load, whose error names no fix
        problems = misfits(read_checkpoint(ckpt_path, mmap=True)["state_dict"],
                           module.state_dict(), strict=True)  # fmt: skip
        if problems:
            raise ValueError(
                f"ckpt_path={ckpt_path} cannot be resumed with this run's model: "
                f"{listed(problems)}. Resume with "
                "the settings the run was started with (its .hydra/config.yaml), or start from "
                "its weights only with init_from=<checkpoint>"
            )
    interrupt = SaveOnInterrupt(output_dir / "checkpoints")  # always on, like the two below
    callbacks = [
        *instantiate_group(cfg.get("callbacks")),
        ProcessSettings(**settings),
        ProcessGroupTeardown(),
        interrupt,
    ]
    if segmenter:  # the pre-processor scores its own pixel metrics
        callbacks.append(Evaluate(test=evaluator))
    if ckpt_path is not None:
        _continue_wandb_run(cfg, output_dir)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.get("train", True):
            with interrupt.listening(trainer):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = scalars(trainer.callback_metrics)
        best_value = _best_value(trainer)
        # Named now: testing a checkpoint restores the callbacks' state saved in it.
        saved = checkpoint_summary(trainer) if trainer.is_global_zero else []
        tested = cfg.get("test", False) and not interrupt.interrupted  # a stop skips the test
        if tested:
            # The best checkpoint only means something when a metric is monitored; otherwise, and
            # with test_ckpt=last, the weights at the end of training are the ones to test.
            callback = trainer.checkpoint_callback
            monitored = callback is not None and callback.monitor
            best = callback.best_model_path if test_ckpt == "best" and monitored else ""
            # The test table's row names what was scored.
            scored = Path(best).name if best else f"end of training (step {trainer.global_step})"
            log.info("scoring %s", scored if best else f"the weights at the {scored}")
            if cfg.get("final_validation", False):
                # The validation split scored with the same weights (val/* in metrics.json).
                trainer.validate(module, datamodule=datamodule, ckpt_path=best or None,
                                 verbose=False)  # fmt: skip
                metrics.update(scalars(trainer.callback_metrics))
            # Lightning's own table would print raw floats: the paper table below replaces it.
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update(scalars(trainer.callback_metrics))
        log_metrics_table(trainer.loggers, metrics)
    finally:
        finish_wandb()
    if interrupt.interrupted:
        metrics.update(interrupt.summary())
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        )
        if tested:
            print(metrics_table(metrics, "test", scored, paper_table(module, datamodule)))
        for line in saved:
            log.info(line)
        log.info("outputs in %s (every metric: metrics.json)", output_dir)
    if interrupt.interrupted:
        if trainer.is_global_zero:
            status = 128 + interrupt.signum
            log.warning(
                "training stopped by %s after step %s: saved %s and the metrics so far in %s. "
                "Resume with:\n  %s\nThe exit status, %d, means stopped on request with the "
                "checkpoint saved (make reports it as 'Error %d').",
                metrics["signal"], metrics["step"], interrupt.path, output_dir / "metrics.json",
                resume_command(interrupt.path), status, status,
            )  # fmt: skip
        raise Interrupted(interrupt.signum)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    # The monitored metric: its best validation value, the one the best checkpoint was kept for.
    monitored = getattr(trainer.checkpoint_callback, "monitor", None)
    return best_value if name == monitored and best_value is not None else metrics.get(name)


def _best_value(trainer: L.Trainer) -> float | None:
    """The best value of the monitored metric over the run's validations, if any."""
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    return float(score) if score is not None else None


def resume_checkpoint(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The checkpoint a training run resumes from, checked before any work starts.

    ``last`` is this run folder's ``checkpoints/last.ckpt``: Hydra already chose the folder, the
    newest run of the task started with the same overrides (all but ``ckpt_path``,
    ``trainer.max_steps``/``max_epochs``/``max_time``, ``test``, ``tags`` and the ``logger``,
    ``paths`` and ``hydra`` settings; :func:`recattend.utils.hydra.run_dir`). That choice is logged
    here, with a warning naming any newer run passed over for its other overrides and how to
    resume it instead. Any other value must be an existing file.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    if not ckpt_path:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no checkpoint at '{path}'. Use ckpt_path=last (the newest "
            "run's last.ckpt among the runs with this command's overrides, or this multirun job's "
            "when hydra.sweep.dir is the old sweep) or the path of a .ckpt file"
        )
    choice = resume_choice(output_dir) if ckpt_path == "last" else None
    for level, message in choice.messages() if choice else ():
        log.log(level, message)
    state = read_checkpoint(path, "ckpt_path", mmap=True)
    log.info(
        "resuming %s at global step %d (epoch %d)",
        path, state.get("global_step", 0), state.get("epoch", 0),
    )  # fmt: skip
    return path


def _fit_resolution(module: SegmenterModule) -> Callable[[dict, dict], dict]:
    """``load_weights``'s ``fit`` for a segmenter: weights from a run at another resolution made
    to fit this one's network (:meth:`~recattend.models.SegmenterNetwork.fit_state`)."""

    def fit(state: dict, saved: dict) -> dict:
        size = (saved.get("net") or {}).get("image_size", module.net.image_size)
        return module.net.fit_state(state, size, prefix="net.")

    return fit


def _continue_wandb_run(cfg: DictConfig, output_dir: Path) -> None:
    """Give the W&B logger the resumed run's id (unless one was set), so it continues that run."""
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = previous_wandb_id(output_dir / "wandb")
    if run_id is not None:
        with open_dict(wandb_cfg):
            wandb_cfg.id, wandb_cfg.resume = run_id, "allow"
        log.info("continuing W&B run %s", run_id)


def paper_table(module: L.LightningModule, datamodule: InstanceDataModule) -> str | None:
    """The paper table to print: the pre-processor's own, else the dataset's (``paper_table``)."""
    if isinstance(module, PreprocessorModule):
        return "preprocessor"
    return datamodule.paper_table


def scalars(values: dict[str, Any]) -> dict[str, float | None]:
    """Logged metrics as JSON-ready floats (None for a non-finite value)."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = number if math.isfinite(number) else None
    return out


main = hydra_main("train", f"{__name__}:run")  # the recattend-train command
