"""Weights from Lightning checkpoints, read safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def load_weights(module: nn.Module, path: str | Path, key: str = "init_from") -> list[str]:
    """Initialise ``module`` from the ``state_dict`` of a Lightning checkpoint.

    Every entry of the checkpoint must exist in ``module`` with the same shape; entries of
    ``module`` the checkpoint lacks keep their initial values (e.g. the segmentation network when
    starting from a box-stage checkpoint) and are returned.

    Args:
        module: the freshly built LightningModule.
        path: checkpoint file.
        key: the setting that named ``path``, for error messages.

    Returns:
        The names of the module's entries left at their initial values.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: not a Lightning checkpoint, or entries that do not fit (named, with shapes).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"{key}={path} is not a Lightning checkpoint (it has no 'state_dict')")
    own = module.state_dict()
    problems = [f"{name} (not in this model)" for name in state if name not in own]
    problems += [
        f"{name} (checkpoint {tuple(value.shape)}, model {tuple(own[name].shape)})"
        for name, value in state.items()
        if name in own and value.shape != own[name].shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise ValueError(
            f"{key}={path} does not fit this model: {shown}. Use a checkpoint trained with the "
            "same model and dataset settings (the run's .hydra/config.yaml lists them)."
        )
    module.load_state_dict(state, strict=False)
    missing = [name for name in own if name not in state]
    log.info(
        "%s: loaded %d entries from %s; %d kept their initial values",
        key,
        len(state),
        path,
        len(missing),
    )
    return missing
