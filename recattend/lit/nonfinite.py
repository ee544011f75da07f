"""The guard against non-finite training steps: NaN or inf in a batch, a rollout, a loss or the
gradients stops the run (or skips the batch) on every process together, keeping the last finite
state.

What :class:`SegmenterModule.training_step <recattend.lit.SegmenterModule>` does with it:

1. :meth:`NonFiniteGuard.begin` copies the BatchNorm running statistics before the forward pass
   (a non-finite forward pass writes NaN into them).
2. :func:`nonfinite_flags` checks the batch and the stacked outputs of the T steps *before* the
   Hungarian matching (SciPy refuses non-finite costs), then the loss terms.
3. :meth:`NonFiniteGuard.handle` sums the flags over the processes (one all-reduce of a few
   integers), so that under DDP every process takes the same branch before any other collective:
   all of them stop, or all skip. On failure it restores the BatchNorm statistics; with the policy
   ``stop`` it saves the checkpoint (a collective call: every process calls it, global rank 0
   writes) and raises :class:`FloatingPointError`; with ``skip`` it counts the batch, and the step
   returns :meth:`NonFiniteGuard.no_update`.
4. :meth:`NonFiniteGuard.check_gradients` (from ``on_before_optimizer_step``) does the same for the
   gradients of a finite loss, before the optimiser step.

The checkpoint holds the state from before the failed step: the weights and the optimiser state
(the optimiser has not stepped), the restored BatchNorm statistics, the step counter and the
callbacks' state, so it resumes (``ckpt_path=``) and initialises (``init_from=``) like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")
KINDS = ("image", "targets", "masks", "scores", "soft_boxes", "loss", "gradients")
"""What is checked, in the order of the flags that the processes sum."""
_WHAT = {
    "image": "input pixels (the batch's image)",
    "targets": "input targets (the batch's masks, boxes or foreground)",
    "masks": "predicted masks",
    "scores": "predicted scores",
    "soft_boxes": "predicted soft boxes",
    "loss": "loss",
    "gradients": "gradients",
}
_SMALL_NUMEL = 1 << 16  # tensors of fewer elements are checked together (_finite)
_INPUTS = {"image": ("image",), "targets": ("masks", "boxes", "foreground")}


def nonfinite_flags(
    groups: Mapping[str, Tensor | Iterable[Tensor | None] | None], device: torch.device
) -> Tensor:
    """Which kinds hold a NaN or an infinity, without a host synchronisation.

    Args:
        groups: kind (one of :data:`KINDS`) -> its tensor or tensors (floating point; None and
            empty ones are ignored); kinds left out count as finite.
        device: where the flags are (the module's device, where the tensors are).

    Returns:
        (len(KINDS),) bool on ``device``: True where a tensor of that kind has a non-finite element.
    """
    unknown = set(groups) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}: use {KINDS}")
    groups = {k: [v] if v is None or isinstance(v, Tensor) else v for k, v in groups.items()}
    return torch.stack([~_finite(groups.get(kind, ()), device) for kind in KINDS])


def _finite(tensors: Iterable[Tensor | None], device: torch.device) -> Tensor:
    """() bool on ``device``: whether every element of ``tensors`` is finite (True for none).

    From the smallest and largest elements (NaN if any element is NaN, -inf or inf if any is
    infinite): one pass over each large tensor, and one over the small ones concatenated (the
    gradients of hundreds of parameter tensors), with type promotion.
    """
    flat = [t.detach().reshape(-1) for t in tensors if t is not None and t.numel()]
    if not flat:
        return torch.ones((), dtype=torch.bool, device=device)
    small = [t for t in flat if t.numel() < _SMALL_NUMEL]
    parts = [t for t in flat if t.numel() >= _SMALL_NUMEL] + ([torch.cat(small)] if small else [])
    extremes = torch.stack([torch.stack(torch.aminmax(part)) for part in parts])
    return extremes.isfinite().all().to(device)


def batch_flags(batch: Mapping[str, Any], device: torch.device) -> Tensor:
    """:func:`nonfinite_flags` of a batch's image and float targets (the batch contract)."""
    return nonfinite_flags(
        {kind: [batch.get(key) for key in keys] for kind, keys in _INPUTS.items()}, device
    )


def batchnorm_buffers(module: nn.Module) -> list[Tensor]:
    """``running_mean``, ``running_var`` and ``num_batches_tracked`` of every norm layer of
    ``module`` that tracks running statistics (BatchNorm, SyncBatchNorm)."""
    return [
        buffer
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]


class BatchNormSnapshot:
    """A copy of a module's BatchNorm running statistics, taken and restored in place.

    The copies are allocated once (``empty_like`` of each buffer: same device and dtype) and
    refilled by one fused copy per :meth:`take`; they are allocated again only when the buffers
    change (the module moved to another device, layers replaced).
    """

    def __init__(self) -> None:
        self._buffers: list[Tensor] = []
        self._copies: list[Tensor] = []

    def take(self, module: nn.Module) -> None:
        """Copy the running statistics of ``module``'s norm layers (:func:`batchnorm_buffers`)."""
        buffers = batchnorm_buffers(module)
        if len(buffers) != len(self._buffers) or any(
            a is not b for a, b in zip(buffers, self._buffers, strict=True)
        ):
            self._buffers, self._copies = buffers, [torch.empty_like(b) for b in buffers]
        if buffers:
            torch._foreach_copy_(self._copies, buffers)

    def restore(self) -> None:
        """Write the copies of the last :meth:`take` back into the module's buffers."""
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._copies)


def sum_over_processes(tensor: Tensor) -> Tensor:
    """``tensor`` summed in place over the processes of the default process group (one
    all-reduce); unchanged when there is no such group of several processes."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class NonFiniteGuard:
    """Stops, or skips, a training step with a non-finite batch, rollout, loss or gradient, on
    every process together, with a checkpoint of the last finite state (module docstring).

    Args:
        policy: ``"stop"``: save the checkpoint and raise :class:`FloatingPointError`;
            ``"skip"``: leave weights, optimiser state and BatchNorm statistics as they were
            before the batch, count it and go on (the step counter and the learning-rate schedule
            still advance).
        max_skipped: with ``"skip"``, the most batches skipped in a row; the next non-finite one
            stops as ``"stop"`` does.

    Attributes:
        skipped: batches skipped in this run (this process's count, the same on every process).
        in_a_row: batches skipped since the last finite step (reset by :meth:`check_gradients`).
    """

    def __init__(self, policy: str = "stop", max_skipped: int = 10) -> None:
        if policy not in POLICIES:
            raise ValueError(f"module.on_nonfinite={policy!r}: use stop or skip")
        if max_skipped < 0:
            raise ValueError(f"module.max_skipped={max_skipped}: use 0 or more")
        self.policy, self.max_skipped = policy, max_skipped
        self.skipped = self.in_a_row = 0
        self._snapshot = BatchNormSnapshot()
        self._drop_gradients = False
        self._terms: list[str] = []  # the non-finite loss terms of this process's last step
        self._processes = 0  # the processes that found something non-finite in the last check

    def state_dict(self) -> dict[str, int]:
        """The skip counts, saved in checkpoints so a resumed run goes on counting."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])

    @property
    def skipping(self) -> bool:
        """Whether the current batch is skipped (from :meth:`handle` to the next :meth:`begin`)."""
        return self._drop_gradients

    def begin(self, module: nn.Module) -> None:
        """Start of a training step: copy ``module``'s BatchNorm statistics."""
        self._snapshot.take(module)
        self._drop_gradients = False

    def losses(
        self,
        module: L.LightningModule,
        batch: Mapping[str, Any],
        outputs: Mapping[str, Tensor | None],
        compute: Callable[[], dict[str, Tensor]],
    ) -> dict[str, Tensor] | None:
        """The loss terms ``compute()`` returns, checked with the batch and the outputs.

        ``compute`` runs only when this process's batch (:func:`batch_flags`) and ``outputs``
        (``masks``, ``scores``, ``soft_boxes``: the stacked rollout) are finite; then its terms
        (all but ``match``) are checked, and :meth:`handle` decides with every process.

        Returns:
            The terms, or None when the batch is skipped (on every process).

        Raises:
            FloatingPointError: as :meth:`handle`.
        """
        flags = batch_flags(batch, module.device) | nonfinite_flags(outputs, module.device)
        terms = None if flags.any() else compute()
        self._terms = []
        if terms is not None:
            checked = {name: value for name, value in terms.items() if name != "match"}
            flags = nonfinite_flags({"loss": checked.values()}, module.device)
            if flags.any():  # name the terms (a rare path: one synchronisation per term)
                self._terms = [k for k, v in checked.items() if not torch.isfinite(v).all()]
        return None if self.handle(module, flags) else terms

    def handle(self, module: L.LightningModule, flags: Tensor) -> bool:
        """Act on what the processes found non-finite (``flags``: :func:`nonfinite_flags`):
        nothing, skip the batch (returns True), or save the checkpoint and stop (raises).

        Every process must call it at the same point of the step: it sums the flags over the
        processes. On failure the BatchNorm statistics are restored; then ``stop`` (or one skip
        too many) saves the checkpoint and raises, and ``skip`` counts the batch, warns and
        returns True: the caller returns :meth:`no_update` instead of its loss.

        Raises:
            FloatingPointError: naming the step, what was non-finite, the likely causes and the
                checkpoint.
        """
        # Per kind, and last for anything, the number of processes that found it.
        counts = sum_over_processes(torch.cat([flags, flags.any()[None]]).to(torch.int32))
        *per_kind, self._processes = counts.tolist()
        found = {kind: n for kind, n in zip(KINDS, per_kind, strict=True) if n}
        if not found:
            return False
        self._snapshot.restore()
        if self.policy == "stop" or self.in_a_row >= self.max_skipped:
            self._stop(module, found)
        self.skipped += 1
        self.in_a_row += 1
        self._drop_gradients = True
        if module.global_rank == 0:
            log.warning(
                "step %d: non-finite %s; batch skipped (%d in a row, %d in all; "
                "module.on_nonfinite=skip stops after module.max_skipped=%d in a row)",
                module.global_step, self._describe(found), self.in_a_row,
                self.skipped, self.max_skipped,
            )  # fmt: skip
        return True

    def no_update(self, module: nn.Module) -> Tensor:
        """The loss of a skipped batch: ``sum(p * 0)`` over the trainable parameters, whose
        gradients are exact zeros (whatever the weights) that reach every parameter, so DDP's
        gradient all-reduce runs as usual on every process; :meth:`check_gradients` then drops
        them, so the optimiser changes nothing."""
        parameters = [p for p in module.parameters() if p.requires_grad]
        return torch.stack([(p * torch.zeros_like(p)).sum() for p in parameters]).sum()

    def check_gradients(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Before the optimiser step: drop the gradients of a skipped batch; else check them.

        Under a gradient scaler (``16-mixed``) non-finite gradients are the scaler's business (it
        skips that step and lowers its scale), so they are not checked.

        Raises:
            FloatingPointError: as :meth:`handle`.
        """
        if not self._drop_gradients and not _scaled(module):
            gradients = [p.grad for group in optimizer.param_groups for p in group["params"]]
            device = next((g.device for g in gradients if g is not None), module.device)
            self.handle(module, nonfinite_flags({"gradients": gradients}, device))
        if self._drop_gradients:  # the optimiser skips parameters without a gradient
            optimizer.zero_grad(set_to_none=True)
        else:
            self.in_a_row = 0  # a finite step

    def _describe(self, found: Mapping[str, int]) -> str:
        """What was non-finite, the batch first: e.g. ``input pixels (the batch's image); also
        predicted masks, predicted scores (on 1 of 2 processes)`` or ``loss (loss_box, loss)``
        (the terms that this process found)."""
        names = {**_WHAT}
        if self._terms:
            names["loss"] = f"loss ({', '.join(self._terms)})"
        parts = ([k for k in found if k in _INPUTS], [k for k in found if k not in _INPUTS])
        what = "; also ".join(", ".join(names[k] for k in part) for part in parts if part)
        world = _world_size()
        return what if world == 1 else f"{what} (on {self._processes} of {world} processes)"

    def _stop(self, module: L.LightningModule, found: Mapping[str, int]) -> None:
        """Save the checkpoint (every process calls it), then raise the error."""
        step, trainer = module.global_step, module._trainer
        bad_input = "image" in found or "targets" in found
        if bad_input:
            cause = (
                "Likely cause: bad input data, NaN/inf values in the batch itself (check the "
                "dataset's files, its loader and the augmentation), not the training"
            )
        else:
            lr = module.hparams.get("lr")
            if trainer is not None and trainer.optimizers:
                lr = trainer.optimizers[0].param_groups[0]["lr"]
            cause = (
                f"The batch is finite, so the likely cause is a learning rate too high (now "
                f"{lr:g}: module.lr, or the bootstrap stage's lr), or else a diverging training "
                "(module.grad_clip, trainer.precision)"
            )
        if trainer is None:
            saved = "No trainer is attached, so no checkpoint was saved"
        elif not bool(_finite(module.parameters(), module.device)):
            saved = (
                "The weights were already non-finite at the start of this step (loaded or set "
                "so: the guard never steps the optimiser with non-finite gradients), so no "
                "checkpoint was saved"
            )
        else:
            path = checkpoint_path(trainer, step)
            trainer.save_checkpoint(path)
            saved = (
                "The last finite state (weights, BatchNorm statistics and optimiser state from "
                f"before step {step}) is saved in {path}: "
                + (
                    f"once the data is fixed, resume with ckpt_path={path}"
                    if bad_input
                    else f"ckpt_path={path} continues the run exactly (same rate, stage and "
                    f"schedule), which may diverge again; init_from={path} module.lr=... starts "
                    "from its weights with a lower rate but at step 0 (bootstrap stages, "
                    "scheduled sampling and the rate decay start again: shorten the box stage "
                    "with callbacks.bootstrap.stages). If the weights have diverged already (the "
                    "same error at step 0), use an earlier checkpoint (checkpoints/last.ckpt)"
                )
            )
        if self.policy == "skip":
            saved += (
                f". Before it, {self.in_a_row} batches in a row were skipped "
                f"(module.max_skipped={self.max_skipped})"
            )
        raise FloatingPointError(
            f"non-finite {self._describe(found)} at training step {step}. {cause}. {saved}."
        )


def checkpoint_path(trainer: L.Trainer, step: int) -> Path:
    """``nonfinite-step<step>.ckpt`` in the checkpoint callback's folder (else
    ``<default_root_dir>/checkpoints``)."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    folder = Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"
    return folder / f"nonfinite-step{step}.ckpt"


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _scaled(module: L.LightningModule) -> bool:
    """Whether the trainer's precision plugin scales the loss (``16-mixed``)."""
    trainer = module._trainer
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None
