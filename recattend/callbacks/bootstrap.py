"""Bootstrap training in named stages (paper 2.6, as the authors' code ran it).

The authors trained the box network first (ground-truth canvas at every step, box and score losses,
no segmentation network) and then the whole model from those weights. Here the two are stages of one
run: at each configured switch the module's ``stage`` changes and the optimizer and learning-rate
schedule are rebuilt from the new stage's settings (a fresh Adam, as in a new run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy

from recattend.data.base import InstanceDataModule

log = logging.getLogger(__name__)

OPTIM_KEYS = ("lr", "lr_decay", "lr_decay_steps", "lr_warmup_steps", "weight_decay")
# Module settings a stage may override while it runs (read through ``pl_module.stage_overrides``).
OVERRIDE_KEYS = (*OPTIM_KEYS, "box_min_pad")
STAGE_KEYS = {"name", "steps", "reinit_score_head", "batch_size", "box_pools", *OVERRIDE_KEYS}


class BootstrapStages(L.Callback):
    """Runs the configured stages in order, switching at global steps.

    Args:
        stages: each a mapping with ``name`` (a stage the module supports: ``box`` or ``full``),
            ``steps`` (its length in optimizer steps; ``None`` for the last, which runs to the
            end) and optionally ``lr``, ``lr_decay``, ``lr_decay_steps``, ``lr_warmup_steps``,
            ``weight_decay`` and ``box_min_pad`` overriding the module's settings during that
            stage (e.g. ground-truth boxes padded by at least 10 px in the box stage and 20 px
            afterwards, the authors' 224x224 values), and ``reinit_score_head: true`` to
            re-initialise the score head when the stage begins (the authors' full model started
            with a new score head, since their box-stage head read the box network's LSTM state
            alone). ``batch_size``: the stage's training images per device and step instead
            of ``dataset.batch_size`` (the authors' KITTI and Cityscapes box stages ran larger
            batches than their full stages); the training loader is rebuilt when a stage of
            another batch size begins: the epoch ends there (the module's
            ``on_train_batch_start`` returns -1 on ``end_epoch``), and the trainer reloads the
            training data at every epoch start. ``box_pools``: the box CNN's pooling pattern
            during the stage (same length and total stride as ``model.segmenter.box_pools``;
            the authors' KITTI box stage pooled otherwise than their full model).

    Stages the module cannot run (the box stage of a model without a box network) are skipped
    with a warning, so one configuration serves every ablation. Under DDP, parameters idle in a
    stage (the segmentation network during the box stage) are declared with
    ``find_unused_parameters=True``.

    State (saved in checkpoints): the current stage and the step at which it started, so a run
    resumed with ``ckpt_path=`` continues in the same stage.
    """

    def __init__(self, stages: Sequence[dict[str, Any]]) -> None:
        if not stages:
            raise ValueError("callbacks.bootstrap.stages is empty: give at least one stage")
        for i, spec in enumerate(stages):
            unknown = set(spec) - STAGE_KEYS
            if "name" not in spec or unknown:
                raise ValueError(
                    f"bootstrap stage {i} ({dict(spec)}): needs a name and only the keys "
                    f"{sorted(STAGE_KEYS)}; unknown: {sorted(unknown)}"
                )
            steps = spec.get("steps")
            batch = spec.get("batch_size")
            if batch is not None and (not isinstance(batch, int) or batch < 1):
                raise ValueError(
                    f"bootstrap stage {i} ('{spec['name']}'): batch_size={batch!r} must be a "
                    "positive integer, or null for dataset.batch_size"
                )
            last = i == len(stages) - 1
            if not last and (not isinstance(steps, int) or steps < 1):
                raise ValueError(
                    f"bootstrap stage {i} ('{spec['name']}') needs steps >= 1 (only the last "
                    f"stage may leave steps unset); got {steps!r}"
                )
        self.stages = [dict(spec) for spec in stages]
        self.plan = self.stages  # the stages this module supports (set in setup)
        self.index = 0
        self.start_step = 0

    @property
    def current(self) -> str:
        """Name of the current stage."""
        return self.plan[self.index]["name"]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "supports_stage"):
            log.info(
                "bootstrap: %s has no training stages; nothing to do", type(pl_module).__name__
            )
            self.plan = []
            return
        names = [spec["name"] for spec in self.stages]
        unknown = [n for n in names if n not in ("box", "full")]
        if unknown:
            raise ValueError(f"unknown bootstrap stage(s) {unknown}; known: box, full")
        self.plan = [spec for spec in self.stages if pl_module.supports_stage(spec["name"])]
        for spec in self.stages:
            if spec not in self.plan:
                log.warning(
                    "bootstrap: this model cannot train a '%s' stage; skipped", spec["name"]
                )
        if not self.plan:
            raise ValueError(f"none of the bootstrap stages {names} applies to this model")
        if isinstance(trainer.strategy, DDPStrategy):
            # Parameters idle in a stage would make DDP's gradient reduction wait forever.
            trainer.strategy._ddp_kwargs["find_unused_parameters"] = True
        if any(spec.get("batch_size") for spec in self.plan):
            if not isinstance(getattr(trainer, "datamodule", None), InstanceDataModule):
                raise ValueError(
                    "a bootstrap stage's batch_size needs one of recattend's DataModules; "
                    "remove batch_size from callbacks.bootstrap.stages"
                )
            trainer.reload_dataloaders_every_n_epochs = 1  # a stage's loader from its start
        for spec in self.plan:  # every stage's pooling checked now, not when it begins
            if spec.get("box_pools") is not None and hasattr(pl_module, "use_box_pools"):
                pl_module.use_box_pools(spec["box_pools"])
        self._apply(
            trainer, pl_module
        )  # before the optimizer is built (or restored, then re-applied)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan:
            self._apply(trainer, pl_module)  # the stage restored from a checkpoint, if any
            self._warn_if_cut_short(trainer)

    def _warn_if_cut_short(self, trainer: L.Trainer) -> None:
        """Warn when the run's step limit ends it before its last stage begins (a run that
        never reaches the full stage trains no masks, and scores 0 on every mask metric)."""
        last_start = sum(int(spec["steps"]) for spec in self.plan[:-1])
        total = trainer.estimated_stepping_batches
        if len(self.plan) < 2 or not math.isfinite(total) or total > last_start:
            return
        last = self.plan[-1]["name"]
        log.warning(
            "bootstrap: this run ends at step %d (trainer.max_steps / max_epochs), before its "
            "'%s' stage begins at step %d: %s. Raise the limit past step %d, or shorten the "
            "earlier stages (callbacks.bootstrap.stages).",
            int(total), last, last_start,
            "the masks are never trained and every mask metric will be 0"
            if last == "full" else "that stage never runs",
            last_start,
        )  # fmt: skip

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not self.plan:
            return
        planned = [spec["name"] for spec in self.plan]
        if state and (state["index"] >= len(planned) or planned[state["index"]] != state["stage"]):
            raise ValueError(
                f"the checkpoint was saved in bootstrap stage '{state['stage']}' (number "
                f"{state['index']}), which this run's stages {planned} do not have at that place; "
                "resume with the callbacks.bootstrap.stages the run was started with"
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.plan:
            return
        step = trainer.global_step
        while self.index < self._position(step)[0]:
            self.start_step += self.plan[self.index]["steps"]
            self.index += 1
            self._apply(trainer, pl_module)
            if self.plan[self.index].get("reinit_score_head"):
                pl_module.reset_score_head()  # at the switch only, not when resuming
            trainer.strategy.setup_optimizers(trainer)  # a fresh optimizer and schedule
            log.info("bootstrap: stage '%s' from step %d", self.current, step)
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, InstanceDataModule) and datamodule.loader_stale:
            # This batch has the previous stage's size (or, on resuming, the loader was built
            # before the stage was restored): end the epoch untrained, and the next one loads
            # the stage's batches.
            pl_module.end_epoch = True
            return
        pl_module.log("train/stage", float(self.index), batch_size=len(batch["image"]))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The next batch is augmented (DataModule.on_after_batch_transfer) before its
        # on_train_batch_start switches the stage, so the datamodule learns the next step's stage
        # now: the first full-stage batch is never flipped by a box-stage-only policy.
        datamodule = getattr(trainer, "datamodule", None)
        if self.plan and isinstance(datamodule, InstanceDataModule):
            datamodule.stage = self.plan[self._position(trainer.global_step)[0]]["name"]

    def _position(self, step: int) -> tuple[int, int]:
        """(stage index, its first global step) at global ``step``, from the current stage on."""
        index, start = self.index, self.start_step
        while index + 1 < len(self.plan) and step >= start + self.plan[index]["steps"]:
            start += self.plan[index]["steps"]
            index += 1
        return index, start

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spec = self.plan[self.index]
        pl_module.stage = spec["name"]
        if hasattr(pl_module, "use_box_pools"):
            pl_module.use_box_pools(spec.get("box_pools"))
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, InstanceDataModule):  # stage-dependent augmentation, batch
            datamodule.stage = spec["name"]
            datamodule.stage_batch_size = spec.get("batch_size")
        pl_module.stage_overrides = {k: spec[k] for k in OVERRIDE_KEYS if spec.get(k) is not None}

    def state_dict(self) -> dict[str, Any]:
        stage = self.current if self.plan else None
        return {"index": self.index, "start_step": self.start_step, "stage": stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.index, self.start_step = state_dict["index"], state_dict["start_step"]


def stages_ahead(trainer: L.Trainer) -> list[str]:
    """The names of the stages a trainer's :class:`BootstrapStages` has still to run after the
    current one (none without such a callback)."""
    for callback in trainer.callbacks:
        if isinstance(callback, BootstrapStages) and callback.plan:
            return [stage["name"] for stage in callback.plan[callback.index + 1 :]]
    return []


def running_stage(trainer: L.Trainer) -> tuple[str | None, int]:
    """(name, first global step) of the stage a trainer's :class:`BootstrapStages` runs, or
    (None, 0) when it has none (no such callback, or a module without stages)."""
    for callback in trainer.callbacks:
        if isinstance(callback, BootstrapStages) and callback.plan:
            return callback.current, callback.start_step
    return None, 0
