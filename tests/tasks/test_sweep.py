"""Hyper-parameter search (hparams_search=synthetic_optuna): Hydra's Optuna sweeper over the
monitored metric's best validation value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, run_cli


def test_the_search_composes_over_the_monitored_metric(compose_train) -> None:
    cfg = compose_train("hparams_search=synthetic_optuna")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.monitor.mode == "max"
    assert cfg.optimized_metric == cfg.monitor.metric == "val/sbd"
    assert set(cfg.hydra.sweeper.params) == {
        "module.lr", "callbacks.scheduled_sampling.decay_steps", "module.lambda_score",
    }  # fmt: skip
    # A recipe keeps the search, and its own settings replace the search's small ones.
    recipe = compose_train("hparams_search=synthetic_optuna", "experiment=synthetic_benchmark")
    assert recipe.hydra.sweeper.n_trials == 8 and recipe.trainer.val_check_interval == 500


@pytest.mark.slow
def test_two_trials_return_their_best_validation_value(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    tiny = [
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
        "dataset.num_train=16", "dataset.num_val=4", "dataset.num_test=4", "dataset.batch_size=4",
        "dataset.num_workers=0", "trainer.max_steps=6", "trainer.val_check_interval=3",
        "trainer.accelerator=cpu", "callbacks.bootstrap.stages.0.steps=2", "logger=none",
        f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    result = run_cli(
        ["train.py", "-m", "hparams_search=synthetic_optuna", *tiny], ROOT, offline_env, 300
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    [found] = (tmp_path / "train" / "multiruns").glob("*/optimization_results.yaml")
    best = yaml.safe_load(found.read_text())
    assert set(best["best_params"]) == {
        "module.lr", "callbacks.scheduled_sampling.decay_steps", "module.lambda_score",
    }  # fmt: skip
    # The value of the best trial is the best val/sbd that trial's checkpoint was chosen by.
    values = []
    for job in sorted(found.parent.glob("[0-9]*")):
        best_file = next((job / "checkpoints").glob("best-step_*.ckpt"))
        values.append(float(best_file.stem.rsplit("-", 1)[1]))
    assert best["best_value"] == pytest.approx(max(values), abs=1e-4)
