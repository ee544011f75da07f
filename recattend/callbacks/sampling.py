"""Scheduled sampling (paper 2.6): feed ground truth early, fade it out, as the authors did.

Per image and timestep t, two independent Bernoulli switches decide whether the segmentation
network reads its patch from the ground-truth box ("box knob") and whether the canvas receives the
ground-truth mask instead of the prediction ("mask knob"). Their probability at training step k,
counted from the start of the ``full`` stage, is

    p(k, t) = min(1, base * decay^(max(0, k - offset) / decay_steps) * (1 + ln(1 + 3 t)))

with an offset per kind, so later timesteps keep ground truth longer (t = 0: x1; t = 19: x5.06).

The module's teacher forcing takes these probabilities as its ``module.teacher_forcing`` mode uses
them (:meth:`~recattend.lit.rollout.TeacherForcing.schedule`): the paper's "no scheduled
sampling" ablation (``ground_truth``) feeds the ground-truth canvas with probability 1 instead.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from recattend.lit.rollout import TeacherForcing

KINDS = ("box", "mask")


def knob_probability(
    step: float, t: Tensor, offset: float, decay: float, decay_steps: float, base: float = 1.0
) -> Tensor:
    """p(step, t) of the module docstring, for a tensor of timesteps ``t`` (float32, in [0, 1])."""
    fade = base * decay ** (max(0.0, step - offset) / decay_steps)
    return (fade * (1 + torch.log1p(3 * t.float()))).clamp(max=1.0)


class ScheduledSampling(L.Callback):
    """Gives ``pl_module.teacher_forcing`` (a :class:`~recattend.lit.rollout.TeacherForcing`)
    its probabilities before every training batch (module docstring).

    Args:
        base, decay, decay_steps: the schedule shared by both kinds (the defaults are sized for
            the short default run; the authors': 1, 0.5, and 700 steps for CVPPP, 1500 for KITTI
            and Cityscapes).
        box_offset, mask_offset: step (from the start of the full stage) at which each kind starts
            to fade; ``None`` never feeds that kind (the authors' CVPPP: boxes never, the canvas
            from step 3000).

    State (saved in checkpoints): ``start_step``, the global step at which the schedule began
    (the first batch of the ``full`` stage), so a resumed run continues at the same point.
    """

    def __init__(
        self,
        base: float = 1.0,
        decay: float = 0.5,
        decay_steps: float = 150,
        box_offset: float | None = None,
        mask_offset: float | None = 150,
    ) -> None:
        if not 0 < decay <= 1 or decay_steps <= 0 or base < 0:
            raise ValueError(
                f"scheduled sampling needs 0 < decay <= 1, decay_steps > 0 and base >= 0; got "
                f"decay={decay}, decay_steps={decay_steps}, base={base}"
            )
        self.base, self.decay, self.decay_steps = base, decay, decay_steps
        self.offsets = {"box": box_offset, "mask": mask_offset}
        self.start_step: int | None = None

    def probabilities(self, step: int, steps: int) -> dict[str, Tensor]:
        """Per kind, the (steps,) probabilities at ``step`` steps into the schedule."""
        t = torch.arange(steps)
        return {
            kind: torch.zeros(steps)
            if offset is None
            else knob_probability(step, t, offset, self.decay, self.decay_steps, self.base)
            for kind, offset in self.offsets.items()
        }

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        forcing = getattr(pl_module, "teacher_forcing", None)
        if not isinstance(forcing, TeacherForcing):  # e.g. the pre-processor
            return
        if getattr(pl_module, "stage", "full") != "full":  # the box stage feeds its own truth
            forcing.schedule(None)
            return
        if self.start_step is None:
            self.start_step = trainer.global_step
        probs = self.probabilities(trainer.global_step - self.start_step, pl_module.net.steps)
        forcing.schedule({k: p.to(pl_module.device) for k, p in probs.items()})
        pl_module.log_dict(
            {f"train/p_gt_{kind}_t0": forcing.probabilities[kind][0] for kind in KINDS},
            batch_size=len(batch["image"]),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_step = state_dict["start_step"]
