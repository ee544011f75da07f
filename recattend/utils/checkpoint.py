"""Checkpoint files read safely (``weights_only=True``), with clear errors: the file itself
(:func:`read_checkpoint`, which every reader goes through) and weights only
(:func:`load_weights`). Rebuilding whole modules is :mod:`recattend.lit.loading`'s."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recattend import pretrained

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, key: str = "ckpt_path", mmap: bool = False) -> dict:
    """The checkpoint dict in ``path`` (``weights_only=True``, on the CPU).

    Args:
        path: checkpoint file, or the name of shipped weights (:mod:`recattend.pretrained`,
            checksum verified).
        key: the setting that named ``path``, for error messages.
        mmap: map the tensors instead of reading them (cheap when only the settings are
            needed); ignored for files in torch's legacy (non-zip) format, which cannot be mapped.

    Raises:
        FileNotFoundError: ``path`` is not a file (the shipped names are listed).
        ValueError: shipped weights whose checksum differs;
            ``"<key>=<path> is not a recattend/Lightning checkpoint (<why>)"``: an empty
            or truncated file, neither of torch.save's formats (its zip archive or its legacy
            pickle), one torch.load refuses (``weights_only=True`` allows plain values and
            tensors only), or an object without a ``state_dict`` mapping.
    """
    file = pretrained.checkpoint_file(path, key)
    is_zip = zipfile.is_zipfile(file)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except (PermissionError, MemoryError):
        raise
    except Exception as err:  # torch.load raises anything from KeyError to RuntimeError here
        why = _unreadable(file, is_zip, err)
        raise ValueError(f"{key}={path} is not a recattend/Lightning checkpoint ({why})") from err
    if not isinstance(checkpoint, dict):
        why = f"it holds a {type(checkpoint).__name__}, not a dict with a 'state_dict'"
    elif not isinstance(checkpoint.get("state_dict"), Mapping):
        keys = sorted(map(str, checkpoint))
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        why = f"a dict without a 'state_dict' mapping; its keys: {shown or 'none'}"
    else:
        _warn_if_newer(checkpoint, path, key)
        return checkpoint
    raise ValueError(f"{key}={path} is not a recattend/Lightning checkpoint ({why})")


def _warn_if_newer(checkpoint: Mapping[str, Any], path: str | Path, key: str) -> None:
    """Warn when a newer Lightning than the installed one wrote the checkpoint: it may hold
    state this version reads wrongly or not at all."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    written = checkpoint.get("pytorch-lightning_version")
    try:
        installed = version("lightning")
        newer = written is not None and Version(str(written)) > Version(installed)
    except (PackageNotFoundError, InvalidVersion):
        return
    if newer:
        log.warning(
            "%s=%s was written by Lightning %s, newer than the installed %s: upgrade Lightning "
            "(pip install -U lightning) if loading it fails or its state looks wrong",
            key, path, written, installed,
        )  # fmt: skip


# How torch.save's legacy (non-zip) format begins: its magic number, pickled with protocol 2.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _unreadable(file: Path, is_zip: bool, err: Exception) -> str:
    """Why torch.load could not read ``file``."""
    if file.stat().st_size == 0:
        return "the file is empty"
    with file.open("rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(b"PK\x03\x04") and not is_zip:
        return "a zip archive without its end: a truncated file (an interrupted save or copy?)"
    if not (is_zip or head == _LEGACY_MAGIC):
        return "not written by torch.save: neither its zip format nor its legacy pickle format"
    if is_zip:
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if not any(name.endswith("data.pkl") for name in names):
            return "a zip archive, but not torch.save's: it has no data.pkl"
    if isinstance(err, EOFError):
        return "it ends early: a truncated file (an interrupted save or copy?)"
    if isinstance(err, pickle.UnpicklingError) and "WeightsUnpickler error:" in str(err):
        # torch's advice (weights_only=False) would run the file's code: not repeated here.
        detail = str(err).split("WeightsUnpickler error:", 1)[1].strip().split(". Please")[0]
        return f"it holds more than plain values and tensors: {detail.splitlines()[0]}"
    lines = str(err).strip().splitlines()
    return f"torch.load cannot read it: {type(err).__name__}" + (f": {lines[0]}" if lines else "")


def load_weights(
    module: nn.Module,
    path: str | Path,
    key: str = "init_from",
    fit: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]] | None = None,
) -> list[str]:
    """Initialise ``module`` from the ``state_dict`` of a Lightning checkpoint or shipped weights.

    Every entry of the checkpoint must exist in ``module`` with the same shape; entries of
    ``module`` the checkpoint lacks keep their initial values (e.g. the segmentation network when
    starting from a box-stage checkpoint) and are returned.

    Args:
        module: the freshly built LightningModule.
        path: checkpoint file, or the name of shipped weights.
        key: the setting that named ``path``, for error messages.
        fit: ``fit(state_dict, hyper_parameters)`` makes the checkpoint's entries fit
            ``module`` first (e.g. :meth:`recattend.models.SegmenterNetwork.fit_state` for
            another resolution).

    Returns:
        The names of the module's entries left at their initial values.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: not a checkpoint (:func:`read_checkpoint`), or entries that do not fit
            (named, with shapes).
    """
    checkpoint = read_checkpoint(path, key)
    state = checkpoint["state_dict"]
    if fit is not None:
        state = fit(state, checkpoint.get("hyper_parameters") or {})
    own = module.state_dict()
    problems = misfits(state, own)
    if problems:
        raise ValueError(
            f"{key}={path} does not fit this model: {listed(problems)}. Use a checkpoint trained "
            "with the same model and dataset settings (the run's .hydra/config.yaml lists them)."
        )
    module.load_state_dict(state, strict=False)
    missing = [name for name in own if name not in state]
    log.info("%s: loaded %d entries from %s", key, len(state), path)
    if missing:
        log.warning(
            "%s: %d entries of this model are not in %s and keep their initial values: %s",
            key, len(missing), path, listed(missing),
        )  # fmt: skip
    return missing


def misfits(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], strict: bool = False
) -> list[str]:
    """What keeps ``state`` (a checkpoint's) from loading into a model whose state is ``own``:
    its entries the model lacks, those of another shape, and with ``strict`` the model's
    entries it lacks; each named, with the shapes."""
    problems = [f"{name} (not in this model)" for name in state if name not in own]
    problems += [
        f"{name} (checkpoint {tuple(value.shape)}, model {tuple(own[name].shape)})"
        for name, value in state.items()
        if name in own and value.shape != own[name].shape
    ]
    if strict:
        problems += [f"{name} (not in the checkpoint)" for name in own if name not in state]
    return problems


def listed(names: Sequence[str], most: int = 8) -> str:
    """The first ``most`` names joined by "; ", and how many more."""
    more = f"; and {len(names) - most} more" if len(names) > most else ""
    return "; ".join(names[:most]) + more
