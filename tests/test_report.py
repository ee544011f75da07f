"""The sweep table of ``python -m recattend.report``, on a hand-made multirun folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recattend.report import main, sweep_table


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_rows_are_labelled_by_the_overrides_that_differ(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["model=full", "seed=1"], {"test/sbd": 0.8, "test/sbd_std": 0.1})
    _job(tmp_path, 1, ["model=iter1", "seed=1"], {"test/sbd": 0.75, "test/abs_dic": 0.5})
    _job(tmp_path, 2, ["model=iter3", "seed=1"], None)  # crashed: no metrics.json, no row
    _job(tmp_path, 10, ["model=no_box_net", "seed=1"], {"test/sbd": 0.5})
    assert sweep_table(tmp_path).splitlines() == [
        "| run | SBD (%) | \\|DiC\\| |",
        "| --- | --- | --- |",
        "| model=full | 80.0 (10.0) | - |",
        "| model=iter1 | 75.0 | 0.50 |",
        "| model=no_box_net | 50.0 | - |",  # job 10 after job 1: numeric order
    ]


def test_a_single_job_shows_all_its_overrides(tmp_path: Path) -> None:
    _job(tmp_path, 0, ["model=full", "seed=1"], {"val/sbd": 0.8})
    assert sweep_table(tmp_path, split="val").splitlines()[2] == "| model=full seed=1 | 80.0 |"


def test_the_ablation_table_reports_the_validation_split(tmp_path: Path) -> None:
    # Table 4 is on KITTI's validation split: --table kitti_ablation reads val/*, not test/*.
    metrics = {"val/mwcov": 0.5, "val/mucov": 0.25, "test/mwcov": 0.9, "val/fp": 0.125}
    _job(tmp_path, 0, ["model=full"], metrics)
    _job(tmp_path, 1, ["model=no_angle"], {**metrics, "val/mwcov": 0.4})
    assert sweep_table(tmp_path, table="kitti_ablation").splitlines()[2:] == [
        "| model=full | 50.0 | 25.0 | 0.125 |",
        "| model=no_angle | 40.0 | 25.0 | 0.125 |",
    ]
    assert "90.0" in sweep_table(tmp_path, table="kitti")  # Table 2: the test split


def test_a_multirun_and_a_run_folder_make_one_table(tmp_path: Path) -> None:
    # The Table 4 sweep of the network ablations, then the training ablation as its own run.
    _job(tmp_path / "sweep", 0, ["model=full", "seed=1"], {"test/sbd": 0.8})
    _job(tmp_path / "sweep", 1, ["model=iter1", "seed=1"], {"test/sbd": 0.75})
    _job(tmp_path, 7, ["module.teacher_forcing=ground_truth", "seed=1"], {"test/sbd": 0.7})
    rows = sweep_table(tmp_path / "sweep", tmp_path / "7").splitlines()[2:]
    assert rows == [
        "| model=full | 80.0 |",
        "| model=iter1 | 75.0 |",
        "| module.teacher_forcing=ground_truth | 70.0 |",
    ]


def test_a_folder_without_jobs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no metrics.json in .* or its job folders"):
        main([str(tmp_path)])


def test_paper_tables_pick_their_columns() -> None:
    from recattend.report import metrics_table

    metrics = {
        "test/sbd": 0.5, "test/abs_dic": 1.0, "test/mwcov": 0.8, "test/mucov": 0.669,
        "test/fp": 0.764, "test/fn": 0.201, "test/fp_std": 0.5,
    }  # fmt: skip
    assert metrics_table(metrics, "test", "ours", "kitti").splitlines() == [
        "| run | MWCov (%) | MUCov (%) | AvgFP | AvgFN |",
        "| --- | --- | --- | --- | --- |",
        "| ours | 80.0 | 66.9 | 0.764 | 0.201 |",  # Table 2 prints no std
    ]
    assert metrics_table(metrics, "test", "ours", "cvppp").splitlines()[0] == (
        "| run | SBD (%) | \\|DiC\\| |"
    )
    # A table none of whose metrics was measured falls back to everything present.
    assert "MWCov" in metrics_table(metrics, "test", "ours", "cityscapes")
    with pytest.raises(ValueError, match="unknown table 'table5'"):
        metrics_table(metrics, "test", "ours", "table5")


def test_cvppp_table_rounds_as_the_paper_with_stds() -> None:
    """Table 1's layout: SBD in percent with one decimal, |DiC| and DiC with two, each with its
    std in parentheses; other metrics (here MWCov) stay out."""
    from recattend.report import metrics_table

    metrics = {
        "test/sbd": 0.8490000128746033, "test/sbd_std": 0.04799999892711639,
        "test/abs_dic": 2.6190409660339355, "test/abs_dic_std": 1.0,
        "test/dic": -2.6190409660339355, "test/dic_std": 1.2000000476837158,
        "test/mwcov": 0.7,
    }  # fmt: skip
    assert metrics_table(metrics, "test", "ours", "cvppp").splitlines() == [
        "| run | SBD (%) | \\|DiC\\| | DiC |",
        "| --- | --- | --- | --- |",
        "| ours | 84.9 (4.8) | 2.62 (1.00) | -2.62 (1.20) |",
    ]
