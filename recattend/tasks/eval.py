"""Evaluation task: ``python eval.py ckpt_path=... [dataset=...]`` or ``recattend-eval ...``;
``weights=<name>`` instead of ``ckpt_path`` evaluates shipped weights (:mod:`recattend.pretrained`).

Loads a checkpoint (``weights_only=True``) into the configured module class, runs the dataset's
test split, prints the paper-style table and writes ``metrics.json`` in the run folder. Shipped
weights record the data they were trained on: without a dataset chosen on the command line
(``dataset=...``, ``dataset.*``, ``experiment=...``), that data is evaluated.

Every module setting comes from the checkpoint, except the post-processing, whose settings the
``postprocess`` node overrides one by one (e.g. ``postprocess.stop_rule=first_below`` or
``postprocess.blur=false``; :func:`~recattend.utils.config.postprocess_overrides`): it can be
changed without retraining.
A segmenter is built for the data's ``dataset.resolution``, which may differ from the one it was
trained at: its attention layer is resampled to it, with a warning (a pre-processor must run at
its own resolution, and every model at its own T).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recattend import ops, pretrained
from recattend.callbacks import ProcessGroupTeardown, ProcessSettings
from recattend.evaluation import Evaluate
from recattend.lit import SegmenterModule, load_module
from recattend.report import metrics_table
from recattend.tasks.train import paper_table, scalars
from recattend.utils.checkpoint import read_checkpoint
from recattend.utils.cli import hydra_main
from recattend.utils.config import (
    checked_seed,
    instantiate_data,
    instantiate_group,
    instantiate_trainer,
    postprocess_overrides,
    process_settings,
    require_writable_dir,
    resolved_devices,
)
from recattend.utils.log_filters import silence_known_noise
from recattend.utils.loggers import finish_wandb, log_metrics_table

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float | None]:
    """Evaluate ``cfg.ckpt_path`` (or ``cfg.weights``) on the test split; returns the test
    metrics."""
    silence_known_noise()
    output_dir = require_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    key, name = pretrained.chosen(cfg.get("ckpt_path"), cfg.get("weights"))
    ckpt = pretrained.checkpoint_file(name, key)
    seed = checked_seed(cfg.get("seed"))
    if seed is not None:
        L.seed_everything(seed, workers=True)
    module_cls = get_class(cfg.module._target_)
    saved = read_checkpoint(ckpt, key, mmap=True)  # the settings only: the tensors stay mapped
    overrides = postprocess_overrides(cfg.get("postprocess"), saved.get("hyper_parameters") or {})
    if overrides:
        log.info("post-processing over the checkpoint's: %s", overrides["postprocess"])
    datamodule, evaluator = instantiate_data(
        data_config(cfg.dataset, saved, name), OmegaConf.select(cfg, "preprocessors.semantic_dir")
    )
    segmenter = issubclass(module_cls, SegmenterModule)
    # A segmenter is built for the data's resolution: any input size works (resampled attention).
    resolution = datamodule.resolution if segmenter else None
    module = load_module(module_cls, ckpt, overrides, key=key, resolution=resolution)
    _warn_resolution(saved, datamodule, name)
    settings = process_settings(
        cfg,
        resolved_devices(cfg.trainer)[0],
        steps=module.net.steps if segmenter else None,
        compiled=segmenter and module.hparams.compile,
        training=False,
    )
    ops.configure(**settings)
    _check_compatible(module, datamodule, name)
    callbacks = [ProcessSettings(**settings), ProcessGroupTeardown()]
    if segmenter:  # the pre-processor scores its own pixel metrics
        callbacks.append(Evaluate(test=evaluator, export=bool(cfg.get("export"))))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)  # the paper table instead
        metrics = scalars(trainer.callback_metrics)
        log_metrics_table(trainer.loggers, metrics)
    finally:
        finish_wandb()
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        )
        print(metrics_table(metrics, "test", Path(name).name, paper_table(module, datamodule)))
        log.info("outputs in %s", output_dir)
    return metrics


def data_config(dataset: DictConfig, saved: Mapping[str, Any], name: str) -> DictConfig:
    """The dataset to evaluate: the one the checkpoint records (shipped weights do, under
    ``dataset``) unless the command line chose one, else ``dataset``."""
    recorded = saved.get("dataset")
    if recorded is None or _dataset_chosen():
        return dataset
    log.info(
        "%s: evaluating on the data it was trained on (%s); choose other data with dataset=...",
        name,
        recorded.get("_target_", "?").rsplit(".", 1)[-1],
    )
    return OmegaConf.create(recorded)


def _dataset_chosen() -> bool:
    """Whether this Hydra run's command line chose the data (a dataset or experiment override)."""
    if not HydraConfig.initialized():
        return False
    chosen = ("dataset", "experiment")
    return any(o.lstrip("+~").startswith(chosen) for o in HydraConfig.get().overrides.task)


def _warn_resolution(
    saved: Mapping[str, Any], datamodule: L.LightningDataModule, name: str
) -> None:
    """Say so when a segmenter runs at another input resolution than it was trained at."""
    trained = ((saved.get("hyper_parameters") or {}).get("net") or {}).get("image_size")
    if trained is None or list(trained) == list(datamodule.resolution):
        return
    scale = [now / then for now, then in zip(datamodule.resolution, trained, strict=True)]
    log.warning(
        "%s was trained at %dx%d and runs at dataset.resolution=%s here (its attention layer "
        "resampled): objects appear %.2fx (height) by %.2fx (width) their training size to it. "
        "Its own resolution is dataset.resolution=[%d,%d]; fine-tuning (init_from) adapts it "
        "to a new one.",
        name, *trained, list(datamodule.resolution), *scale, *trained,
    )  # fmt: skip


def _check_compatible(
    module: L.LightningModule, datamodule: L.LightningDataModule, ckpt: str
) -> None:
    """The data must match what the checkpoint's network was built for (a segmenter is built
    for the data's resolution, so only its T must match)."""
    settings = module.hparams.net if isinstance(module, SegmenterModule) else module.hparams
    wanted = {"resolution": list(settings["image_size"])}
    if "max_instances" in settings:
        wanted["max_instances"] = settings["max_instances"]
    got = {"resolution": list(datamodule.resolution), "max_instances": datamodule.max_instances}
    wrong = [f"dataset.{k}={got[k]} (checkpoint: {v})" for k, v in wanted.items() if got[k] != v]
    if wrong:
        raise ValueError(
            f"{ckpt} was trained for other data settings: {', '.join(wrong)}; "
            "pass the checkpoint's values as overrides"
        )


main = hydra_main("eval", f"{__name__}:run")  # the recattend-eval command
