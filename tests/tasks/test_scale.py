"""Scale and tracking: trainer settings, SLURM sweeps, resume after SIGKILL, W&B, compile."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from recattend.tasks import eval as eval_task
from recattend.tasks import train
from recattend.utils.config import check_multirun_strategy, resolved_devices, trainer_settings
from recattend.utils.hydra import run_dir
from recattend.utils.loggers import previous_wandb_id
from tests.helpers import ROOT, TINY, run_cli, tiny_segmenter


def _trainer(**settings: object):
    return OmegaConf.create({"accelerator": "cpu", "devices": 1, "num_nodes": 1, **settings})


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"accelerator": "gpu", "devices": 4}, ("gpu", 4)),
        ({"accelerator": "cuda", "devices": "0,1,"}, ("gpu", 2)),
        ({"accelerator": "gpu", "devices": [0, 3], "num_nodes": 2}, ("gpu", 4)),
        ({"accelerator": "cpu", "devices": 2, "num_nodes": 3}, ("cpu", 6)),
        ({"accelerator": "cpu", "devices": "auto"}, ("cpu", 1)),
    ],
)
def test_world_size_as_lightning_counts_it(settings: dict, expected: tuple[str, int]) -> None:
    assert resolved_devices(_trainer(**settings)) == expected


def test_sync_batchnorm_auto_only_with_several_cuda_devices() -> None:
    assert trainer_settings(_trainer(accelerator="gpu", devices=4, sync_batchnorm="auto")) == {
        "sync_batchnorm": True
    }
    for settings in ({"accelerator": "gpu", "devices": 1}, {"accelerator": "cpu", "devices": 2}):
        got = trainer_settings(_trainer(**settings, sync_batchnorm="auto"))
        assert got == {"sync_batchnorm": False}, settings
    # Explicit choices are kept; true with several CPU processes is impossible (no CPU kernel).
    assert trainer_settings(_trainer(accelerator="gpu", devices=2, sync_batchnorm=False)) == {
        "sync_batchnorm": False
    }
    with pytest.raises(ValueError, match="sync_batchnorm=true needs CUDA"):
        trainer_settings(_trainer(accelerator="cpu", devices=2, sync_batchnorm=True))


@pytest.mark.parametrize("precision", ["16-true", "bf16-true", "bf16"])
def test_pure_half_precision_is_refused(precision: str) -> None:
    with pytest.raises(ValueError, match=f"trainer.precision={precision} is not supported"):
        trainer_settings(_trainer(precision=precision))


def test_run_dir_resumes_the_newest_run_with_a_last_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, mtime in (("2026-01-01_00-00-00", 2_000), ("2026-01-02_00-00-00", 1_000)):
        ckpt = runs / name / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    (runs / "2026-01-03_00-00-00").mkdir()  # newer, but nothing to resume there
    # The last.ckpt written most recently, not the newest folder name.
    assert run_dir(str(runs), "last", True) == str(runs / "2026-01-01_00-00-00")
    explicit = runs / "2026-01-02_00-00-00" / "checkpoints" / "epoch_001.ckpt"
    assert run_dir(str(runs), str(explicit), True) == str(runs / "2026-01-02_00-00-00")
    # Evaluating a checkpoint (not training) or starting afresh: a new folder.
    for ckpt_path, training in ((str(explicit), False), (None, True), ("/x/model.ckpt", True)):
        new = Path(run_dir(str(runs), ckpt_path, training))
        assert new.parent == runs and not new.exists()
    with pytest.raises(ValueError, match="ckpt_path=last: no run under"):
        run_dir(str(tmp_path / "empty"), "last", True)


def test_ranks_of_one_torchrun_or_srun_launch_share_a_folder(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_dir("runs") == "runs/torchrun-abc"
    for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "2")
    assert run_dir("runs") == "runs/slurm-77.2"
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: an ordinary, time-stamped folder
    assert run_dir("runs").startswith("runs/20")


def test_slurm_launcher_takes_nodes_and_tasks_from_the_trainer(compose_train) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_train(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu"
    # Inside a multirun, plain ddp is safe under SLURM (one task per rank) ...
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    check_multirun_strategy(cfg.trainer)
    # ... as long as the tasks match the processes the trainer expects.
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.launcher.tasks_per_node = 1
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(ValueError, match="starts 2 SLURM tasks per job but .* asks for 8"):
        check_multirun_strategy(cfg.trainer)


def test_previous_wandb_id_is_the_newest_run(tmp_path: Path) -> None:
    assert previous_wandb_id(tmp_path) is None
    for name in (
        "offline-run-20260101_120000-first1",
        "run-20260102_090000-second",
        "offline-run-20260101_235959-other",
        "latest-run",
    ):
        (tmp_path / name).mkdir()
    assert previous_wandb_id(tmp_path) == "second"


def test_final_metrics_table_figures_and_checkpoint_artifact_in_the_wandb_run(
    compose_train, tmp_path: Path, offline_env: dict[str, str]
) -> None:
    cfg = compose_train(
        *TINY, "logger=wandb", "logger.wandb.log_model=true", "logger.wandb.log_predictions=3"
    )
    train.run(cfg)
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    tables = list(run.glob("files/media/table/metrics_table_*.table.json"))
    assert len(tables) == 1, tables
    table = json.loads(tables[0].read_text())
    assert table["columns"][:2] == ["split", "abs_dic"]
    assert [row[0] for row in table["data"]] == ["train", "val", "test"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    sbd = table["columns"].index("sbd")
    assert table["data"][2][sbd] == pytest.approx(metrics["test/sbd"])
    assert list(run.glob("files/media/images/val/figure_*.png")), "Figure 1 grid not logged"
    # log_model=true offline: the checkpoint is recorded as a model artifact for `wandb sync`.
    record = next(run.glob("*.wandb")).read_bytes()
    assert f"model-{run.name.rsplit('-', 1)[1]}".encode() in record
    # log_predictions=3: the first 3 test images in a table, scored as per_image.csv scores them;
    # the artifact test_predictions holds the table with its pictures (an offline run's logged
    # table keeps only their type) and per_image.csv.
    [predictions] = run.glob("files/media/table/test/predictions_*.table.json")
    columns = ["id", "image", "overlay", "sbd", "abs_dic", "count"]
    staged = Path(offline_env["WANDB_DATA_DIR"]) / "artifacts" / "staging"
    tables = [json.loads(p.read_text()) for p in staged.iterdir() if p.read_bytes()[:1] == b"{"]
    artifact = next(t for t in tables if t.get("columns") == columns)  # W&B stages copies
    assert json.loads(predictions.read_text())["columns"] == columns
    assert len(artifact["data"]) == 3
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "per_image.csv").open())}
    for image_id, image, shown, sbd, abs_dic, count in artifact["data"]:
        assert image["_type"] == shown["_type"] == "image-file"
        assert (image["width"], shown["width"]) == (32, 32)
        row = rows[image_id]
        assert sbd == pytest.approx(float(row["sbd"]))
        assert count == int(row["pred_count"])
        assert abs_dic == abs(int(row["pred_count"]) - int(row["gt_count"]))
    assert b"test_predictions" in record and b"per_image.csv" in record


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_run_folder_and_step(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    common = [
        "train.py",
        *(o for o in TINY if not o.startswith(("dataset.num_train=", "trainer.max_epochs="))),
        "dataset.num_train=64",
        "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "callbacks.bootstrap.stages.0.steps=2",
        "test=false",
        f"paths.log_dir={tmp_path}",
        # CSV only: after a SIGKILL, W&B (0.31, offline) may still count the run id as in use
        # for a while (docs/troubleshooting.md); the W&B id is continued on ordinary resumes.
        "logger=csv",
    ]
    killed = subprocess.Popen(
        [sys.executable, *common, "trainer.max_steps=100000"],
        cwd=ROOT,
        env={**os.environ, **offline_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # killed as a job is: with its children (W&B's service too)
    )
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")):
            assert killed.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
            time.sleep(0.05)
        time.sleep(0.5)  # into the steps after the checkpoint
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    (folder,) = tmp_path.glob("train/runs/*")
    saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    step = saved["global_step"]
    assert step >= 3 and step % 3 == 0  # checkpoints every 3 optimizer steps

    resumed = run_cli(
        [*common, "ckpt_path=last", f"trainer.max_steps={step + 3}"], ROOT, offline_env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(tmp_path.glob("train/runs/*")) == [folder], "the resumed run must reuse its folder"
    assert f"at global step {step} " in (folder / "train.log").read_text()
    final = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == step + 3
    # The stage schedule went on (box stage of 2 steps, then full) rather than restarting.
    assert {"index": 1, "start_step": 2, "stage": "full"} in final["callbacks"].values()
    # The resumed process logged exactly steps step .. step + 2.
    rows = list(csv.DictReader((folder / "csv" / "metrics.csv").open()))
    logged = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert logged[-3:] == [step, step + 1, step + 2]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_two_process_cpu_ddp_fit_and_test_never_abort(
    compose_train, tmp_path: Path, attempt: int
) -> None:
    # Repeated: gloo threads alive at exit aborted 30-50 % of such runs before the explicit
    # process-group teardown (recattend.callbacks.teardown).
    # The default loggers (W&B offline + CSV): the test stage's spawned processes append to the CSV
    # file that the fit's processes wrote.
    # Two steps per process: the box stage (segmentation network idle) then the full stage.
    cfg = compose_train(
        *(o for o in TINY if not o.startswith(("trainer.max_epochs=", "dataset.num_test="))),
        "dataset.num_test=5",
        "trainer=ddp_sim",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "callbacks.bootstrap.stages.0.steps=1",
    )
    train.run(cfg)
    two_processes = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert {"val/sbd", "test/sbd"} <= set(rows[0])
    stages = [(r["step"], r["train/stage"]) for r in rows if r["train/stage"]]
    assert stages == [("0", "0.0"), ("1", "1.0")]
    # 5 test images over 2 ranks: 3 + 2, none repeated, so the test metrics equal a
    # single-process evaluation of the same weights.
    cfg = compose_train(
        *(o for o in TINY if not o.startswith("dataset.num_test=")),
        "dataset.num_test=5",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        config_name="eval",
    )
    one_process = eval_task.run(cfg)
    for key in ("test/sbd", "test/abs_dic", "test/fg_dice", "test/mwcov"):
        assert two_processes[key] == pytest.approx(one_process[key], abs=1e-6), key


def _two_job_sweep(
    sweep: Path, env: dict[str, str], logger: str, *overrides: str
) -> subprocess.CompletedProcess[str]:
    """``train.py -m`` of two 2-step TINY jobs (seeds 1, 2) into ``sweep``."""
    return run_cli(
        [
            "train.py",
            "-m",
            "seed=1,2",
            *TINY,
            "trainer.max_steps=2",
            "callbacks.bootstrap.stages.0.steps=1",
            f"logger={logger}",
            *overrides,
            f"hydra.sweep.dir={sweep}",
        ],
        ROOT,
        env,
        timeout=400,
    )


@pytest.mark.slow
def test_submitit_multirun_runs_each_job_through_submitit(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    sweep = tmp_path / "sweep"
    result = _two_job_sweep(
        sweep,
        offline_env,
        "wandb",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((sweep / ".submitit").iterdir()), "the jobs did not go through submitit"
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert "test/sbd" in metrics
        (run,) = (sweep / job / "wandb").glob("offline-run-*")
        assert b"train-sweep" in next(run.glob("*.wandb")).read_bytes()


@pytest.mark.slow
def test_multirun_of_two_jobs_with_two_cpu_processes_each(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    # Hydra's basic launcher runs the jobs one after the other, each with 2 ddp_spawn processes.
    # (submitit_local runs jobs at once: two jobs could then pick the same free port for gloo.)
    sweep = tmp_path / "sweep"
    result = _two_job_sweep(sweep, offline_env, "csv", "trainer=ddp_sim")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert "test/sbd" in json.loads((sweep / job / "metrics.json").read_text())
    # Each job's fit and test ran on 2 processes.
    assert (result.stdout + result.stderr).count("Starting with 2 processes") >= 4


@pytest.mark.slow
def test_compile_keeps_the_eager_results_and_checkpoint_names(tmp_path: Path) -> None:
    from recattend import ops
    from recattend.lit import PreprocessorModule
    from tests.helpers import tiny_batch

    ops.configure(compile_steps=2)  # as the entry points do: Dynamo's limit for T = 2 steps
    torch.manual_seed(0)
    eager = tiny_segmenter(max_instances=1)
    compiled = tiny_segmenter(max_instances=1, compile=True)
    compiled.load_state_dict(eager.state_dict())  # same parameter names
    batch = tiny_batch(2)
    # Training steps recomputing the box CNN's full-resolution layers (the default: they run
    # eagerly inside the compiled step) and whole steps (the recomputation must run the compiled
    # graph of the first pass), giving the eager loss, gradients and BatchNorm statistics.
    for recompute in ("full_resolution", True):
        for module in (eager, compiled):
            module.hparams.recompute = recompute
            module.log = module.log_dict = lambda *a, **k: None
            module.zero_grad()
            module.train().training_step(batch, 0).backward()
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            if a.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
        for (name, a), b in zip(eager.named_buffers(), compiled.buffers(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    image = batch["image"]
    expected, got = eager.eval()(image), compiled.eval()(image)
    torch.testing.assert_close(got["masks"], expected["masks"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=1e-4)

    net = {"encoder_channels": [4, 4], "encoder_pools": [2, 2], "decoder_channels": [4]}
    net |= {"decoder_unpools": [2, 2], "decoder_skips": [False, True]}
    fcn = PreprocessorModule(image_size=[32, 32], net=net).eval()
    fcn_compiled = PreprocessorModule(image_size=[32, 32], net=net, compile=True).eval()
    fcn_compiled.load_state_dict(fcn.state_dict())
    for key, value in fcn(image).items():
        torch.testing.assert_close(fcn_compiled(image)[key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_cpu_devices_from_the_command_line(tmp_path: Path, offline_env: dict[str, str]) -> None:
    # strategy=auto with 2 devices is Lightning's ddp: rank 1 re-executes the command line and
    # must land in the same run folder (one folder, one metrics.json, both ranks' steps).
    result = run_cli(
        [
            "train.py",
            *TINY,
            "trainer.devices=2",
            "trainer.max_steps=2",
            "callbacks.bootstrap.stages.0.steps=1",
            f"paths.log_dir={tmp_path}",
        ],
        ROOT,
        offline_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = tmp_path.glob("train/runs/*")
    assert "test/sbd" in json.loads((folder / "metrics.json").read_text())
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in (
        result.stderr + result.stdout
    )
