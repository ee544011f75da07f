"""Stopping a training run on a signal without losing it: Ctrl-C (SIGINT), ``kill`` or a
scheduler's pre-emption (SIGTERM), SLURM's warning signal (SIGUSR1).

The signal handler only records the request. The checkpoint is written at the next safe point:
the end of a training step (``on_train_batch_end``: the optimiser has stepped, nothing is half
done), or, when the request comes while a validation runs inside ``fit``, the end of the current
validation batch (the weights are still those of the last training step; a long validation would
otherwise outlast a scheduler's grace period). That validation is then cut short and counts as
nothing, like a sanity check: no metric logged, no checkpoint chosen on it, no point on the curve.
A resumed run goes on training after that step, without validating it again.

It is an ordinary Lightning checkpoint (``trainer.save_checkpoint``): weights, optimiser, step,
and every callback's and the module's saved state (bootstrap stage, scheduled sampling, the
non-finite guard's counts). Then the trainer stops without validating. Stopping ends the epoch,
and the checkpoint callbacks may save once more, at the epoch's or the training's end, as if the
epoch were complete (resuming such a file would skip the epoch's remaining batches). So the step's
checkpoint is written as ``interrupted.ckpt`` and renamed to ``last.ckpt`` in the run's
``checkpoints/`` folder, the file that ``ckpt_path=last`` resumes, once ``fit`` is over
(``on_fit_end``, after every callback's ``on_train_end``). The training task then skips the test
split, writes ``metrics.json`` marked as interrupted, says how to resume and exits with status
128 + the signal number (:class:`Interrupted`: 130 for Ctrl-C, 143 for SIGTERM).

A second Ctrl-C aborts at once (``KeyboardInterrupt``), without the checkpoint.

Under DDP every process checks the request at the end of every step with one all-reduce (the
largest signal number wins), so all of them save (a collective call: global rank 0 writes) and
stop after the same step, even when only one of them received the signal; none is left waiting in
a collective. With ``ddp_spawn`` the launching process, which runs no training hook, forwards the
request to its workers as SIGTERM (:meth:`SaveOnInterrupt.listening`).

Lightning's own SIGTERM handler is replaced while training runs: it broadcasts inside the signal
handler and leaves ``fit`` through an exception at the next step, without a checkpoint. SIGUSR1 is
taken only when no one else handles it: with Lightning's SLURM auto-requeue
(``SLURMEnvironment(auto_requeue=True)``) Lightning saves its HPC checkpoint and requeues the job.
Signals that arrive outside ``trainer.fit`` (during the test split, say) keep their usual effect.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

# Signals that request a stop; SIGUSR1 only where nothing else handles it (module docstring).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SystemExit):
    """Ends a training run that stopped on ``signum`` after saving: exit status 128 + ``signum``,
    the shell's convention for a process ended by that signal (130 for SIGINT, 143 for SIGTERM),
    so that scripts and schedulers see that the run did not finish."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class SaveOnInterrupt(L.Callback):
    """Saves a resumable checkpoint and stops training on SIGINT, SIGTERM or SIGUSR1 (module
    docstring).

    Args:
        dirpath: the run's checkpoint folder; the checkpoint ends as ``<dirpath>/<filename>``.
        filename: ``last.ckpt`` replaces the last checkpoint, so ``ckpt_path=last`` resumes it.

    Attributes:
        signum: the stop request received (or agreed on by the processes), else None.
        step: the global step of the checkpoint written on the request, else None.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self._pending = self.path.with_name("interrupted.ckpt")  # until training ends
        self.signum: int | None = None
        self.step: int | None = None
        self._previous: dict[int, Any] = {}  # handlers to restore, by signal
        self._listening = False  # inside listening(), which restores them
        self._launcher: Any = None  # Lightning's launcher, whose ddp_spawn workers get a request
        self._common_batches = 0  # the validation batches that every process runs

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into its workers: the handlers are this process's.
        return {**self.__dict__, "_previous": {}, "_listening": False, "_launcher": None}

    @property
    def interrupted(self) -> bool:
        """Whether a stop was requested during ``fit``."""
        return self.signum is not None

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the interruption."""
        step = self.step
        if step is None and self.path.is_file():  # ddp_spawn's launcher: its workers saved
            step = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            step = step["global_step"]
        return {
            "interrupted": True,
            "signal": signal.Signals(self.signum).name,
            "step": step,
            "checkpoint": str(self.path),
        }

    # Signal handling ------------------------------------------------------------------------

    @contextmanager
    def listening(self, trainer: L.Trainer) -> Iterator[None]:
        """Handle stop requests while the block (``trainer.fit``) runs in this process.

        The training hooks take the signals over in the processes that train; this covers the
        launching process of ``ddp_spawn``, which forwards a request to its workers, and the time
        before the first hook.
        """
        self._launcher, self._listening = trainer.strategy.launcher, True
        self._take_over(STOP_SIGNALS)
        try:
            yield
        finally:
            self._release()
            self._launcher, self._listening = None, False

    def _take_over(self, signums: tuple[int, ...]) -> None:
        """Install :meth:`_handle` for ``signums``, keeping the first handlers found to restore.

        Called again after Lightning has installed its own (``on_sanity_check_start``,
        ``on_train_start``). Only the main thread may set handlers.
        """
        if not _main_thread():
            return
        for signum in signums:
            current = signal.getsignal(signum)
            if current == self._handle:
                continue
            self._previous.setdefault(signum, current)
            signal.signal(signum, self._handle)

    def _release(self) -> None:
        """Restore the handlers found before :meth:`_take_over`."""
        if _main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Record a stop request; a Ctrl-C after one aborts at once."""
        name = signal.Signals(signum).name
        if self.signum is not None:
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt(f"second {name}: aborting without a checkpoint")
            return  # e.g. SIGTERM after SIGINT, or a forwarded copy: already stopping
        self.signum = signum
        log.warning(
            "%s received: saving a checkpoint at the end of this training step (or validation "
            "batch), then stopping (Ctrl-C again to abort at once, without it)",
            name,
        )
        if self._launcher is not None and getattr(self._launcher, "procs", None):
            # The launching process of ddp_spawn: its workers train. SIGTERM rather than the
            # signal itself, since a forwarded SIGINT would count as a second Ctrl-C in a worker
            # that the terminal already sent one.
            self._launcher.kill(signal.SIGTERM)

    # Training hooks ----------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # before Lightning installs its handlers, which chain the ones found
            self._take_over(STOP_SIGNALS)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over(STOP_SIGNALS)  # over Lightning's SIGTERM handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sigusr1 = (signal.SIGUSR1,) if signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL else ()
        self._take_over(STOP_SIGNALS + sigusr1)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.step is None and self._agreed(trainer):
            self._save_and_stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The evaluation splits are not padded under DDP: the processes may run different
        # numbers of batches. One all-reduce (every process validates) finds the common ones.
        batches = int(trainer.num_val_batches[0]) if trainer.num_val_batches else 0
        if trainer.world_size > 1:
            flag = torch.tensor([batches], device=trainer.strategy.root_device)
            batches = int(trainer.strategy.reduce(flag, reduce_op="min").item())
        self._common_batches = batches

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Only within the batches every process runs (see on_validation_start), so that all of
        # them call the agreement's collective at the same batches. The sanity check (two
        # batches before the first step) is left to end: the first step saves.
        validating = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        common = batch_idx < self._common_batches and dataloader_idx == 0
        if validating and common and self.step is None and self._agreed(trainer):
            self._save_and_stop(trainer)
            _cut_validation(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A request during the last validation, after the last step: save all the same.
        if self.step is None and self._agreed(trainer):
            self._save_and_stop(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.step is not None and trainer.is_global_zero:
            os.replace(self._pending, self.path)  # over the checkpoint callbacks' last.ckpt

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not self._listening:  # else listening() restores them
            self._release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not self._listening:
            self._release()

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any process has a stop request; every process calls it at the same point
        (one all-reduce of one integer under DDP), and takes the request as its own."""
        requested = self.signum or 0
        if trainer.world_size > 1:
            flag = torch.tensor([requested], device=trainer.strategy.root_device)
            requested = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if requested and self.signum is None:
            self.signum = requested
        return bool(requested)

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        """Save the checkpoint (every process calls it; global rank 0 writes), then stop the
        trainer after this step."""
        trainer.save_checkpoint(self._pending, weights_only=False)  # the whole state
        self.step = trainer.global_step
        if trainer.is_global_zero:
            log.warning(
                "%s: saved the state after step %d; stopping",
                signal.Signals(self.signum).name, self.step,
            )  # fmt: skip
        trainer.should_stop = True
        # Lightning validates before an early stop and refuses to stop before min_epochs or
        # min_steps: neither applies to a stop that was asked for.
        trainer.limit_val_batches = 0
        trainer.fit_loop.min_epochs = 0
        trainer.fit_loop.epoch_loop.min_steps = None


def _cut_validation(trainer: L.Trainer) -> None:
    """End the validation that runs inside ``fit`` after the current batch, and let nothing it
    measured count: Lightning and every callback here treat a sanity check's results so (no
    metric reaches the loggers or ``callback_metrics``, no checkpoint is chosen, no curve point,
    no output statistics). The training loop sets the stage back to training when the
    validation returns."""
    fetcher = trainer.fit_loop.epoch_loop.val_loop._data_fetcher
    fetcher.batches.clear()  # the prefetched batch, if any
    fetcher.done = True  # the next fetch ends the loop
    trainer.sanity_checking = True


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
