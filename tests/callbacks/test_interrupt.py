"""SaveOnInterrupt: a signal during training saves a resumable checkpoint and stops the run."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from recattend.callbacks import ProcessGroupTeardown
from recattend.callbacks.interrupt import SaveOnInterrupt
from recattend.data import SyntheticDataModule
from recattend.tasks import train
from tests.helpers import ROOT, TINY, quiet_trainer, run_cli, tiny_data, tiny_segmenter


class SignalAt(L.Callback):
    """Sends ``signum`` to its own process while step ``step`` (1-based) runs, on global rank
    ``rank`` only."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, rank: int = 0) -> None:
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1 and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)


class SignalInValidation(L.Callback):
    """Sends ``signum`` to its own process as the first batch of the validation after global
    step ``step`` begins (not the sanity check). Writes to ``folder`` how many batches that
    validation ran (``batches.txt``) and the weights trained by then (``live.pt``)."""

    def __init__(self, step: int, folder: str, signum: int = signal.SIGTERM) -> None:
        self.step, self.folder, self.signum = step, Path(folder), signum
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:  # before a weight average is swapped in
            torch.save(pl_module.state_dict(), self.folder / "live.pt")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        if trainer.sanity_checking or trainer.global_step != self.step:
            return
        self.batches += 1
        (self.folder / "batches.txt").write_text(str(self.batches))
        if batch_idx == 0:
            os.kill(os.getpid(), self.signum)


class MarkStarted(L.Callback):
    """Writes ``path`` once the first training step is done (a subprocess test waits for it)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.path.exists():
            self.path.write_text(str(trainer.global_step))


class StepOnEnd(L.Callback):
    """Each rank writes the global step it ended training at (``rank<r>.txt``)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(str(trainer.global_step))


# TINY with 3 epochs of 2 steps (8 images, batches of 4), every step logged to csv/metrics.csv.
THREE_EPOCHS = [
    *(o for o in TINY if not o.startswith("trainer.max_epochs=")),
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "logger=csv",
]


def _logged_steps(run: Path) -> list[int]:
    rows = csv.DictReader((run / "csv" / "metrics.csv").open())
    return [int(row["step"]) for row in rows if row.get("train/loss")]


def test_sigterm_saves_the_step_and_resuming_finishes_the_same_steps(
    compose_train, tmp_path: Path, caplog
) -> None:
    # Step 3 is the first of epoch 1: stopping cuts the epoch short, and last.ckpt must be the
    # state after step 3 (the checkpoint callbacks' saves at the end of training would say that
    # epoch 1 was complete, and a resume would skip its second step).
    handler = signal.getsignal(signal.SIGTERM)
    cfg = compose_train(
        *THREE_EPOCHS,
        "+callbacks.signal._target_=tests.callbacks.test_interrupt.SignalAt",
        "+callbacks.signal.step=3",
    )
    with pytest.raises(SystemExit) as stopped:
        train.run(cfg)
    assert stopped.value.code == 128 + signal.SIGTERM == 143
    assert signal.getsignal(signal.SIGTERM) == handler  # restored after fit
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["global_step"], state["epoch"]) == (3, 1)
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("interrupted", "signal", "step", "checkpoint")} == {
        "interrupted": True,
        "signal": "SIGTERM",
        "step": 3,
        "checkpoint": str(last),
    }
    assert "train/loss" in metrics and not any(k.startswith("test/") for k in metrics)
    assert "Resume with:" in caplog.text and f"ckpt_path={last}" in caplog.text
    assert "The exit status, 143, means stopped on request with the checkpoint saved" in (
        caplog.text
    )
    assert _logged_steps(tmp_path) == [0, 1, 2]

    # Resuming runs the remaining 3 steps (epoch 1's second, epoch 2's two): 6 in all, each once.
    train.run(compose_train(*THREE_EPOCHS, f"ckpt_path={last}", "test=false"))
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert _logged_steps(tmp_path) == [0, 1, 2, 3, 4, 5]


# THREE_EPOCHS with 4 validation batches after every epoch and the weight average from step 0.
VALIDATING = [
    *(o for o in THREE_EPOCHS if not o.startswith("dataset.num_val=")),
    "dataset.num_val=16",
    "callbacks=[default,ema]",
    "callbacks.ema.start_step=0",
]


def _validated_steps(run: Path) -> list[int]:
    rows = csv.DictReader((run / "csv" / "metrics.csv").open())
    return [int(row["step"]) for row in rows if row.get("val/sbd")]


def test_sigterm_during_a_validation_saves_the_step_within_a_batch(
    compose_train, tmp_path: Path
) -> None:
    # SIGTERM in the first of the 4 batches of the validation after step 4 (the end of epoch 1):
    # it stops after that batch, and last.ckpt holds the state after step 4 with the weights to
    # continue from, although the module holds the weight average while it validates.
    cfg = compose_train(
        *VALIDATING,
        "+callbacks.signal._target_=tests.callbacks.test_interrupt.SignalInValidation",
        "+callbacks.signal.step=4",
        f"+callbacks.signal.folder={tmp_path}",
    )
    with pytest.raises(SystemExit) as stopped:
        train.run(cfg)
    assert stopped.value.code == 143
    assert (tmp_path / "batches.txt").read_text() == "1"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    live = torch.load(tmp_path / "live.pt", weights_only=True)
    assert state["current_model_state"].keys() == live.keys()
    for name, value in live.items():
        assert torch.equal(state["current_model_state"][name], value), name
    averaged = [k for k, v in live.items() if v.is_floating_point()]
    assert any(not torch.equal(state["state_dict"][k], live[k]) for k in averaged)
    # The cut validation counts as nothing: no metric row, no checkpoint chosen on it.
    assert _validated_steps(tmp_path) == [1]  # Lightning logs a validation at its step - 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-step_000002-0.0000.ckpt",
        "last.ckpt",
    ]

    # Resuming trains steps 5 and 6 from the live weights and validates after step 6.
    train.run(compose_train(*VALIDATING, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"))
    assert _logged_steps(tmp_path) == [0, 1, 2, 3, 4, 5]
    assert _validated_steps(tmp_path) == [1, 5]


def test_a_second_ctrl_c_aborts_and_handlers_are_restored(tmp_path: Path) -> None:
    interrupt = SaveOnInterrupt(tmp_path)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupt.listening(quiet_trainer(tmp_path, 1)):
        assert signal.getsignal(signal.SIGINT) == interrupt._handle
        interrupt._handle(signal.SIGINT, None)  # first Ctrl-C: a stop request
        interrupt._handle(signal.SIGTERM, None)  # then SIGTERM (a scheduler): nothing more
        assert interrupt.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            interrupt._handle(signal.SIGINT, None)
    assert {s: signal.getsignal(s) for s in before} == before


def test_without_a_signal_nothing_is_saved(tmp_path: Path) -> None:
    interrupt = SaveOnInterrupt(tmp_path / "checkpoints")
    trainer = quiet_trainer(tmp_path, 2, [interrupt], enable_checkpointing=False)
    with interrupt.listening(trainer):
        trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    assert not interrupt.interrupted and trainer.global_step == 2
    assert not (tmp_path / "checkpoints").exists()


def _fit_two_processes(folder: str) -> None:
    """A 2-process CPU DDP fit (ddp_spawn, gloo) of 6 steps where only rank 1 gets SIGTERM,
    during step 2; run in a subprocess by the test below."""
    torch.manual_seed(0)
    callbacks = [
        SignalAt(2, rank=1),
        StepOnEnd(folder),
        SaveOnInterrupt(Path(folder) / "checkpoints"),
        ProcessGroupTeardown(),
    ]
    trainer = quiet_trainer(
        Path(folder), 6, callbacks, devices=2, strategy="ddp_spawn", enable_checkpointing=False
    )
    trainer.fit(tiny_segmenter(), datamodule=tiny_data(16))


class SignalInLastBatch(L.Callback):
    """Sends SIGTERM to rank 0 during its last batch of the validation after step 2."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        last = batch_idx == trainer.num_val_batches[0] - 1
        if trainer.global_step == 2 and trainer.global_rank == 0 and last:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit_uneven_validation(folder: str) -> None:
    """A 2-process ddp_spawn fit of 6 steps validating every 2 steps on 3 images in batches of
    1: rank 0 validates images 0 and 2, rank 1 image 1, so rank 0 runs a second batch that rank 1
    does not. Rank 0 gets SIGTERM in that batch."""
    torch.manual_seed(0)
    callbacks = [
        SignalInLastBatch(),
        StepOnEnd(folder),
        SaveOnInterrupt(Path(folder) / "checkpoints"),
        ProcessGroupTeardown(),
    ]
    trainer = quiet_trainer(
        Path(folder), 6, callbacks, devices=2, strategy="ddp_spawn", enable_checkpointing=False,
        limit_val_batches=1.0, val_check_interval=2, num_sanity_val_steps=0,
    )  # fmt: skip
    data = SyntheticDataModule(
        resolution=[32, 32], max_instances=3, batch_size=1, num_train=16, num_val=3,
        min_objects=1, max_objects=3, num_workers=0, augment=None,
    )  # fmt: skip
    trainer.fit(tiny_segmenter(), datamodule=data)


@pytest.mark.slow
def test_a_signal_in_a_validation_batch_one_rank_lacks_waits_for_the_next_step(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    # The ranks agree on a stop only in validation batches that both run: a collective in
    # rank 0's extra batch would wait for a rank that has left the validation loop (a hang,
    # which the timeout fails). The request is taken at the end of the next training step.
    code = (
        "from tests.callbacks.test_interrupt import _fit_uneven_validation; "
        f"_fit_uneven_validation({str(tmp_path)!r})"
    )
    result = run_cli(["-c", code], ROOT, {**offline_env, "OMP_NUM_THREADS": "1"}, timeout=150)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["3", "3"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3


@pytest.mark.slow
def test_a_signal_on_one_ddp_rank_stops_every_rank_after_the_same_step(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    code = (
        "from tests.callbacks.test_interrupt import _fit_two_processes; "
        f"_fit_two_processes({str(tmp_path)!r})"
    )
    # A regression (rank 0 training on into a collective that rank 1 left) hangs: the timeout
    # fails it.
    result = run_cli(["-c", code], ROOT, {**offline_env, "OMP_NUM_THREADS": "1"}, timeout=150)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
