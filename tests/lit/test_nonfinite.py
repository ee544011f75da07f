"""The non-finite guard (recattend/lit/nonfinite.py): a NaN or inf in a batch, a rollout, a loss
or the gradients stops the run on every process together, with a checkpoint of the last finite
state that resumes and initialises."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from recattend.callbacks import ProcessGroupTeardown
from recattend.lit import SegmenterModule
from recattend.lit.nonfinite import NonFiniteGuard, nonfinite_flags
from recattend.utils.checkpoint import load_weights
from tests.helpers import ROOT, quiet_trainer, run_cli, tiny_batch, tiny_data, tiny_segmenter

NAN = float("nan")


class Poison(L.Callback):
    """Writes ``value`` into one pixel of the batch's image at the given steps (on one rank)."""

    def __init__(self, steps: set[int], rank: int | None = None, value: float = NAN) -> None:
        self.steps, self.rank, self.value = steps, rank, value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            batch["image"][0, 0, 3, 3] = self.value


class PoisonGradient(L.Callback):
    """Makes one gradient element NaN after the backward pass at ``step`` (the loss is finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad[(0,) * 4] = NAN


class Record(L.Callback):
    """Copies of the module's state_dict and the optimiser's state at the start of each batch,
    by global step (the last copy of a step wins)."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, Any]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = {
            "state_dict": copy.deepcopy(pl_module.state_dict()),
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
        }


def _trainer(folder: Path, max_steps: int, *callbacks: L.Callback) -> L.Trainer:
    return quiet_trainer(folder, max_steps, callbacks)


def _tensors(value: Any):
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _assert_finite(ckpt: dict[str, Any]) -> None:
    """No NaN or inf in a checkpoint (weights, BatchNorm statistics, optimiser and scheduler
    state, loops) but ModelCheckpoint's ``kth_value``, Lightning's inf for "no k-th best yet"."""
    rest = {k: v for k, v in ckpt.items() if k != "callbacks"}
    for tensor in _tensors(rest):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all()
    for state in ckpt.get("callbacks", {}).values():
        for key, value in state.items():
            if key != "kth_value":
                assert all(torch.isfinite(t).all() for t in _tensors(value)), key


def _assert_equal(actual: Any, expected: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are equal (tensors exactly, NaN never)."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_equal(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_equal(a, e, f"{where}/{i}")
    else:
        assert actual == expected, where


def _assert_last_finite_state(path: Path, before: dict[str, Any], step: int) -> dict[str, Any]:
    """The checkpoint at ``path`` holds no NaN or inf anywhere, and exactly the state (weights,
    BatchNorm statistics, optimiser state) recorded before ``step``, at that global step."""
    assert path.is_file()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    _assert_finite(ckpt)
    assert ckpt["global_step"] == step
    assert any("running_mean" in k for k in ckpt["state_dict"])
    _assert_equal(ckpt["state_dict"], before["state_dict"], "state_dict")
    _assert_equal(ckpt["optimizer_states"][0], before["optimizer"], "optimizer")
    return ckpt


def _trains_on(module: SegmenterModule, folder: Path, steps: int, ckpt_path: Path | None) -> None:
    """``steps`` more optimiser steps, all finite, from ``ckpt_path`` (resume) or as it is."""
    trainer = _trainer(folder, steps)
    trainer.fit(module, datamodule=tiny_data(), ckpt_path=ckpt_path)
    assert trainer.global_step == steps
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_pixel_stops_with_the_state_before_the_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    record = Record()
    trainer = _trainer(tmp_path / "run", 4, Poison({1}), record)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    path = tmp_path / "run" / "checkpoints" / "nonfinite-step1.ckpt"
    message = str(error.value)
    assert message.startswith("non-finite input pixels (the batch's image); also predicted masks")
    assert "at training step 1. " in message
    assert "bad input data" in message and f"resume with ckpt_path={path}" in message
    _assert_last_finite_state(path, record.before[1], 1)
    # The guard ran before the matching, so SciPy never saw the NaN; the in-memory module holds
    # the same state as the checkpoint (BatchNorm statistics restored).
    _assert_equal(trainer.lightning_module.state_dict(), record.before[1]["state_dict"])
    # It resumes (weights, optimiser, step) and trains on; load_from_checkpoint reads it.
    _trains_on(SegmenterModule.load_from_checkpoint(path), tmp_path / "resumed", 2, path)


def test_huge_learning_rate_stops_at_the_first_nonfinite_rollout(tmp_path: Path) -> None:
    # lr 1e6: step 0 moves every weight by ~1e6 (finite), step 1's soft boxes overflow. Before
    # this guard, SciPy's matching raised "matrix contains invalid numeric entries" instead.
    torch.manual_seed(0)
    record = Record()
    trainer = _trainer(tmp_path / "run", 4, record)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit(tiny_segmenter(lr=1e6), datamodule=tiny_data())
    path = tmp_path / "run" / "checkpoints" / "nonfinite-step1.ckpt"
    message = str(error.value)
    assert message.startswith("non-finite predicted ") and "at training step 1. " in message
    assert "learning rate too high (now 1e+06" in message and f"init_from={path}" in message
    _assert_last_finite_state(path, record.before[1], 1)
    # Those weights are finite but already diverged (step 0 moved them by ~1e6): as the message
    # says, a lower rate from them fails at step 0, so an earlier checkpoint is the way on.
    assert "If the weights have diverged already (the same error at step 0)" in message
    restarts = "at step 0 (bootstrap stages, scheduled sampling and the rate decay start again"
    assert restarts in message
    module = SegmenterModule.load_from_checkpoint(path, lr=1e-3)
    with pytest.raises(FloatingPointError, match=r"at training step 0\. .*now 0\.001"):
        _trainer(tmp_path / "again", 1).fit(module, datamodule=tiny_data())


class NaNScores(L.Callback):
    """Makes the score head's output NaN at ``step`` (weights untouched): a rollout that is not
    finite while the batch and the weights are."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        def hook(head, inputs, output):
            return output + NAN if trainer.global_step == self.step else output

        if not hasattr(self, "handle"):
            self.handle = pl_module.net.segmenter.score_head.register_forward_hook(hook)


def test_nonfinite_rollout_checkpoint_resumes_and_initialises(tmp_path: Path) -> None:
    torch.manual_seed(0)
    record = Record()
    trainer = _trainer(tmp_path / "run", 4, NaNScores(2), record)
    with pytest.raises(FloatingPointError) as error:
        trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    path = tmp_path / "run" / "checkpoints" / "nonfinite-step2.ckpt"
    message = str(error.value)
    assert message.startswith("non-finite predicted scores at training step 2. The batch is")
    assert "learning rate too high (now 0.001" in message and "module.lr" in message
    assert f"saved in {path}" in message
    _assert_last_finite_state(path, record.before[2], 2)
    _assert_equal(trainer.lightning_module.state_dict(), record.before[2]["state_dict"])
    # ckpt_path= resumes at step 2 (weights, optimiser, step) and trains on; so does init_from=.
    _trains_on(SegmenterModule.load_from_checkpoint(path), tmp_path / "resumed", 3, path)
    module = tiny_segmenter()
    load_weights(module, str(path))
    _trains_on(module, tmp_path / "init", 1, None)


def test_nonfinite_gradient_of_a_finite_loss_stops_before_the_optimiser_step(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    record = Record()
    trainer = _trainer(tmp_path, 4, PoisonGradient(2), record)
    with pytest.raises(FloatingPointError, match=r"^non-finite gradients at training step 2\. "):
        trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    # BatchNorm statistics of the (finite) forward pass are restored too.
    _assert_last_finite_state(
        tmp_path / "checkpoints" / "nonfinite-step2.ckpt", record.before[2], 2
    )


def test_guard_without_a_trainer() -> None:
    # Flags by kind; no trainer: raises, saves nothing, and the BatchNorm statistics of the
    # step are restored in place.
    flags = nonfinite_flags({"scores": torch.tensor([0.5, torch.inf]), "masks": None}, "cpu")
    assert flags.tolist() == [False, False, False, True, False, False, False]
    module = tiny_segmenter()
    norm = module.net.segmenter.box_net.cnn.norms[0][0]
    guard = NonFiniteGuard()
    guard.begin(module)
    expected = norm.running_mean.clone()
    norm.running_mean.fill_(NAN)
    norm.num_batches_tracked.add_(1)
    with pytest.raises(FloatingPointError, match=r"^non-finite predicted scores at training step"):
        guard.check(module, flags)
    assert torch.equal(norm.running_mean, expected) and norm.num_batches_tracked.item() == 0
    module.train()
    batch = tiny_batch()
    batch["masks"][0, 0, 0, 0] = torch.inf
    with pytest.raises(
        FloatingPointError, match=r"^non-finite input targets .* step 0\. .*No trainer"
    ):
        module.training_step(batch, 0)


def _fit_two_processes(folder: str) -> None:
    """A 2-process CPU DDP fit (ddp_spawn, gloo) where only rank 1's batch at step 1 has a NaN;
    run in a subprocess by the test below."""
    torch.manual_seed(0)
    callbacks = [Poison({1}, rank=1), ProcessGroupTeardown()]
    trainer = quiet_trainer(Path(folder), 3, callbacks, devices=2, strategy="ddp_spawn")
    trainer.fit(tiny_segmenter(), datamodule=tiny_data(16))


def test_nan_on_one_ddp_rank_stops_every_rank_together(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    code = (
        "from tests.lit.test_nonfinite import _fit_two_processes; "
        f"_fit_two_processes({str(tmp_path)!r})"
    )
    # A regression (one rank in the gradient all-reduce, one saving) hangs: the timeout fails it.
    result = run_cli(["-c", code], ROOT, {**offline_env, "OMP_NUM_THREADS": "1"}, timeout=150)
    output = result.stdout + result.stderr
    written = sorted(p.name for p in (tmp_path / "checkpoints").glob("nonfinite-*.ckpt"))
    assert result.returncode != 0
    assert "FloatingPointError: non-finite input pixels (the batch's image); also " in output
    assert "(on 1 of 2 processes) at training step 1. Likely cause: bad input data" in output
    assert written == ["nonfinite-step1.ckpt"]
    ckpt = torch.load(tmp_path / "checkpoints" / written[0], weights_only=True)
    assert ckpt["global_step"] == 1
    _assert_finite(ckpt)
    SegmenterModule.load_from_checkpoint(tmp_path / "checkpoints" / written[0])
