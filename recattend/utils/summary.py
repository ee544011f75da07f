"""What a training run says about itself at its start and at its end, a few log lines each.

:func:`run_summary` condenses the composed config to what decides a run (data, model, stages,
limits, devices, loggers, checkpoints, seed, starting weights); :func:`checkpoint_summary` names
the best and the last checkpoint a finished run leaves, with their steps and the best one's
monitored value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from recattend.utils.config import resolved_devices


def run_summary(cfg: DictConfig, output_dir: Path, ckpt_path: Path | None) -> list[str]:
    """Lines describing the run ``cfg`` composes, e.g.::

        run folder: outputs/train/runs/2026-12-02_05-51-02_542698-721
        data: dataset=synthetic (leaves), 128x128, T = 11, batch 8 per device x 1 = 8
        model: model=full, module=segmenter, lr 0.001; stages: box 100 steps, then full
        trainer: max_steps -, max_epochs 4, max_time -; 1 x cpu (strategy auto), precision 32-true
        loggers: wandb (offline), csv; checkpoints: best by val/sbd (max), last.ckpt every 100 steps
        seed 12345, init_from -, ckpt_path -

    Args:
        cfg: the composed train config.
        output_dir: the run folder.
        ckpt_path: the checkpoint the run resumes from (already resolved), or None.
    """
    choices = _choices(cfg)
    data = cfg.dataset
    height, width = data.resolution
    accelerator, world = resolved_devices(cfg.trainer)
    style = f" ({data.style})" if data.get("style") else ""
    module = choices.get("module", cfg.module._target_.rsplit(".", 1)[-1])
    segmenter = cfg.module._target_.endswith("SegmenterModule")
    model = f"model={choices.get('model', '?')}, " if segmenter else ""
    experiment = f" (experiment={choices['experiment']})" if choices.get("experiment") else ""
    stages = OmegaConf.select(cfg, "callbacks.bootstrap.stages") if segmenter else None
    trainer = cfg.trainer
    lines = [
        f"run folder: {output_dir}",
        f"data: dataset={choices.get('dataset', '?')}{style}, {height}x{width}, "
        f"T = {data.max_instances + 1}, batch {data.batch_size} per device x {world} = "
        f"{data.batch_size * world}",
        f"model: {model}module={module}, lr {cfg.module.lr:g}"
        + (f"; stages: {_stages(stages)}" if stages else "")
        + experiment,
        f"trainer: max_steps {_limit(trainer.get('max_steps'))}, max_epochs "
        f"{_limit(trainer.get('max_epochs'))}, max_time {_limit(trainer.get('max_time'))}; "
        f"{world} x {accelerator} (strategy {trainer.get('strategy', 'auto')}), precision "
        f"{trainer.get('precision', '32-true')}",
        f"loggers: {_loggers(cfg.get('logger'))}; "
        f"checkpoints: {_checkpoints(cfg.get('callbacks'))}",
        f"seed {_limit(cfg.get('seed'))}, init_from {_limit(cfg.get('init_from'))}, ckpt_path "
        f"{_limit(ckpt_path)}",
    ]
    return lines


def checkpoint_summary(trainer: L.Trainer) -> list[str]:
    """Lines naming the run's best checkpoint, with the monitored value of the validation that
    saved it and its step, and its last checkpoint, e.g.::

        best checkpoint (val/sbd 0.8740 at step 3500): <run>/checkpoints/best-step_00350...
        last checkpoint (step 5000, resume with ckpt_path=last): <run>/checkpoints/last.ckpt

    The best one is ``trainer.checkpoint_callback`` (the first ``ModelCheckpoint``), the last one
    the file of any ``ModelCheckpoint`` that saves ``last.ckpt``. Steps are read from the files.
    """
    lines = []
    best = trainer.checkpoint_callback
    if best is not None and best.monitor and best.best_model_path:
        # Under ddp_spawn only the path comes back to the launching process, not the score.
        score = best.best_model_score
        value = f" {float(score):.4f}" if score is not None else ""
        lines.append(
            f"best checkpoint ({best.monitor}{value} at step "
            f"{_step(best.best_model_path)}): {best.best_model_path}"
        )
    elif best is not None and best.monitor:
        lines.append(f"no best checkpoint: no validation logged {best.monitor}")
    last = [
        cb.last_model_path
        for cb in trainer.callbacks
        if isinstance(cb, ModelCheckpoint) and cb.last_model_path
    ]
    if last:
        lines.append(
            f"last checkpoint (step {_step(last[0])}, resume with ckpt_path=last): {last[0]}"
        )
    return lines


def _choices(cfg: DictConfig) -> dict[str, Any]:
    """The config groups' chosen options (``dataset: synthetic``, ...), empty outside Hydra."""
    if HydraConfig.initialized():
        return dict(HydraConfig.get().runtime.choices)
    return dict(OmegaConf.select(cfg, "hydra.runtime.choices") or {})


def _limit(value: Any) -> str:
    """A setting as shown: "-" for unset (None, -1, empty)."""
    return "-" if value in (None, -1, "") else str(value)


def _stages(stages: Any) -> str:
    """The bootstrap stages as "box 100 steps, then full"."""
    return ", then ".join(
        f"{s['name']} {s['steps']} steps" if s.get("steps") else str(s["name"]) for s in stages
    )


def _loggers(loggers: DictConfig | None) -> str:
    names = [
        f"{key} (offline)" if node.get("offline") else str(key)
        for key, node in (loggers or {}).items()
        if node and "_target_" in node
    ]
    return ", ".join(names) or "none"


def _checkpoints(callbacks: DictConfig | None) -> str:
    callbacks = callbacks or {}
    best, last = callbacks.get("model_checkpoint"), callbacks.get("last_checkpoint")
    parts = [f"best by {best.monitor} ({best.mode})"] if best and best.get("monitor") else []
    if last:
        parts.append(f"last.ckpt every {last.every_n_train_steps} steps")
    return ", ".join(parts) or "none"


def _step(path: str | Path) -> int:
    """The global step a Lightning checkpoint file was saved at (its tensors are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
