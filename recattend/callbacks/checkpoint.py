"""The resumable checkpoint: ``checkpoints/last.ckpt``, every N optimizer steps and at the end.

A run keeps two checkpoints (``conf/callbacks``): the best one (Lightning's ``ModelCheckpoint``
monitoring the validation metric of ``conf/monitor``, saved after each validation, so its value is
that validation's) and this one, the state to resume from (``ckpt_path=last``). They are separate
because one ``ModelCheckpoint`` with both a monitor and a step interval saves between validations
and credits the file with the previous validation's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from recattend.utils.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing every local checkpoint whole or not at all
    (:func:`recattend.utils.atomic.write_atomically`): the temporary file lies beside its target,
    so a run folder on another filesystem than the system's temporary folder (cluster scratch,
    NFS, tmpfs) never gets a truncated checkpoint under a valid name, and a full disk raises a
    :class:`~recattend.utils.atomic.NoSpaceError` that names the folder. Remote paths (``s3://``
    and the like) keep Lightning's own writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(ModelCheckpoint):
    """Overwrites ``dirpath / "last.ckpt"`` every ``every_n_train_steps`` optimizer steps and when
    training ends (step or time limit reached, or the last epoch done), monitoring nothing.

    Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` at each
    step interval but, at the end of training, only if it never wrote one, so a run stopped by
    ``max_time`` between two intervals would resume from the older state; :meth:`on_train_end`
    saves the final step too. ``last.ckpt`` is always overwritten in place (no ``last-v1.ckpt``
    when a resumed run's callback has no record of the file).

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: optimizer steps between saves (>= 1).

    Raises:
        ValueError: ``every_n_train_steps`` < 1 (Lightning's top-k-free checkpoint would then
            write ``last.ckpt`` only at the very end).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        if not isinstance(every_n_train_steps, int) or every_n_train_steps < 1:
            raise ValueError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps!r}: give the "
                "optimizer steps between two saves of last.ckpt, an integer >= 1"
            )
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # a new step, not fast_dev_run
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
