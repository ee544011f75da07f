"""An exponential moving average of the weights, from the start of the last bootstrap stage.

The held-out quality of the recurrent segmenter swings by several points of SBD from one
validation to the next while the scheduled sampling hands it its own canvas; the average of the
recent weights is steadier and better than any one of them. :class:`EMAWeights` keeps
w_ema <- decay w_ema + (1 - decay) w after every optimiser step (BatchNorm statistics alike) and
lets Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` swap the average in for
validation, for the checkpoints' ``state_dict`` (the live weights go to ``current_model_state``,
from which a resumed run continues) and at the end of training.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from recattend.callbacks.bootstrap import BootstrapStages


class EMAWeights(WeightAveraging):
    """The average of the weights that validation, checkpoints and the test split see.

    Args:
        decay: the weight of the old average at each step, in (0, 1): the average spans about
            1 / (1 - decay) steps (0.998: 500).
        start_step: the first optimiser step averaged; ``None``: the first step of the last
            bootstrap stage (the whole model), so the untrained segmentation network of a box stage
            never enters the average. The first averaged step copies the weights.

    Raises:
        ValueError: ``decay`` outside (0, 1) or a negative ``start_step``.
    """

    def __init__(self, decay: float = 0.998, start_step: int | None = None) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"callbacks.ema.decay={decay} must be in (0, 1), e.g. 0.998")
        if start_step is not None and start_step < 0:
            raise ValueError(f"callbacks.ema.start_step={start_step} must be >= 0 or null")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.start_step = start_step
        self.first_step = start_step or 0
        self._swapped = False  # the module holds the average (during a validation)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start_step is None:  # after every callback's setup: the stages' plan is known
            self.first_step = last_stage_start(trainer)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.first_step

    @property
    def averaging(self) -> bool:
        """Whether the average holds any step yet; before, validation, checkpoints and the end of
        training keep the live weights (the average would still be the initial ones)."""
        model = self._average_model
        return model is not None and int(model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaging:
            super().on_validation_epoch_start(trainer, pl_module)
            self._swapped = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaging:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.averaging:
            return
        if not self._swapped:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        # Saved during a validation (a stop request): the module holds the average, which is
        # already the checkpoint's state_dict, and the average model holds the live weights.
        state = self._average_model.state_dict()
        live = {name[7:]: value for name, value in state.items() if name.startswith("module.")}
        checkpoint["current_model_state"] = live
        checkpoint["averaging_state"] = {
            name: value for name, value in state.items() if not name.startswith("module.")
        }


def last_stage_start(trainer: L.Trainer) -> int:
    """The global step at which the trainer's last bootstrap stage begins: the sum of the
    earlier stages' steps in the plan the module supports (0 without stages)."""
    for callback in trainer.callbacks:
        if isinstance(callback, BootstrapStages) and callback.plan:
            return sum(int(spec["steps"]) for spec in callback.plan[:-1])
    return 0
