"""Optimiser helpers shared by the LightningModules."""

from __future__ import annotations

from torch import nn


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups with L2 weight decay on weight matrices and kernels only.

    The reference decays every weight matrix and kernel (5e-5 sum ||W||^2 / 2) but not biases,
    BatchNorm scales and shifts, or gains; with Adam, decaying a parameter whose only gradient is
    the decay term (e.g. a per-timestep BatchNorm rarely reached by the loss) drives it to zero.
    """
    weights = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
