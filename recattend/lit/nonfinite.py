"""The guard against non-finite training steps: NaN or inf in a batch, a rollout, a loss or the
gradients stops the run on every process together, with a checkpoint of the last finite state.

:class:`SegmenterModule <recattend.lit.SegmenterModule>` copies the BatchNorm statistics before
the forward pass (:meth:`NonFiniteGuard.begin`), checks the batch and the stacked rollout before
the Hungarian matching (SciPy refuses non-finite costs), then the loss terms
(:meth:`NonFiniteGuard.losses`), then the gradients before the optimiser step
(:meth:`NonFiniteGuard.check_gradients`). Each check sums its flags over the processes (one
all-reduce), so every DDP process takes the same branch; on a failure every process restores the
BatchNorm statistics and saves the checkpoint (global rank 0 writes it): the weights, optimiser
state, step counter and callbacks' state from before the step, which resumes (``ckpt_path=``)
and initialises (``init_from=``) like any other. Then it raises :class:`FloatingPointError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

KINDS = {
    "image": "input pixels (the batch's image)",
    "targets": "input targets (the batch's masks, boxes or foreground)",
    "masks": "predicted masks",
    "scores": "predicted scores",
    "soft_boxes": "predicted soft boxes",
    "loss": "loss",
    "gradients": "gradients",
}
"""What is checked, in the order of the flags that the processes sum, and how errors name it."""
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
        raise ValueError(f"unknown kinds {sorted(unknown)}: use {list(KINDS)}")
    groups = {k: [v] if v is None or isinstance(v, Tensor) else v for k, v in groups.items()}
    return torch.stack([~_finite(groups.get(kind, ()), device) for kind in KINDS])


def _finite(tensors: Iterable[Tensor | None], device: torch.device) -> Tensor:
    """() bool on ``device``: whether every element of ``tensors`` is finite (True for none)."""
    checks = [t.detach().isfinite().all().to(device) for t in tensors if t is not None]
    return torch.stack(checks).all() if checks else torch.ones((), dtype=torch.bool, device=device)


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


class NonFiniteGuard:
    """Stops a training step with a non-finite batch, rollout, loss or gradient, on every process
    together, with a checkpoint of the last finite state (module docstring)."""

    def __init__(self) -> None:
        self._statistics: list[tuple[Tensor, Tensor]] = []  # (buffer, its copy)
        self._terms: list[str] = []  # the non-finite loss terms of this process's last step

    def begin(self, module: nn.Module) -> None:
        """Start of a training step: copy ``module``'s BatchNorm statistics."""
        self._statistics = [(b, b.clone()) for b in batchnorm_buffers(module)]

    def losses(
        self,
        module: L.LightningModule,
        batch: Mapping[str, Any],
        outputs: Mapping[str, Tensor | None],
        compute: Callable[[], dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The loss terms ``compute()`` returns, checked with the batch and the outputs.

        ``compute`` runs only when this process's batch (its image and float targets) and
        ``outputs`` (``masks``, ``scores``, ``soft_boxes``: the stacked rollout) are finite; then
        its terms (all but ``match``) are checked, and :meth:`check` decides with every process.

        Raises:
            FloatingPointError: as :meth:`check`.
        """
        inputs = {kind: [batch.get(key) for key in keys] for kind, keys in _INPUTS.items()}
        flags = nonfinite_flags({**inputs, **outputs}, module.device)
        terms = None if flags.any() else compute()
        self._terms = []
        if terms is not None:
            checked = {name: value for name, value in terms.items() if name != "match"}
            flags = nonfinite_flags({"loss": checked.values()}, module.device)
            if flags.any():  # name the terms (a rare path: one synchronisation per term)
                self._terms = [k for k, v in checked.items() if not torch.isfinite(v).all()]
        self.check(module, flags)
        return terms

    def check_gradients(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Before the optimiser step: the gradients, checked with every process.

        Under a gradient scaler (``16-mixed``) non-finite gradients are the scaler's business (it
        skips that step and lowers its scale), so they are not checked.

        Raises:
            FloatingPointError: as :meth:`check`.
        """
        trainer = module._trainer
        if trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"]]
        device = next((g.device for g in gradients if g is not None), module.device)
        self.check(module, nonfinite_flags({"gradients": gradients}, device))

    def check(self, module: L.LightningModule, flags: Tensor) -> None:
        """Act on what the processes found non-finite (``flags``: :func:`nonfinite_flags`):
        nothing, or restore the BatchNorm statistics, save the checkpoint and raise.

        Every process must call it at the same point of the step: it sums the flags over the
        processes.

        Raises:
            FloatingPointError: naming the step, what was non-finite, the likely causes and the
                checkpoint.
        """
        # Per kind, and last for anything, the number of processes that found it.
        counts = torch.cat([flags, flags.any()[None]]).to(torch.int32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        *per_kind, processes = counts.tolist()
        found = [kind for kind, n in zip(KINDS, per_kind, strict=True) if n]
        if not found:
            return
        for buffer, copy in self._statistics:
            buffer.copy_(copy)
        raise FloatingPointError(
            f"non-finite {self._describe(found, processes)} at training step "
            f"{module.global_step}. {_cause(module, found)}. {_save(module, found)}."
        )

    def _describe(self, found: list[str], processes: int) -> str:
        """What was non-finite, the batch first: e.g. ``input pixels (the batch's image); also
        predicted masks, predicted scores (on 1 of 2 processes)`` or ``loss (loss_box, loss)``
        (the terms that this process found)."""
        names = dict(KINDS)
        if self._terms:
            names["loss"] = f"loss ({', '.join(self._terms)})"
        parts = ([k for k in found if k in _INPUTS], [k for k in found if k not in _INPUTS])
        what = "; also ".join(", ".join(names[k] for k in part) for part in parts if part)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return what if world == 1 else f"{what} (on {processes} of {world} processes)"


def _cause(module: L.LightningModule, found: list[str]) -> str:
    """The likely cause of what was ``found`` non-finite."""
    if "image" in found or "targets" in found:
        return (
            "Likely cause: bad input data, NaN/inf values in the batch itself (check the "
            "dataset's files, its loader and the augmentation), not the training"
        )
    trainer, lr = module._trainer, module.hparams.get("lr")
    if trainer is not None and trainer.optimizers:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
    return (
        f"The batch is finite, so the likely cause is a learning rate too high (now {lr:g}: "
        "module.lr, or the bootstrap stage's lr), or else a diverging training "
        "(module.grad_clip, trainer.precision)"
    )


def _save(module: L.LightningModule, found: list[str]) -> str:
    """Save the state from before the step (every process calls it; global rank 0 writes) and
    say where, and how to go on from it."""
    trainer, step = module._trainer, module.global_step
    if trainer is None:
        return "No trainer is attached, so no checkpoint was saved"
    if not bool(_finite(module.parameters(), module.device)):
        return (
            "The weights were already non-finite at the start of this step (loaded or set so: "
            "the guard never steps the optimiser with non-finite gradients), so no checkpoint "
            "was saved"
        )
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    folder = Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"
    path = folder / f"nonfinite-step{step}.ckpt"
    trainer.save_checkpoint(path)
    if "image" in found or "targets" in found:
        advice = f"once the data is fixed, resume with ckpt_path={path}"
    else:
        advice = (
            f"ckpt_path={path} continues the run exactly (same rate, stage and schedule), "
            f"which may diverge again; init_from={path} module.lr=... starts from its weights "
            "with a lower rate but at step 0 (bootstrap stages, scheduled sampling and the rate "
            "decay start again: shorten the box stage with callbacks.bootstrap.stages). If the "
            "weights have diverged already (the same error at step 0), use an earlier "
            "checkpoint (checkpoints/last.ckpt)"
        )
    return (
        "The last finite state (weights, BatchNorm statistics and optimiser state from before "
        f"step {step}) is saved in {path}: {advice}"
    )
