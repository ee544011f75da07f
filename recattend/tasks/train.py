"""Training task: ``python train.py [overrides]`` or ``recattend-train [overrides]``.

Order: start-up checks -> seed -> data -> module (weights from ``init_from`` if set) -> callbacks
and loggers -> trainer -> fit -> test (best checkpoint if one was written) -> ``metrics.json`` in
the run folder. W&B runs are finished in every case, so each job of a multirun gets its own run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recattend.callbacks import ProcessGroupTeardown
from recattend.report import metrics_table
from recattend.utils.checkpoint import load_weights
from recattend.utils.config import check_multirun_strategy, instantiate_group, require_writable_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """Train (and test) what ``cfg`` describes; returns ``cfg.optimized_metric`` if set."""
    output_dir = require_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    check_multirun_strategy(cfg.trainer)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.dataset, _convert_="all")
    if cfg.get("test", False) and not getattr(datamodule, "labelled", lambda split: True)("test"):
        raise ValueError(  # before training, so no work is lost at the end
            "the test split has no labels (e.g. dataset.test_root is the unlabelled official "
            "test set): run with test=false, or point dataset.test_root at a labelled folder"
        )
    module: L.LightningModule = instantiate(cfg.module, _convert_="all")
    if cfg.get("init_from"):
        load_weights(module, cfg.init_from)
    callbacks = [*instantiate_group(cfg.get("callbacks")), ProcessGroupTeardown()]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = scalars(trainer.callback_metrics)
        if cfg.get("test", False):
            # The best checkpoint only means something when a metric is monitored; otherwise the
            # weights at the end of training are the ones to test.
            callback = trainer.checkpoint_callback
            best = callback.best_model_path if callback and callback.monitor else ""
            if not best:
                log.info("testing the weights at the end of training")
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            metrics.update(scalars(trainer.callback_metrics))
    finally:
        _finish_wandb()
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        )
        if cfg.get("test", False):
            name = str(cfg.get("task_name", "train"))
            print(metrics_table(metrics, "test", name, paper_table(module, datamodule)))
        log.info("outputs in %s", output_dir)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def paper_table(module: L.LightningModule, datamodule: L.LightningDataModule) -> str | None:
    """The paper table to print: the pre-processor's own, else the dataset's (``paper_table``)."""
    if type(module).__name__ == "PreprocessorModule":
        return "preprocessor"
    return getattr(datamodule, "paper_table", None)


def scalars(values: dict[str, Any]) -> dict[str, float | None]:
    """Logged metrics as JSON-ready floats (None for a non-finite value)."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = number if math.isfinite(number) else None
    return out


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")  # only if a W&B logger was used
    if wandb is not None and wandb.run is not None:
        wandb.finish()


main = hydra.main(version_base="1.3", config_path="pkg://recattend.conf", config_name="train")(run)
