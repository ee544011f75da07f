"""Pretrained weights shipped inside the package, loadable by name wherever a checkpoint is read:
``predict.py weights=leaves``, ``eval.py weights=leaves``, ``train.py init_from=leaves``.

A shipped file is a weights-only checkpoint (``state_dict`` and the module's hyper-parameters,
no optimiser state; see :mod:`recattend.tasks.ship_weights`) that also records the dataset it was
trained on (``dataset``: the resolved dataset config) and where it came from (``card``). Each is
checked against its SHA-256 before it is read, and read with ``torch.load(weights_only=True)``
like any checkpoint (:func:`recattend.utils.checkpoint.read_checkpoint`). The model cards are in
docs/pretrained.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pretrained:
    """One shipped weights file.

    Attributes:
        name: what users type (``weights=<name>``).
        file: the file's name in this folder.
        sha256: its checksum, hex.
        summary: one line on what it is for.
        test_sbd, test_dic_abs: its card's test figures (official SBD in [0, 1], mean |DiC|) on
            the test split of the data it records, at the checkpoint's post-processing.
    """

    name: str
    file: str
    sha256: str
    summary: str
    test_sbd: float
    test_dic_abs: float

    @property
    def path(self) -> Path:
        return FOLDER / self.file


REGISTRY: dict[str, Pretrained] = {
    p.name: p
    for p in [
        Pretrained(
            name="leaves",
            file="leaves.pt",
            sha256="0f124b278d988205fff3ee7b6b91c419349758860d4fac6e057f83373d87e38b",
            summary="rosettes like real photos, 4-20 leaves, 224x224, T = 21 (docs/pretrained.md)",
            test_sbd=0.6840,
            test_dic_abs=1.3633,
        ),
    ]
}


def chosen(ckpt_path: str | None, weights: str | None) -> tuple[str, str]:
    """The checkpoint a task reads, as ``(setting, value)``: ``ckpt_path`` or ``weights``.

    Raises:
        ValueError: both or neither given.
    """
    if ckpt_path and weights:
        raise ValueError(f"ckpt_path={ckpt_path} and weights={weights}: give one of them, not both")
    if weights:
        return "weights", str(weights)
    if ckpt_path:
        return "ckpt_path", str(ckpt_path)
    raise ValueError(
        "no model given: pass ckpt_path=<a run's checkpoints/last.ckpt> or shipped weights by "
        f"name, weights=<{'|'.join(REGISTRY)}> (docs/pretrained.md)"
    )


def checkpoint_file(name_or_path: str | Path, key: str = "ckpt_path") -> Path:
    """The file a checkpoint setting names: a shipped model's file (checksum verified) for a
    registered name, else the path itself.

    A registered name always means the shipped file; a local file of that name is given as
    ``./<name>``.

    Raises:
        FileNotFoundError: no such file (the message lists the shipped names).
        ValueError: a shipped file whose checksum differs (edited, truncated, or a Git LFS
            pointer instead of the file), with how to restore it.
    """
    entry = REGISTRY.get(str(name_or_path))
    if entry is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{key}={name_or_path}: no such checkpoint file (shipped weights, by name: "
                f"{', '.join(REGISTRY)})"
            )
        return path
    if not entry.path.is_file():
        raise FileNotFoundError(
            f"{key}={entry.name}: the shipped weights file {entry.path} is missing; reinstall "
            "recattend or restore it with `git checkout -- recattend/pretrained/`"
        )
    digest = sha256(entry.path)
    if digest != entry.sha256:
        raise ValueError(
            f"{key}={entry.name}: {entry.path} does not match its checksum (sha256 {digest[:12]}"
            f"..., expected {entry.sha256[:12]}...): the file was changed or is not the real "
            "one (a Git LFS pointer?); restore it with `git checkout -- recattend/pretrained/`"
        )
    return entry.path


def sha256(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
