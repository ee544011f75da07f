"""Run folders (unique per run, shared by the ranks of a launch) and what ``ckpt_path=last``
resumes (the newest run with the same overrides)."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from recattend.tasks.train import resume_checkpoint
from recattend.utils import hydra as rh
from recattend.utils.hydra import _process_start, _stamp, launch_name, run_dir
from recattend.utils.resume import override_settings, resume_choice
from tests.helpers import CONF, ROOT

STAMP = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}-\d+"  # a new folder's name


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _in_processes(code: str, count: int, **env: str) -> list[str]:
    """What ``count`` Python processes, started together, print (outputs/ in the repository)."""
    env = {**{k: v for k, v in os.environ.items() if k != "RECATTEND_OUTPUTS"}, **env}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return outs


def test_runs_started_in_one_second_get_distinct_folders_in_time_order() -> None:
    # Two processes in one second (here: the same microsecond) differ by their pid; all sort
    # after a run started a second earlier, in the old and in the new naming.
    second = datetime(2026, 1, 2, 12, 0, 0, 5)
    one, two = _stamp(second, 4242), _stamp(second, 977)
    older = _stamp(datetime(2026, 1, 2, 11, 59, 59, 999_999), 99_999)
    assert one != two
    assert sorted([two, one, older, "2026-01-02_11-59-59"])[:2] == ["2026-01-02_11-59-59", older]
    assert one == "2026-01-02_12-00-00_000005-4242"
    # Real processes started together: one folder each, for runs and for multiruns alike.
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "import recattend.utils.hydra\n"
        f"with initialize_config_dir({str(CONF)!r}, version_base='1.3'):\n"
        "    cfg = compose('train', return_hydra_config=True)\n"
        "print(cfg.hydra.run.dir, cfg.hydra.sweep.dir)\n"
    )
    before = _stamp(datetime.now() - timedelta(seconds=1), 1)  # a second before they start
    got = [line.split() for line in _in_processes(code, 3)]
    assert len({run for run, _ in got}) == len({sweep for _, sweep in got}) == 3
    for run, sweep in got:
        assert re.fullmatch(f"outputs/train/runs/{STAMP}", run), run
        assert re.fullmatch(f"outputs/train/multiruns/{STAMP}", sweep), sweep
        assert Path(run).name == Path(sweep).name  # one process, one name
        assert Path(run).name > before and Path(run).name > before[:19]  # in either naming


def test_a_sweeps_jobs_keep_the_launchers_folder(monkeypatch) -> None:
    monkeypatch.delenv("RECATTEND_OUTPUTS", raising=False)
    # Hydra composes each job's config again and copies the launcher's resolver cache into it;
    # a SLURM job gets that config pickled, in another process with another start time.
    launcher = _compose()
    sweep = launcher.hydra.sweep.dir
    assert Path(sweep).parent == Path("outputs/train/multiruns")
    job = _compose("model=iter1")
    OmegaConf.copy_cache(from_config=launcher, to_config=job)
    job = pickle.loads(pickle.dumps(job))
    monkeypatch.setattr(rh, "_STARTED", "2030-01-01_00-00-00_000000-1")  # the job's own process
    assert job.hydra.sweep.dir == sweep
    assert _compose().hydra.sweep.dir.endswith("2030-01-01_00-00-00_000000-1")


def test_ranks_of_a_torchrun_launch_without_rdzv_id_share_a_folder() -> None:
    # torchrun's default rendezvous id is "none", the same for every launch: on one node the
    # ranks name the folder after their common parent, the torchrun process (here: this one).
    code = "from recattend.utils.hydra import run_dir; print(run_dir('runs'))"
    env = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}
    ranks = _in_processes(code, 2, **env)
    started = _process_start(os.getpid())
    assert started is not None
    assert ranks == [f"runs/{_stamp(started, os.getpid())}"] * 2
    # Several nodes have no common parent: the launch id, as with an explicit --rdzv_id.
    multi_node = _in_processes(code, 1, **{**env, "WORLD_SIZE": "4"})
    assert multi_node == ["runs/torchrun-none"]


def test_launch_name_of_one_process_is_its_own_stamp(monkeypatch) -> None:
    for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert launch_name() == rh.run_stamp() == rh._STARTED
    assert rh._STARTED.endswith(f"-{os.getpid()}")


def _run(runs: Path, name: str, overrides: list[str] | None, mtime: float | None) -> Path:
    """A hand-made run folder: ``.hydra/overrides.yaml`` and (with an mtime) a last.ckpt."""
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    if overrides is not None:
        text = "".join(f"- {o}\n" for o in overrides) or "[]\n"
        (run / ".hydra" / "overrides.yaml").write_text(text)
    if mtime is not None:
        ckpt = run / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir()
        torch.save({"global_step": 7, "epoch": 1, "state_dict": {}}, ckpt)
        os.utime(ckpt, (mtime, mtime))
    return run


def test_ckpt_path_last_picks_the_newest_run_with_the_same_overrides(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    mine = ["model=iter1", "dataset.resolution=[32, 32]", "+trainer.limit_val_batches=0"]
    _run(runs, "a-older-match", [*mine, "trainer.max_steps=5"], 1_000)
    match = _run(runs, "b-match", ["+trainer.limit_val_batches=0", *mine[:2], "logger=csv"], 2_000)
    newer = _run(runs, "c-other", ["model=full", *mine[1:]], 3_000)
    unknown = _run(runs, "d-unknown", None, 4_000)
    _run(runs, "e-no-ckpt", mine, None)
    # What may differ: the resume, how long to train, loggers, paths; spelling and order don't.
    here = [
        "trainer.limit_val_batches=0",
        "ckpt_path=last",
        "dataset.resolution=[32,32]",
        "trainer.max_steps=20",
        "model=iter1",
        "logger=none",
        f"paths.log_dir={tmp_path}",
        "hydra.verbose=true",
    ]
    assert run_dir(str(runs), "last", True, here) == str(match)
    choice = resume_choice(match)
    assert choice is not None and choice.run == match
    assert [run for run, _ in choice.passed_over] == [unknown, newer]
    assert "model=full (this command: model=iter1)" in dict(choice.passed_over)[newer]
    # Resolved again in the same process (Hydra, then Lightning's launcher): the same folder,
    # even after another run writes a newer last.ckpt.
    _run(runs, "f-late-match", mine, 5_000)
    assert run_dir(str(runs), "last", True, here) == str(match)


def test_ckpt_path_last_without_a_matching_run_lists_the_candidates(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "2026-01-01_00-00-00", ["model=full"], 1_000)
    _run(runs, "2026-01-02_00-00-00_000001-7", ["model=iter3", "seed=1"], 2_000)
    with pytest.raises(ValueError, match="ckpt_path=last: no run under") as err:
        run_dir(str(runs), "last", True, ["model=iter1", "ckpt_path=last"])
    message = str(err.value)
    assert "with this command's overrides" in message
    newest = message.index("2026-01-02_00-00-00_000001-7: model=iter3 (this command: model=iter1)")
    assert "seed=1 (this command: not set)" in message
    assert newest < message.index("2026-01-01_00-00-00: model=full (this command: model=iter1)")
    assert "ckpt_path=<run>/checkpoints/last.ckpt" in message


def test_resume_logs_the_run_it_continues_and_the_newer_one_it_passed_over(
    tmp_path: Path, caplog
) -> None:
    runs = tmp_path / "runs"
    match = _run(runs, "a", ["seed=1"], 1_000)
    newer = _run(runs, "b", ["seed=2"], 2_000)
    folder = run_dir(str(runs), "last", True, ["seed=1", "ckpt_path=last"])
    with caplog.at_level(logging.INFO, logger="recattend.tasks.train"):
        path = resume_checkpoint("last", Path(os.path.abspath(folder)))
    assert path == Path(os.path.abspath(match)) / "checkpoints" / "last.ckpt"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"ckpt_path=last: resuming run {match}" in infos[0]
    assert "at global step 7 (epoch 1)" in infos[-1]
    assert f"the newest last.ckpt ({newer / 'checkpoints' / 'last.ckpt'})" in warning
    assert "seed=2 (this command: seed=1)" in warning
    assert f"pass its checkpoint: ckpt_path={newer / 'checkpoints' / 'last.ckpt'}" in warning


def test_the_config_resumes_the_run_matching_the_command_line(tmp_path: Path) -> None:
    # Through Hydra's composition: hydra.run.dir compares hydra.overrides.task with each run's.
    runs = tmp_path / "train" / "runs"
    match = _run(runs, "a", ["model=iter1", f"paths.log_dir={tmp_path}"], 1_000)
    _run(runs, "b", ["model=full"], 2_000)
    cfg = _compose("model=iter1", "ckpt_path=last", f"paths.log_dir={tmp_path}")
    assert cfg.hydra.run.dir == str(match)
    cfg = _compose("model=iter1", f"paths.log_dir={tmp_path}")  # no resume: a new folder
    assert Path(cfg.hydra.run.dir).parent == runs and not Path(cfg.hydra.run.dir).exists()


def test_override_settings_compare_parsed_values() -> None:
    settings = override_settings(
        ["+a.b=[1, 2]", "~c", "model@net=full", "ckpt_path=x", "logger.wandb.offline=false"]
    )
    assert settings == {
        "a.b": ([1, 2], "+a.b=[1, 2]"),
        "c": ("~", "~c"),
        "model@net": ("full", "model@net=full"),
    }
    assert override_settings(["a.b=[1,2]"])["a.b"][0] == settings["a.b"][0]
