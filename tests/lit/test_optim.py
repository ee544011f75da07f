"""The segmenter's learning-rate schedule: linear warm-up times a staircase decay, per stage."""

from __future__ import annotations

import pytest

from recattend.lit.optim import lr_factor
from tests.helpers import tiny_segmenter


def test_warm_up_then_staircase() -> None:
    factor = lr_factor(4, 0.5, 3)
    # k + 1 over 4 while warming up, times 0.5 per completed 3 steps.
    expected = [0.25, 0.5, 0.75, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert [factor(k) for k in range(10)] == pytest.approx(expected)
    assert [lr_factor(0, 0.7, 2)(k) for k in range(5)] == pytest.approx([1, 1, 0.7, 0.7, 0.49])


@pytest.mark.parametrize(("warmup", "steps"), [(-1, 10), (0, 0)])
def test_bad_schedule_names_both_keys(warmup: int, steps: int) -> None:
    with pytest.raises(ValueError, match="lr_warmup_steps=.* lr_decay_steps="):
        lr_factor(warmup, 0.9, steps)


def test_the_stage_sets_the_warm_up_and_the_optimiser_takes_the_betas() -> None:
    module = tiny_segmenter(lr=1e-3, lr_warmup_steps=0, adam_betas=(0.8, 0.99))
    module.stage_overrides = {"lr_warmup_steps": 10, "lr": 2e-3}  # as a bootstrap stage does
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)  # step 0: 1/10 of 2e-3
    for _ in range(9):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
