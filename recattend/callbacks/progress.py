"""A plain progress line in the run's log: where training is, how fast, and when it will end.

The Rich progress bar shows one epoch and needs a terminal; :class:`ProgressReport` writes one
line through Python logging (the console and Hydra's ``<run dir>/<task>.log``), without colours or
carriage returns, e.g.::

    step 3500/5000 (70%) | stage full | loss 0.4123 | lr 7.00e-04 | 10.3 img/s | elapsed 1:02:03 |
    ETA 0:25:10 (max_steps) | val/sbd 0.8740 val/abs_dic 0.8000 (step 3000)

(one line in the log). The ETA is that of the whole run (:func:`run_eta`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from time import monotonic
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from recattend.callbacks.bootstrap import running_stage, stages_ahead

log = logging.getLogger(__name__)


def run_eta(
    steps_left: float,
    seconds_per_step: float | None,
    validations_left: int,
    seconds_per_validation: float,
    time_left: float | None,
    step_limit: str,
) -> tuple[float, str] | None:
    """Seconds until the run ends and the limit that ends it.

    Args:
        steps_left: optimizer steps still to run under the step limit (``inf`` without one).
        seconds_per_step: training seconds per optimizer step, validation excluded; None when
            not measured yet.
        validations_left: validation loops still to run within ``steps_left``.
        seconds_per_validation: the duration of one validation loop (0 when none ran yet).
        time_left: seconds left under ``max_time`` (Lightning's ``Timer``, validation included),
            None without a time limit.
        step_limit: the name of the step limit (``max_steps`` or ``max_epochs``).

    Returns:
        ``(seconds, limit)``: the sooner of the step limit's end (``steps_left`` steps and
        ``validations_left`` validations at the measured speeds) and the time limit's, with the
        name of that limit; None when neither can be told (no limit, or no speed and no time
        limit).
    """
    by_steps = math.inf
    if seconds_per_step is not None and math.isfinite(steps_left):
        by_steps = steps_left * seconds_per_step + validations_left * seconds_per_validation
    by_time = math.inf if time_left is None else max(time_left, 0.0)
    if math.isinf(by_steps) and math.isinf(by_time):
        return None
    return (by_time, "max_time") if by_time < by_steps else (by_steps, step_limit)


class ProgressReport(L.Callback):
    """Logs one progress line at the first optimizer step of this process, then every
    ``every_n_steps`` steps or ``every_minutes`` minutes, whichever comes first (global rank 0
    only).

    The line holds: step / total steps, the bootstrap stage (when
    :class:`~recattend.callbacks.BootstrapStages` runs stages), the mean training loss over the
    interval, the learning rate, the training speed over the interval (images per second over all
    processes, validation time excluded), the time since training started in this process, the
    ETA of the whole run with the limit that ends it, and the latest values of ``metrics`` with
    the step of their validation (the pre-processor's run shows the metrics it logs).

    The ETA (:func:`run_eta`) takes the training speed since the current stage began, leaving
    out the stage's first ``warmup_steps`` steps in this process (compilation, caches; until
    more steps are measured, the interval's speed stands in), adds the last validation's duration
    for each validation still due, and takes ``max_time`` into account through Lightning's
    ``Timer``. While a later bootstrap stage has still to run, its speed is unknown: the ETA is
    then marked ``~`` and names the stages not timed yet (the full stage runs the segmentation
    network too, and is slower than the box stage).

    Args:
        metrics: logged metric names to show when present (``val/...``); repeats are dropped.
        every_n_steps: report at every multiple of this many optimizer steps.
        every_minutes: report when this many minutes passed since the last report.
        warmup_steps: steps of each stage left out of the speed behind the ETA.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        every_n_steps: int = 50,
        every_minutes: float = 2.0,
        warmup_steps: int = 5,
    ) -> None:
        if every_n_steps < 1 or every_minutes <= 0 or warmup_steps < 1:
            raise ValueError(
                f"ProgressReport(every_n_steps={every_n_steps}, every_minutes={every_minutes}, "
                f"warmup_steps={warmup_steps}): give a step interval >= 1, minutes > 0 and "
                "warm-up steps >= 1"
            )
        self.every_n_steps = every_n_steps
        self.every_seconds = 60.0 * every_minutes
        self.warmup_steps = warmup_steps
        self.metrics = list(dict.fromkeys(metrics))

    # ----------------------------------------------------------------------------- measuring
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = monotonic()
        self._val_seconds = 0.0  # validation time since the start, left out of training speed
        self._val_began: float | None = None
        self._last_val_seconds = 0.0
        self._val_step: int | None = None  # the step of the last validation (this process)
        self._step = trainer.global_step  # the last optimizer step seen
        self._stage_key: tuple[str | None, int] | None = None
        self._stage_steps = 0  # steps of the current stage seen in this process
        self._window: tuple[int, float] | None = None  # (step, training seconds) after warm-up
        self._report = (trainer.global_step, 0.0, monotonic())  # step, training s, clock
        self._first_step = trainer.global_step  # the step this process started from
        self._images = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_began = monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._val_began is None:
            return
        self._last_val_seconds = monotonic() - self._val_began
        self._val_seconds += self._last_val_seconds
        self._val_began = None
        self._val_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero:
            return
        self._images += _batch_size(batch) * trainer.world_size
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # summed on its device: no synchronisation per step
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step = trainer.global_step
        if step == self._step:  # gradient accumulation: no optimizer step yet
            return
        self._step = step
        now = monotonic()
        train_seconds = now - self._start - self._val_seconds
        self._track_stage(trainer, step, train_seconds)
        first = self._report[0] == self._first_step  # no line yet: say at once that it runs
        if first or step % self.every_n_steps == 0 or now - self._report[2] >= self.every_seconds:
            log.info(self.line(trainer, step, train_seconds, now))
            self._report = (step, train_seconds, now)
            self._images, self._loss_sum, self._loss_count = 0, None, 0

    def _track_stage(self, trainer: L.Trainer, step: int, train_seconds: float) -> None:
        """Restart the speed window when the stage changes; open it after the warm-up steps."""
        key = running_stage(trainer)
        if key != self._stage_key:
            self._stage_key, self._stage_steps, self._window = key, 0, None
        self._stage_steps += 1
        if self._stage_steps == self.warmup_steps:
            self._window = (step, train_seconds)

    # ------------------------------------------------------------------------------ the line
    def line(self, trainer: L.Trainer, step: int, train_seconds: float, now: float) -> str:
        """The progress line at optimizer ``step`` (module docstring)."""
        total = trainer.estimated_stepping_batches
        parts = [f"step {step}"]
        if math.isfinite(total):
            parts[0] += f"/{total} ({100 * step / total:.0f}%)"
        stage = self._stage_key[0] if self._stage_key else None
        if stage is not None:
            parts.append(f"stage {stage}")
        if self._loss_count:
            parts.append(f"loss {self._loss_sum.item() / self._loss_count:.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        report_step, report_seconds, _ = self._report
        interval = train_seconds - report_seconds
        if interval > 0:
            parts.append(f"{self._images / interval:.1f} img/s")
        parts.append(f"elapsed {_duration(now - self._start)}")
        parts.append(self._eta(trainer, step, total, train_seconds, report_step, interval))
        values = [
            f"{name} {float(trainer.callback_metrics[name]):.4f}"
            for name in self.metrics
            if self._val_step is not None and name in trainer.callback_metrics
        ]
        if values:
            parts.append(" ".join(values) + f" (step {self._val_step})")
        return " | ".join(parts)

    def _eta(
        self,
        trainer: L.Trainer,
        step: int,
        total: float,
        train_seconds: float,
        report_step: int,
        interval: float,
    ) -> str:
        if self._window is not None and step > self._window[0]:
            seconds_per_step = (train_seconds - self._window[1]) / (step - self._window[0])
        elif step > report_step:  # still warming up: the interval's speed
            seconds_per_step = interval / (step - report_step)
        else:
            seconds_per_step = None
        limit = "max_steps" if 0 < trainer.max_steps == total else "max_epochs"
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        eta = run_eta(
            total - step,
            seconds_per_step,
            _validations_left(trainer, step, total, self._val_step),
            self._last_val_seconds,
            timer.time_remaining() if timer is not None else None,
            limit,
        )
        if eta is None:
            return "ETA ?"
        ahead = stages_ahead(trainer)
        if ahead and eta[1] != "max_time":
            # A later stage runs other networks at another speed, unknown until it starts: the
            # estimate is the rest of the run at this stage's speed, marked as such.
            return (
                f"ETA ~{_duration(eta[0])} ({eta[1]}, at the {self._stage_key[0]} stage's speed; "
                f"{', '.join(ahead)} not timed yet)"
            )
        return f"ETA {_duration(eta[0])} ({eta[1]})"


def _validations_left(trainer: L.Trainer, step: int, total: float, val_step: int | None) -> int:
    """Validation loops due after optimizer ``step`` up to ``total``, counting ``step``'s own when
    it is a validation step that has not run yet (this callback reports before it).

    Validation runs every ``trainer.val_check_batch`` training batches: counted over the whole
    run when ``check_val_every_n_epoch`` is None, else within each ``check_val_every_n_epoch``-th
    epoch. Validation by wall-clock interval (``val_check_interval`` as a time) is not counted.
    """
    num_val = trainer.num_val_batches
    if (
        not trainer.enable_validation
        or trainer.val_check_batch is None
        or not math.isfinite(total)
        or not sum(num_val if isinstance(num_val, list) else [num_val])
    ):
        return 0
    accumulate = trainer.accumulate_grad_batches
    if trainer.check_val_every_n_epoch is None:
        steps_per_val = trainer.val_check_batch / accumulate
    else:
        per_epoch = max(int(trainer.num_training_batches // trainer.val_check_batch), 1)
        epoch_steps = trainer.num_training_batches / accumulate
        steps_per_val = trainer.check_val_every_n_epoch * epoch_steps / per_epoch
    due = int(total // steps_per_val) - int(step // steps_per_val)
    pending = step % steps_per_val == 0 and val_step != step
    return due + int(pending)


def _batch_size(batch: Any) -> int:
    """Images in a training batch: the contract's ``image`` (B, C, H, W), a tensor, or the first
    element of a tuple."""
    if isinstance(batch, dict) and "image" in batch:
        return len(batch["image"])
    if isinstance(batch, list | tuple) and batch:
        return len(batch[0])
    return len(batch)


def _duration(seconds: float) -> str:
    """H:MM:SS of whole seconds (days shown as "1 day, 2:03:04")."""
    return str(timedelta(seconds=round(seconds)))
