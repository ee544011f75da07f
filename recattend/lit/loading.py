"""LightningModules rebuilt from their checkpoints (``weights_only=True``): whole modules
(:func:`load_module`, with errors naming what a checkpoint holds instead) and the trained FCN
pre-processor that a segmenter reads (:func:`load_preprocessor`, the ``_target_`` of the model
config's ``preprocessor`` node)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from recattend.models.preprocessor import Preprocessor
from recattend.utils.checkpoint import read_checkpoint

Module = TypeVar("Module", bound=type[L.LightningModule])

# The LightningModules a checkpoint can hold, by class name: (class, its config
# conf/module/<name>.yaml). Filled by @loadable.
MODULES: dict[str, tuple[type[L.LightningModule], str]] = {}


def loadable(config: str) -> Callable[[Module], Module]:
    """Class decorator: register a LightningModule whose checkpoints :func:`load_module`
    recognises, built by ``module=<config>``."""

    def register(cls: Module) -> Module:
        MODULES[cls.__name__] = (cls, config)
        return cls

    return register


def load_preprocessor(
    ckpt_path: str | Path | None, key: str = "model.preprocessor.ckpt_path"
) -> Preprocessor | None:
    """The trained :class:`~recattend.models.Preprocessor` of a ``module=preprocessor``
    checkpoint, or None when ``ckpt_path`` is None (the segmenter then reads raw pixels).

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is not a pre-processor checkpoint.
    """
    if ckpt_path is None:
        return None
    file = Path(ckpt_path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{key}={ckpt_path}: no such file; train one with `python train.py "
            "module=preprocessor dataset=...` and pass its checkpoints/last.ckpt"
        )
    checkpoint = read_checkpoint(file, key)
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not weights or "image_size" not in hparams:
        raise ValueError(
            f"{key}={ckpt_path} is not a pre-processor checkpoint (module=preprocessor): it has "
            "no 'net.*' weights and pre-processor hyper-parameters"
        )
    net = Preprocessor(**dict(hparams.get("net") or {}))
    net.load_state_dict(weights)
    return net


def load_module(
    module_cls: type[L.LightningModule],
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    hint: str | None = None,
    key: str = "ckpt_path",
    resolution: Sequence[int] | None = None,
) -> L.LightningModule:
    """``module_cls`` rebuilt from a checkpoint's hyper-parameters (``weights_only=True``) with
    its weights, or an error naming what differs.

    Args:
        overrides: constructor arguments that replace the checkpoint's (e.g. evaluation
            settings); each must be an argument of ``module_cls``.
        resolution: (H, W) input to build a segmenter's network for instead of the checkpoint's
            ``net.image_size``: the one resolution-dependent layer (the attention logits, eq. 5)
            is resampled to it (:meth:`~recattend.models.SegmenterNetwork.fit_state`); None:
            the checkpoint's.
        hint: what to do when the checkpoint holds another module, ending that error (default:
            load it as that module, ``module=<its config>``); e.g. predict.py's "predict.py
            needs a segmenter checkpoint (module=segmenter run)".
        key: the setting that named ``path``, for error messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint (:func:`~recattend.utils.checkpoint.read_checkpoint`);
            the checkpoint holds another module (its hyper-parameters are not this class's
            arguments, or lack a required one: names the module it holds when it is one of
            :data:`MODULES`); an override is not an argument; ``resolution`` for a module
            without ``net.image_size`` (a pre-processor: it runs at the resolution it was
            trained at); or its weights do not fit (names the tensors).
    """
    checkpoint = read_checkpoint(path, key)
    saved = checkpoint.get("hyper_parameters") or {}
    unknown, missing = _misfit(module_cls, saved, given=set(overrides or {}))
    if unknown or missing:
        held = _held_module(saved)
        if not saved:
            settings = "it has no saved settings (hyper_parameters) to rebuild it from"
        elif unknown:
            settings = f"its settings {unknown} are not {module_cls.__name__}'s"
        else:
            settings = f"it lacks the settings {missing} a {module_cls.__name__} needs"
        if held is None:
            raise ValueError(
                f"{path} does not hold a {module_cls.__name__}: {settings}; "
                + (hint or "pick the checkpoint's module (module=preprocessor or module=segmenter)")
            )
        hint = hint or f"load it as a {held} (module={MODULES[held][1]})"
        raise ValueError(
            f"{path} does not hold a {module_cls.__name__}: it holds a {held} ({settings}); {hint}"
        )
    foreign = sorted(set(overrides or {}) - _arguments(module_cls))
    if foreign:
        raise ValueError(
            f"{foreign[0]}: {module_cls.__name__} has no such setting (postprocess.* applies to "
            "the segmenter, module=segmenter, only)"
        )
    overrides = dict(overrides or {})
    state = checkpoint["state_dict"]
    trained_at = _resized(saved, overrides, resolution, path)
    try:
        module = module_cls(**{**saved, **overrides})
    except TypeError as err:  # e.g. a nested setting the network does not know
        raise ValueError(
            f"{path}: its settings do not build a {module_cls.__name__}: {err}"
        ) from err
    if trained_at is not None:
        state = module.net.fit_state(state, trained_at, prefix="net.")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # state_dict size mismatch / missing keys
        raise ValueError(f"{path} does not fit {module_cls.__name__}: {err}") from err
    return module.to(map_location)


def _resized(
    saved: Mapping[str, Any],
    overrides: dict[str, Any],
    resolution: Sequence[int] | None,
    path: str | Path,
) -> list[int] | None:
    """With ``resolution`` other than the checkpoint's, put the network's new ``image_size`` in
    ``overrides`` and return the checkpoint's (the weights' resolution); else None."""
    if resolution is None:
        return None
    net = saved.get("net")
    if not isinstance(net, Mapping) or "image_size" not in net:
        raise ValueError(
            f"{path}: its module has no net.image_size, so it cannot be built for the input "
            f"resolution {list(resolution)}; give its data the resolution it was trained at"
        )
    trained_at = [int(v) for v in net["image_size"]]
    if trained_at == [int(v) for v in resolution]:
        return None
    overrides["net"] = {**net, **dict(overrides.get("net") or {}), "image_size": list(resolution)}
    return trained_at


def _arguments(module_cls: type) -> set[str]:
    return set(inspect.signature(module_cls.__init__).parameters) - {"self"}


def _misfit(
    module_cls: type, saved: Mapping[str, Any], given: Collection[str] = ()
) -> tuple[list[str], list[str]]:
    """The saved settings ``module_cls`` does not take, and its required arguments neither saved
    nor ``given`` (as overrides)."""
    parameters = inspect.signature(module_cls.__init__).parameters
    unknown = sorted(set(saved) - _arguments(module_cls))
    missing = [
        name
        for name, p in parameters.items()
        if name != "self"
        and p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in saved
        and name not in given
    ]
    return unknown, missing


def _held_module(saved: Mapping[str, Any]) -> str | None:
    """The name of the recattend module whose arguments ``saved`` fits, if exactly one does."""
    fits = [name for name, (cls, _) in MODULES.items() if saved and not any(_misfit(cls, saved))]
    return fits[0] if len(fits) == 1 else None
