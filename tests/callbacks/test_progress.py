"""The progress line of ProgressReport, driven by a real Trainer on a fake clock.

The scripted module (tests/callbacks/scripted.py) makes loss k at optimizer step k and logs
val/sbd 0.5, 0.7, 0.9 at its validations; batches of 6 images; stages box (steps 1-6) and full
(7-12); validation every 4 steps. The clock charges 10 s for the first two steps of each stage
(warm-up), then 2 s per box step and 3 s per full step, and 5 s per validation. Training seconds
at each step, validation excluded: 10, 20, 22, 24 | 26, 28, 38, 48 | 51, 54, 57, 60; the wall
clock runs 5 s ahead after step 4's validation and 10 s after step 8's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest

from recattend.callbacks import BootstrapStages, KeyMetricsProgressBar
from recattend.callbacks import progress as progress_module
from recattend.callbacks.progress import ProgressReport, run_eta
from tests.callbacks.scripted import Scripted
from tests.helpers import quiet_trainer


class FakeClock(L.Callback):
    """The seconds the module's steps and validations take (module docstring)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step + 1  # the optimizer step this batch makes
        self.now += 10.0 if step in (1, 2, 7, 8) else 2.0 if step <= 6 else 3.0

    def on_validation_batch_end(self, *args) -> None:
        self.now += 5.0


def test_lines_show_progress_speed_and_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress_module, "monotonic", clock)
    stages = BootstrapStages([{"name": "box", "steps": 6}, {"name": "full", "steps": None}])
    report = ProgressReport(["val/sbd"], every_n_steps=4, every_minutes=60, warmup_steps=2)
    trainer = quiet_trainer(
        tmp_path, 12, [clock, stages, report],
        limit_val_batches=1, val_check_interval=4, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, enable_checkpointing=False,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        trainer.fit(Scripted())
    lines = [r.getMessage() for r in caplog.records if r.name == progress_module.__name__]
    assert lines == [
        # Step 1, the first of the run: a line at once. 6 images in 10 s; the stage's warm-up is
        # not over, so the interval's 10 s per step stands in for its speed: 11 steps left.
        "step 1/12 (8%) | stage box | loss 1.0000 | lr 1.00e+00 | 0.6 img/s | elapsed 0:00:10"
        " | ETA ~0:01:50 (max_steps, at the box stage's speed; full not timed yet)",
        # Step 4: 18 images in 14 training s since step 1; box speed from step 2 on:
        # (24 - 20) / 2 = 2 s per step, 8 steps left; no validation measured yet. The full stage
        # is still to come, at an unknown speed: the estimate is marked and says so.
        "step 4/12 (33%) | stage box | loss 3.0000 | lr 1.00e+00 | 1.3 img/s | elapsed 0:00:24"
        " | ETA ~0:00:16 (max_steps, at the box stage's speed; full not timed yet)",
        # Step 8: the full stage's speed is not measured past its warm-up (steps 7, 8), so the
        # interval's stands in: 24 s / 4 steps = 6 s x 4 steps left, plus step 8's and step 12's
        # validations at 5 s (step 4's duration).
        "step 8/12 (67%) | stage full | loss 6.5000 | lr 1.00e+00 | 1.0 img/s | elapsed 0:00:53"
        " | ETA 0:00:34 (max_steps) | val/sbd 0.5000 (step 4)",
        # Step 12: full speed (60 - 48) / 4 = 3 s per step, no step left, step 12's validation due.
        "step 12/12 (100%) | stage full | loss 10.5000 | lr 1.00e+00 | 2.0 img/s"
        " | elapsed 0:01:10 | ETA 0:00:05 (max_steps) | val/sbd 0.7000 (step 8)",
    ]


def test_the_sooner_limit_ends_the_run() -> None:
    # 100 steps at 2 s and 2 validations at 30 s: 260 s by the step limit.
    assert run_eta(100, 2.0, 2, 30.0, None, "max_steps") == (260.0, "max_steps")
    assert run_eta(100, 2.0, 2, 30.0, 300.0, "max_steps") == (260.0, "max_steps")
    assert run_eta(100, 2.0, 2, 30.0, 200.0, "max_steps") == (200.0, "max_time")
    assert run_eta(100, 2.0, 2, 30.0, -5.0, "max_epochs") == (0.0, "max_time")  # overdue
    # No step limit (max_epochs=-1, max_steps=-1) or no speed yet: the time limit alone.
    assert run_eta(float("inf"), 2.0, 0, 0.0, 120.0, "max_epochs") == (120.0, "max_time")
    assert run_eta(100, None, 0, 0.0, 120.0, "max_steps") == (120.0, "max_time")
    assert run_eta(float("inf"), 2.0, 0, 0.0, None, "max_epochs") is None


class Verbose(Scripted):
    """Puts loss terms and stds on the progress bar, as the segmenter does."""

    def training_step(self, batch: dict, batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        terms = {"train/loss": loss, "train/loss_box": loss, "train/loss_score": loss}
        self.log_dict(terms, prog_bar=True)
        return loss

    def on_validation_epoch_end(self) -> None:
        values = {"val/sbd": 0.5, "val/sbd_std": 0.1, "val/abs_dic": 0.25, "val/abs_dic_std": 0.5}
        self.log_dict(values, prog_bar=True)


def test_the_bar_shows_the_stage_and_the_key_metrics_only(tmp_path: Path) -> None:
    bar = KeyMetricsProgressBar(["train/loss", "val/sbd", "val/sbd", "val/abs_dic", "val/mwcov"])
    stages = BootstrapStages([{"name": "box", "steps": 2}, {"name": "full", "steps": None}])
    trainer = quiet_trainer(
        tmp_path, 3, [stages, bar], enable_progress_bar=True, limit_val_batches=1,
        val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        enable_checkpointing=False,
    )  # fmt: skip
    module = Verbose()
    trainer.fit(module)
    assert len(trainer.progress_bar_metrics) == 7  # all logged with prog_bar=True
    # The stage first, then the named metrics present (val/mwcov is not), in their order.
    assert bar.get_metrics(trainer, module) == {
        "stage": "full", "train/loss": 3.0, "val/sbd": 0.5, "val/abs_dic": 0.25,
    }  # fmt: skip
