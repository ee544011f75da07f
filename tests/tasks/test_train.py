"""The training task end to end: in-process through run(cfg), and as users run it (subprocesses)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from recattend.tasks import train
from tests.helpers import ROOT, TINY, run_cli


@pytest.mark.parametrize(
    ("module", "metric", "cls"),
    [
        ("segmenter", "test/sbd", "SegmenterModule"),
        ("preprocessor", "test/fg_iou", "PreprocessorModule"),
    ],
)
def test_train_writes_metrics_checkpoints_csv_and_offline_wandb(
    compose_train, tmp_path: Path, module: str, metric: str, cls: str, capsys
) -> None:
    from recattend import lit

    cfg = compose_train(*TINY, f"module={module}")
    train.run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"train/loss", metric, metric.replace("test/", "val/")} <= set(metrics)
    assert 0.0 <= metrics[metric] <= 1.0
    # The paper-style table of test metrics, its row named by what was scored: the best
    # checkpoint by the monitored metric.
    best = [p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")]
    assert len(best) == 1 and f"| {best[0]} |" in capsys.readouterr().out
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B offline run folder missing"
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert list((tmp_path / "figures").glob("val_step*.png")), "validation figure missing"
    # Checkpoints hold plain hyper-parameters only: they load under torch's weights_only=True.
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert (hparams["net"] if cls == "SegmenterModule" else hparams)["image_size"] == [32, 32]
    getattr(lit, cls).load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", weights_only=True
    )


def test_seed_zero_is_honoured(compose_train, tmp_path: Path) -> None:
    losses = []
    for _ in range(2):
        cfg = compose_train(*TINY, "seed=0", "logger=none", "test=false", "callbacks=none")
        train.run(cfg)
        losses.append(json.loads((tmp_path / "metrics.json").read_text())["train/loss"])
    assert losses[0] == losses[1]


def test_unwritable_output_dir_fails_before_training(compose_train, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = compose_train(*TINY, f"paths.output_dir={blocker}/run")
    with pytest.raises(PermissionError, match=r"paths\.output_dir: cannot write to .*a-file/run"):
        train.run(cfg)


@pytest.mark.slow
def test_cli_errors_are_clear(tmp_path: Path, offline_env: dict[str, str]) -> None:
    unknown = run_cli(
        ["train.py", "dataset=cityscpes", f"hydra.run.dir={tmp_path}/a"], ROOT, offline_env
    )
    assert unknown.returncode != 0
    assert "Could not find 'dataset/cityscpes'" in unknown.stderr and "synthetic" in unknown.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = run_cli(["train.py", f"hydra.run.dir={blocker}/run"], ROOT, offline_env)
    assert unwritable.returncode != 0 and "hydra.run.dir: cannot write to" in unwritable.stderr

    for override, key in [
        ("dataset.max_instances=0", "dataset.max_instances=0 must be >= 1"),
        ("dataset.resolution=[100,100]", "dataset.resolution=[100, 100] must be divisible"),
    ]:
        bad = run_cli(["train.py", override, f"hydra.run.dir={tmp_path}/b"], ROOT, offline_env)
        assert bad.returncode != 0 and key in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
def test_multirun_gives_one_folder_and_one_wandb_run_per_job(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "train.py",
            "-m",
            "model=full,iter1",
            *TINY,
            "trainer.max_steps=2",
            "logger=wandb",
            f"hydra.sweep.dir={sweep}",
        ],
        ROOT,
        offline_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file()
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        # One W&B group for the sweep, the job's overrides as the run name.
        record = next(runs[0].glob("*.wandb")).read_bytes()
        name = f"model={['full', 'iter1'][int(job)]}".encode()
        assert b"train-sweep" in record and name in record
    assert (sweep / "1" / ".hydra" / "overrides.yaml").read_text().count("model=iter1") == 1
    # The Table 4-style report: one row per job, labelled by what differs between them.
    report = run_cli(["-m", "recattend.report", str(sweep)], ROOT, offline_env)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].startswith("| run | SBD (%) | \\|DiC\\| |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| model=full", "| model=iter1"]


@pytest.mark.slow
def test_multirun_refuses_subprocess_ddp(tmp_path: Path, offline_env: dict[str, str]) -> None:
    result = run_cli(
        [
            "train.py",
            "-m",
            "seed=1,2",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            f"hydra.sweep.dir={tmp_path}",
        ],
        ROOT,
        offline_env,
    )
    assert result.returncode != 0
    assert "would relaunch the whole sweep" in result.stderr and "ddp_spawn" in result.stderr


@pytest.mark.slow
def test_installed_entry_point_finds_its_configs(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    script = Path(sys.executable).with_name("recattend-train")
    assert script.is_file(), "pip install -e . should have created the recattend-train script"
    # Run from an unrelated folder: the configs must come from the package, not the checkout.
    result = run_cli([str(script), "--cfg", "job", "dataset.style=shapes"], tmp_path, offline_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "style: shapes" in result.stdout and "recattend.lit.SegmenterModule" in result.stdout


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path: Path, offline_env: dict[str, str]) -> None:
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", "outputs", ".git", "*.egg-info"),
    )
    built = run_cli(
        [
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "w"),
            str(src),
        ],
        tmp_path,
        offline_env,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / "w").glob("recattend-*.whl"))).namelist()
    for config in (
        "train.yaml",
        "dataset/synthetic.yaml",
        "trainer/ddp.yaml",
        "hydra/default.yaml",
    ):
        assert f"recattend/conf/{config}" in names, config


def test_csv_logger_appends_to_a_file_another_process_wrote(tmp_path: Path) -> None:
    from recattend.utils.loggers import CSVLogger

    first = CSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"val/iou": 0.5}, step=1)
    first.save()
    second = CSVLogger(tmp_path, name="csv", version="")  # a new process: knows no columns yet
    second.log_metrics({"test/iou": 0.25}, step=2)
    second.save()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [r["train/loss"] for r in rows] == ["1.0", "", ""]
    assert [r["val/iou"] for r in rows] == ["", "0.5", ""]
    assert [r["test/iou"] for r in rows] == ["", "", "0.25"]


@pytest.mark.parametrize(
    "counts",
    [
        ["dataset.min_objects=0", "dataset.max_objects=0", "dataset.max_instances=2"],
        ["dataset.min_objects=1", "dataset.max_objects=1", "dataset.max_instances=2"],
        ["dataset.min_objects=5", "dataset.max_objects=5", "dataset.max_instances=2"],
    ],
    ids=["no-instances", "one-instance", "more-than-T-1"],
)
def test_segmenter_trains_and_evaluates_any_instance_count(
    compose_train, tmp_path: Path, counts
) -> None:
    cfg = compose_train(*TINY, *counts, "logger=none", "callbacks=none")
    train.run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(metrics[k] is not None for k in ("train/loss", "test/sbd", "test/abs_dic"))


@pytest.mark.slow
def test_runs_started_together_keep_apart_and_resume_picks_its_own(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    import os
    import subprocess
    import time

    # A sweep of single runs from a shell loop: two `python train.py` started together.
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
    common = ["train.py", *tiny, "trainer.max_epochs=-1", "test=false", "logger=csv"]
    common.append(f"paths.log_dir={tmp_path}")
    procs = [
        subprocess.Popen(
            [sys.executable, *common, "trainer.max_steps=1", f"seed={seed}"],
            cwd=ROOT,
            env={**os.environ, **offline_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-3000:]
    folders = sorted(tmp_path.glob("train/runs/*"))
    assert len(folders) == 2, "two runs shared a folder"
    by_seed = {}
    for folder in folders:
        overrides = (folder / ".hydra" / "overrides.yaml").read_text().split()
        (seed,) = [o for o in overrides if o.startswith("seed=")]
        by_seed[seed] = folder
        assert (folder / "metrics.json").is_file() and (folder / "train.log").is_file()
        assert [p.name for p in (folder / "checkpoints").glob("last*.ckpt")] == ["last.ckpt"]
    assert set(by_seed) == {"seed=1", "seed=2"}
    # The newest last.ckpt is the seed=2 run's: resuming seed=1 continues the seed=1 run anyway.
    newest = by_seed["seed=2"] / "checkpoints" / "last.ckpt"
    os.utime(newest, (time.time() + 60, time.time() + 60))
    resume = [*common, "seed=1", "ckpt_path=last", "trainer.max_steps=2"]
    resumed = run_cli(resume, ROOT, offline_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(tmp_path.glob("train/runs/*")) == folders
    log = (by_seed["seed=1"] / "train.log").read_text()
    assert f"ckpt_path=last: resuming run {by_seed['seed=1']}" in log
    assert f"pass its checkpoint: ckpt_path={newest}" in log
    final = torch.load(by_seed["seed=1"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 2
    # No run with these overrides: a clear error listing both runs.
    none = run_cli([*common, "seed=3", "ckpt_path=last"], ROOT, offline_env)
    assert none.returncode != 0
    assert "no run under" in none.stderr and "seed=2 (this command: seed=3)" in none.stderr


def test_debug_tiny_runs_both_stages_and_the_test_split(compose_train, tmp_path: Path) -> None:
    cfg = compose_train("debug=tiny", "logger=none")
    train.run(cfg)
    assert cfg.dataset.resolution == [64, 64] and cfg.dataset.max_instances == 4
    # 32 images of batch 4 for 3 epochs; the full stage (from step 8) trained the masks.
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 24
    (stages,) = (v for k, v in saved["callbacks"].items() if k.startswith("BootstrapStages"))
    assert stages["stage"] == "full"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test/sbd", "train/loss_segm"} <= set(metrics)


class ScoredWeights(L.Callback):
    """Saves the weights that trainer.validate and trainer.test run with (validated.pt,
    tested.pt in ``folder``)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            torch.save(pl_module.state_dict(), self.folder / "validated.pt")

    def on_test_start(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), self.folder / "tested.pt")


def test_test_ckpt_last_scores_the_last_weights_on_both_splits(
    compose_train, tmp_path: Path, capsys
) -> None:
    # Two epochs of 2 steps, validated after each: test_ckpt=last scores the weights at the end
    # of training (last.ckpt), not the best checkpoint, and final_validation scores the
    # validation split with them too.
    cfg = compose_train(
        *(o for o in TINY if not o.startswith("trainer.max_epochs=")),
        "trainer.max_epochs=2",
        "logger=none",
        "test_ckpt=last",
        "final_validation=true",
        "+callbacks.scored._target_=tests.tasks.test_train.ScoredWeights",
        f"+callbacks.scored.folder={tmp_path}",
    )
    train.run(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name in ("validated.pt", "tested.pt"):
        scored = torch.load(tmp_path / name, weights_only=True)
        assert all(torch.equal(scored[k], v) for k, v in last.items()), name
    assert "| end of training (step 4) |" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"val/sbd", "test/sbd"} <= set(metrics)


def test_an_unknown_test_ckpt_is_refused_before_training(compose_train, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_ckpt='latest' must be one of best | last"):
        train.run(compose_train(*TINY, "test_ckpt=latest"))
    assert not (tmp_path / "checkpoints").exists()
