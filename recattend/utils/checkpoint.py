"""Lightning checkpoints read safely (``weights_only=True``), with clear errors: whole modules
(:func:`load_module`), weights only (:func:`load_weights`), and the upgrade of segmenter
checkpoints written before the network became one node (:func:`upgrade_checkpoint`)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
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
    checkpoint = upgrade_checkpoint(torch.load(file, map_location="cpu", weights_only=True))
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


# State-dict prefixes of segmenter checkpoints from before the network became one node
# (SegmenterNetwork): the segmenter and the pre-processor were the module's own children.
_OLD_PREFIXES = {"model.": "net.segmenter.", "preprocessor.": "net.preprocessor."}


def upgrade_checkpoint(checkpoint: Any) -> Any:
    """A segmenter checkpoint in today's layout; any other object unchanged.

    Checkpoints written before the ``model`` group became one network node kept
    ``image_size``, ``max_instances``, ``net`` (the segmenter's sizes), ``preprocessor`` and
    ``parallel_backward`` among the module's hyper-parameters, and the weights under
    ``model.*`` and ``preprocessor.*``. They become ``net = {image_size, max_instances,
    segmenter, preprocessor}`` and ``net.segmenter.*`` / ``net.preprocessor.*``; the parallel
    backward is now the process-wide ``cpu_fast_path`` switch. The dict is changed in place.
    """
    if not isinstance(checkpoint, dict):
        return checkpoint
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict) and "lambda_box" in hparams and "image_size" in hparams:
        hparams.pop("parallel_backward", None)
        hparams["net"] = {
            "image_size": hparams.pop("image_size"),
            "max_instances": hparams.pop("max_instances"),
            "segmenter": hparams.pop("net", None) or {},
            "preprocessor": hparams.pop("preprocessor", None) or {},
        }
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and any(k.startswith("model.") for k in state):
        checkpoint["state_dict"] = {_renamed(k): v for k, v in state.items()}
    return checkpoint


def _renamed(name: str) -> str:
    for old, new in _OLD_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def load_module(
    module_cls: type[L.LightningModule],
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> L.LightningModule:
    """``module_cls`` rebuilt from a checkpoint's hyper-parameters (``weights_only=True``) with
    its weights, or an error naming what differs.

    Args:
        overrides: constructor arguments that replace the checkpoint's (e.g. evaluation
            settings); each must be an argument of ``module_cls``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the checkpoint was written by another module (its hyper-parameters are not
            this class's arguments), an override is not an argument, or its weights do not fit
            (names the tensors).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    checkpoint = upgrade_checkpoint(torch.load(file, map_location="cpu", weights_only=True))
    saved = checkpoint.get("hyper_parameters", {})
    accepted = set(inspect.signature(module_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(saved) - accepted)
    if unknown:
        raise ValueError(
            f"{path} does not hold a {module_cls.__name__}: its settings {unknown} are not this "
            "module's; pick the checkpoint's module (e.g. module=preprocessor or module=segmenter)"
        )
    foreign = sorted(set(overrides or {}) - accepted)
    if foreign:
        raise ValueError(
            f"{foreign[0]}: {module_cls.__name__} has no such setting (evaluate.* applies to the "
            "segmenter, module=segmenter, only)"
        )
    module = module_cls(**{**saved, **dict(overrides or {})})
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # state_dict size mismatch / missing keys
        raise ValueError(f"{path} does not fit {module_cls.__name__}: {err}") from err
    return module.to(map_location)
