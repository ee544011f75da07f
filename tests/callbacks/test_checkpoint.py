"""The best and the last checkpoint of conf/callbacks, in real short runs of a scripted module.

Validation every 4 steps logs val/sbd 0.5, 0.9, 0.7 (steps 4, 8, 12); last.ckpt is due every 3
steps, out of step with validation, so a checkpoint saved between validations would show. The
module's weight equals its global step (tests/callbacks/scripted.py), so a file's weights tell
which step they are from.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recattend.callbacks import LastCheckpoint
from recattend.callbacks import checkpoint as checkpoint_module
from recattend.callbacks.checkpoint import AtomicCheckpointIO
from recattend.utils.atomic import NoSpaceError
from recattend.utils.summary import checkpoint_summary
from tests.callbacks.scripted import Scripted
from tests.helpers import quiet_trainer

VALIDATION = dict(limit_val_batches=1, val_check_interval=4, check_val_every_n_epoch=None)


def checkpoints(compose_train):
    """The best and the last checkpoint callbacks as conf/callbacks builds them."""
    cfg = compose_train("callbacks.last_checkpoint.every_n_train_steps=3")
    return instantiate(cfg.callbacks.model_checkpoint), instantiate(cfg.callbacks.last_checkpoint)


def saved(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_the_best_checkpoint_holds_its_own_validation(compose_train, tmp_path: Path) -> None:
    best, last = checkpoints(compose_train)
    trainer = quiet_trainer(tmp_path, 13, [best, last], num_sanity_val_steps=0, **VALIDATION)
    trainer.fit(Scripted(sbd=[0.5, 0.9, 0.7]))
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-step_000008-0.9000.ckpt", "last.ckpt"]
    assert trainer.checkpoint_callback is best
    state = saved(best.best_model_path)
    # Saved right after step 8's validation: step 8's weights, credited with step 8's value.
    assert state["global_step"] == 8 and state["state_dict"]["weight"].item() == 8.0
    assert best.best_model_score.item() == pytest.approx(0.9)
    # last.ckpt: every 3 steps (12), then at the end of training (13, not a multiple of 3).
    assert saved(folder / "last.ckpt")["global_step"] == 13
    assert checkpoint_summary(trainer) == [
        f"best checkpoint (val/sbd 0.9000 at step 8): {folder / 'best-step_000008-0.9000.ckpt'}",
        f"last checkpoint (step 13, resume with ckpt_path=last): {folder / 'last.ckpt'}",
    ]


def test_last_checkpoint_resumes_and_the_best_survives(compose_train, tmp_path: Path) -> None:
    best, last = checkpoints(compose_train)
    trainer = quiet_trainer(tmp_path, 13, [best, last], num_sanity_val_steps=0, **VALIDATION)
    trainer.fit(Scripted(sbd=[0.5, 0.9, 0.7]))
    # Resumed to step 16: its validation (0.8) is below the restored best (0.9 at step 8).
    best, last = checkpoints(compose_train)
    resumed = quiet_trainer(tmp_path, 16, [best, last], num_sanity_val_steps=0, **VALIDATION)
    module = Scripted(sbd=[0.8])
    resumed.fit(module, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert module.weight.item() == 16.0  # 13 restored steps and 3 more
    assert Path(best.best_model_path).name == "best-step_000008-0.9000.ckpt"
    state = saved(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 16 and state["state_dict"]["weight"].item() == 16.0


def test_the_last_checkpoint_needs_an_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"every_n_train_steps=None: give the optimizer steps"):
        LastCheckpoint(tmp_path, None)


# Written whole or not at all (AtomicCheckpointIO, utils.atomic).


def _disk_full_after(nbytes: int):
    """A torch.save that writes ``nbytes`` of the file, then fails as a full disk does."""

    def save(obj, target) -> None:
        with open(target, "wb") as f:
            f.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_leaves_no_partial_checkpoint(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ckpts" / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", _disk_full_after(100))
    with pytest.raises(NoSpaceError, match=r"no space left in .*ckpts while writing best\.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert target.read_bytes() == before, "the earlier checkpoint is untouched"
    assert [p.name for p in target.parent.iterdir()] == ["best.ckpt"], "no temporary file left"
    with pytest.raises(NoSpaceError, match=r"nothing of it was kept \(no earlier file\)"):
        io.save_checkpoint({}, tmp_path / "ckpts" / "other.ckpt")
    assert not (tmp_path / "ckpts" / "other.ckpt").exists()
    # Other errors pass through as they are, the temporary file removed all the same.
    monkeypatch.setattr(checkpoint_module.torch, "save", lambda obj, f: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        io.save_checkpoint({}, target)
    assert [p.name for p in target.parent.iterdir()] == ["best.ckpt"]


def test_training_writes_checkpoints_through_the_atomic_writer(
    compose_train, tmp_path: Path, monkeypatch
) -> None:
    from recattend.tasks import train
    from tests.helpers import TINY

    monkeypatch.setattr(checkpoint_module.torch, "save", _disk_full_after(1000))
    with pytest.raises(NoSpaceError, match="no space left in"):
        train.run(compose_train(*TINY, "logger=none", "test=false"))
    assert not list((tmp_path / "checkpoints").glob("*")), "no file, whole or partial"
