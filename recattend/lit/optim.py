"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

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


def adam(
    module: nn.Module, weight_decay: float, fused: bool = True, **kwargs: float
) -> torch.optim.Adam:
    """Adam over :func:`decay_groups`, fused (the same update up to float rounding) when ``fused``
    and every parameter is a float tensor on a CPU or CUDA device; ``kwargs`` go to Adam (``lr``,
    ``eps``). Pass ``fused=not mixed_precision(module)``: Lightning's mixed-precision plugins
    cannot clip the gradients of a fused optimiser."""
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
