"""The evaluation task on a freshly trained checkpoint, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recattend.report import metrics_table
from recattend.tasks import eval as eval_task
from recattend.tasks import train
from tests.test_train import TINY


def test_metrics_table_by_hand() -> None:
    metrics = {
        "test/sbd": 0.849,
        "test/sbd_std": 0.048,
        "test/abs_dic": 0.8,
        "test/abs_dic_std": 1.0,
        "val/sbd": 0.1,
    }
    assert metrics_table(metrics, "test", "ours").splitlines() == [
        "| run | SBD (%) | \\|DiC\\| |",
        "| --- | --- | --- |",
        "| ours | 84.9 (4.8) | 0.8 (1.0) |",
    ]


def test_eval_scores_a_trained_checkpoint(compose_train, tmp_path: Path, capsys) -> None:
    train.run(compose_train(*TINY, "test=false", "logger=none"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    data = [o for o in TINY if o.startswith("dataset.")]
    cfg = compose_train(*data, f"ckpt_path={ckpt}", "trainer.accelerator=cpu", config_name="eval")
    metrics = eval_task.run(cfg)
    assert 0.0 <= metrics["test/sbd"] <= 1.0 and "test/abs_dic" in metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "| last.ckpt |" in capsys.readouterr().out

    wrong = compose_train(
        *data, "dataset.resolution=[64,64]", f"ckpt_path={ckpt}", config_name="eval"
    )
    with pytest.raises(
        ValueError, match=r"dataset\.resolution=\[64, 64\] \(checkpoint: \[32, 32\]\)"
    ):
        eval_task.run(wrong)


def test_eval_without_a_checkpoint_file_says_so(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(f"ckpt_path={tmp_path}/missing.ckpt", config_name="eval")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        eval_task.run(cfg)
