"""The command line (recattend.utils.cli): --help, errors that name the key meant, the resume
command. The scripts run as users run them (subprocesses, outputs under tmp_path)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recattend.utils import cli
from recattend.utils.cli import resume_command
from tests.helpers import ROOT, TINY, run_cli


def _run(args: list[str], tmp_path: Path, env: dict[str, str], full_error: str = "0"):
    """``python <args>`` with every output folder under ``tmp_path/outputs``."""
    outputs = tmp_path / "outputs"
    extra = {"RECATTEND_OUTPUTS": str(outputs), "HYDRA_FULL_ERROR": full_error}
    return run_cli(args, ROOT, {**env, **extra}, timeout=120)


def _folders(tmp_path: Path) -> list[str]:
    """Run and multirun folders made under ``tmp_path/outputs``."""
    outputs = tmp_path / "outputs"
    return sorted(str(p.relative_to(outputs)) for p in outputs.glob("*/*/*"))


def test_help_describes_the_app_its_groups_and_the_common_overrides(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    train = _run(["train.py", "--help"], tmp_path, offline_env)
    assert train.returncode == 0, train.stderr
    text = train.stdout
    assert text.startswith("python train.py [OVERRIDE ...]: train the instance segmenter")
    assert "== Config groups (group=option) ==" in text
    assert "\nmodel: full, iter1, iter3, no_angle, no_box_net," in text
    assert "\ntrainer: cpu, ddp, ddp_sim, default, gpu\n" in text
    for override in (
        "dataset=cvppp dataset.root=",
        "experiment=cvppp",
        "model=no_box_net",
        "trainer.max_steps=",
        "trainer=ddp trainer.devices=4",
        "logger.wandb.offline=false",
        "ckpt_path=last",
        "init_from=",
        "seed=0",
        "-m model=full,iter1",
    ):
        assert f"\n  {override}" in text, override
    # Not Hydra's dump of the whole config (244 lines before): no config values.
    assert "_target_" not in text and len(text.splitlines()) < 60
    for script, what in (("eval.py", "score a checkpoint"), ("predict.py", "find the instances")):
        result = _run([script, "--help"], tmp_path, offline_env)
        assert result.returncode == 0 and what in result.stdout, result.stderr
    assert _folders(tmp_path) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.max_epoch=1"], "no key 'trainer.max_epoch' in the config. Did you mean "
         "trainer.max_epochs=1 or trainer.min_epochs=1"),
        (["dataset.batchsize=4"], "Did you mean dataset.batch_size=4?"),
        (["dataset=cvppp", "dataset.rot=/data/A1"], "Did you mean dataset.root=/data/A1?"),
        (["modle=full"], "no key or config group 'modle' in the config. Did you mean model=full?"),
        (["datset=cvppp"], "Did you mean dataset=cvppp?"),
        (["trainr.max_epochs=3"], "'trainr' in the config. Did you mean trainer.max_epochs=3?"),
        (["dataset.augmnt=strong"], "Did you mean dataset/augment=strong?"),
        (["dataset=cvpp"], "Could not find 'dataset/cvpp'. Did you mean dataset=cvppp?\n"
         "Available options in 'dataset': cityscapes, coco, cvppp, kitti,"),
        (["-m", "trainer.max_epoch=1,2"], "Did you mean trainer.max_epochs=1,2"),
    ],
    ids=["key", "nested key", "key of the chosen option", "group", "group 2", "parent",
         "nested group", "option", "multirun"],
)  # fmt: skip
def test_a_mistyped_override_names_the_closest_and_leaves_no_folder(
    tmp_path: Path, offline_env: dict[str, str], overrides: list[str], expected: str
) -> None:
    result = _run(["train.py", *overrides], tmp_path, offline_env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr  # no traceback
    assert _folders(tmp_path) == []  # a multirun's folder too (Hydra makes it first)


@pytest.mark.parametrize(
    ("script", "override", "expected"),
    [
        ("eval.py", "weights=leavs", "weights=leavs: no shipped weights of that name and no such "
         "file. Did you mean weights=leaves?\nShipped weights: leaves;"),
        ("predict.py", "weights=lef input=. output=out", "weights=lef: no shipped weights of "
         "that name and no such file.\nShipped weights: leaves;"),
        ("train.py", "init_from=leafs", "Did you mean init_from=leaves?"),
        ("eval.py", "ckpt_path=runs/missing.ckpt", "ckpt_path=runs/missing.ckpt: no shipped"),
    ],
    ids=["weights", "no close name", "init_from", "ckpt_path"],
)  # fmt: skip
def test_a_mistyped_checkpoint_name_is_answered_and_leaves_no_folder(
    tmp_path: Path, offline_env: dict[str, str], script: str, override: str, expected: str
) -> None:
    result = _run([script, *override.split()], tmp_path, offline_env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _folders(tmp_path) == []


def test_full_error_keeps_the_traceback_with_the_suggestion(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    result = _run(["eval.py", "trainer.max_epoch=1"], tmp_path, offline_env, full_error="1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigCompositionException" in result.stderr
    assert "Did you mean trainer.max_epochs=1" in result.stderr  # the note
    assert _folders(tmp_path) == []


def test_resume_command_repeats_the_overrides_with_the_checkpoint(
    compose_train, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose_train("seed=3", "dataset.resolution=[32,32]", "ckpt_path=last")
    monkeypatch.delenv(cli.LAUNCHER, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    # `python` on the PATH is this interpreter (an activated venv): python train.py ...
    monkeypatch.setattr(cli.shutil, "which", lambda name: sys.executable)
    assert resume_command(Path("/runs/a b/checkpoints/last.ckpt")) == (
        "python train.py seed=3 'dataset.resolution=[32,32]' "
        "'ckpt_path=/runs/a b/checkpoints/last.ckpt'"
    )
    # It is not (the venv not activated): this interpreter's path, relative where it can be.
    monkeypatch.setattr(cli.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.chdir(Path(sys.executable).parent)
    assert resume_command(Path("/r/last.ckpt")).startswith(
        f"{Path(sys.executable).name} train.py seed=3 "
    )
    monkeypatch.setattr(sys, "argv", ["/venv/bin/recattend-train"])
    assert resume_command(Path("/r/last.ckpt")).startswith("/venv/bin/recattend-train seed=3 ")
    monkeypatch.setattr(cli.shutil, "which", lambda name: "/venv/bin/" + name)
    assert resume_command(Path("/r/last.ckpt")).startswith("recattend-train seed=3 ")
    # Started by `make train`: resumed by make too, the overrides in ARGS.
    monkeypatch.setenv(cli.LAUNCHER, "make train")
    assert resume_command(Path("/runs/a b/last.ckpt")) == (
        "make train ARGS=\"seed=3 'dataset.resolution=[32,32]' 'ckpt_path=/runs/a b/last.ckpt'\""
    )


def test_ctrl_c_during_start_up_stops_cleanly(tmp_path: Path, offline_env: dict[str, str]) -> None:
    # SIGINT a second after the start, while the program imports and composes: no traceback,
    # the Ctrl-C exit status. (Earlier, Python itself may still be starting on a loaded
    # machine, before any program code can take the signal.)
    env = {**os.environ, **offline_env, "RECATTEND_OUTPUTS": str(tmp_path / "outputs")}
    process = subprocess.Popen(
        [sys.executable, "train.py", "logger=none"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "Stopped by Ctrl-C" in stderr, stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "seed='abc' must be an integer (e.g. seed=0) or null"),
        ("module.lr=-1", "module.lr=-1 must be a number > 0"),
        ("trainer.max_steps=0", "trainer.max_steps=0: give a positive number of steps, or -1 "
         "for no limit (0 would train nothing and save nothing)"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: give a positive number of epochs"),
    ],
)  # fmt: skip
def test_bad_values_name_their_key(compose_train, override: str, message: str) -> None:
    from hydra.errors import InstantiationException

    from recattend.tasks import train

    # A module's own check reaches the user through Hydra's instantiation error, message intact.
    with pytest.raises((ValueError, InstantiationException), match=re.escape(message)):
        train.run(compose_train(*TINY, "logger=none", override))
