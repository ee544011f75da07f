"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

# Devices with a fused Adam kernel (one kernel per parameter group instead of about ten small
# operations per parameter): with per-timestep BatchNorm the segmenter has ~900 parameter tensors,
# and the fused step takes ~10 ms where the per-parameter loop takes ~29 (2 CPU cores).
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups with L2 weight decay on weight matrices and kernels only.

    The authors' code decays every weight matrix and kernel (5e-5 sum ||W||^2 / 2) but not biases,
    BatchNorm scales and shifts, or gains; with Adam, decaying a parameter whose only gradient is
    the decay term (e.g. a per-timestep BatchNorm rarely reached by the loss) drives it to zero.
    """
    weights = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]


def check_settings(**settings: Any) -> None:
    """Refuse optimiser settings torch would reject later, or that would silently train
    nothing, naming the ``module.<key>`` (``lr``, ``lr_decay``, ``lr_decay_steps``,
    ``lr_warmup_steps``, ``weight_decay``, ``adam_betas``; those given are checked).

    Raises:
        ValueError: e.g. ``module.lr=-1 must be a number > 0``.
    """
    rules = {
        "lr": (lambda v: v > 0, "a number > 0, e.g. module.lr=1e-3"),
        "lr_decay": (lambda v: 0 < v <= 1, "in (0, 1]: the factor per lr_decay_steps"),
        "lr_decay_steps": (lambda v: v >= 1, "an integer >= 1"),
        "lr_warmup_steps": (lambda v: v >= 0, "an integer >= 0 (0: no warm-up)"),
        "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    }
    for key, value in settings.items():
        if key == "adam_betas":
            ok = (
                isinstance(value, Sequence)
                and len(value) == 2
                and all(_real(b) and 0 <= b < 1 for b in value)
            )
            if not ok:
                raise ValueError(f"module.adam_betas={value!r} must be two numbers in [0, 1)")
            continue
        rule, what = rules[key]
        if not _real(value) or not rule(value):
            raise ValueError(f"module.{key}={value!r} must be {what}")


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def adam(
    module: nn.Module, weight_decay: float, fused: bool = True, **kwargs: Any
) -> torch.optim.Adam:
    """Adam over :func:`decay_groups`, fused (the same update up to float rounding) when ``fused``
    and every parameter is a float tensor on a CPU or CUDA device; ``kwargs`` go to Adam (``lr``,
    ``eps``, ``betas``). Pass ``fused=not mixed_precision(module)``: Lightning's mixed-precision
    plugins cannot clip the gradients of a fused optimiser."""
    groups = decay_groups(module, weight_decay)
    fused = fused and all(
        p.is_floating_point() and p.device.type in _FUSED_ADAM_DEVICES
        for group in groups
        for p in group["params"]
    )
    return torch.optim.Adam(groups, fused=fused, **kwargs)


def mixed_precision(module: L.LightningModule) -> bool:
    """Whether the module trains under a mixed precision (``trainer.precision=bf16-mixed`` or
    ``16-mixed``); False without a trainer."""
    return module._trainer is not None and str(module.trainer.precision).endswith("-mixed")


def lr_factor(warmup_steps: int, decay: float, decay_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at optimiser step k (for ``LambdaLR``): a linear warm-up,
    (k + 1) / ``warmup_steps`` for k < ``warmup_steps``, times a staircase decay,
    ``decay`` ** (k // ``decay_steps``).

    Raises:
        ValueError: a negative ``warmup_steps`` or ``decay_steps`` < 1.
    """
    if warmup_steps < 0 or decay_steps < 1:
        raise ValueError(
            f"lr_warmup_steps={warmup_steps} must be >= 0 and lr_decay_steps={decay_steps} >= 1"
        )

    def factor(k: int) -> float:
        return min(1.0, (k + 1) / warmup_steps if warmup_steps else 1.0) * decay ** (
            k // decay_steps
        )

    return factor
