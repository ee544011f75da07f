"""Reading checkpoints: files that are not checkpoints are named, whole modules and weights load
with clear errors, and checkpoints of another model or version say what differs."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from recattend.lit import SegmenterModule, load_module
from recattend.utils.checkpoint import (
    load_weights,
    read_checkpoint,
)
from tests.helpers import tiny_segmenter


# ---------------------------------------------------------------- files that are not checkpoints
def _not_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Hand-made files that are not checkpoints, each with the reason the error must give."""
    import datetime
    import pickle
    import zipfile

    files = {}

    def add(name: str, why: str) -> Path:
        files[name] = (folder / f"{name}.ckpt", why)
        return files[name][0]

    add("text", "not written by torch.save").write_text("epoch=3\nloss=0.1\n")
    add("empty", "the file is empty").write_bytes(b"")
    with zipfile.ZipFile(
        add("zip", "a zip archive, but not torch.save's: it has no data.pkl"), "w"
    ) as archive:
        archive.writestr("weights.txt", "not torch's")
    pickle.dump({"state_dict": {}}, add("pickle", "not written by torch.save").open("wb"))
    torch.save([1, 2], add("list", "it holds a list, not a dict with a 'state_dict'"))
    torch.save(
        {"epoch": 3}, add("no-state", "a dict without a 'state_dict' mapping; its keys: epoch")
    )
    unsafe = {"state_dict": {}, "when": datetime.date(2020, 1, 1)}
    torch.save(unsafe, add("unsafe", "more than plain values and tensors: .*datetime.date"))
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}}, whole)
    add("truncated", "a truncated file").write_bytes(whole.read_bytes()[:2048])
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the plain pickle
def test_files_that_are_not_checkpoints_are_named_by_every_reader(tmp_path: Path) -> None:
    import re

    from recattend.utils.checkpoint import read_checkpoint

    cases = _not_checkpoints(tmp_path)
    assert len(cases) == 8
    for path, why in cases.values():
        message = r" is not a recattend/Lightning checkpoint \(.*" + why
        for read in (
            read_checkpoint,
            lambda p: read_checkpoint(p, mmap=True),  # eval.py reads the settings this way
            lambda p: load_module(SegmenterModule, p),
        ):
            with pytest.raises(ValueError, match=re.escape(f"ckpt_path={path}") + message):
                read(path)
        with pytest.raises(ValueError, match=re.escape(f"init_from={path}") + message):
            load_weights(tiny_segmenter(), path)


def test_read_checkpoint_maps_zip_files_and_reads_legacy_ones(tmp_path: Path) -> None:
    from recattend.utils.checkpoint import read_checkpoint

    state = {"state_dict": {"w": torch.arange(3.0)}, "hyper_parameters": {"lr": 0.1}}
    torch.save(state, tmp_path / "zip.ckpt")
    torch.save(state, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("zip", "legacy"):
        read = read_checkpoint(tmp_path / f"{name}.ckpt", mmap=True)
        assert read["hyper_parameters"] == {"lr": 0.1}
        assert torch.equal(read["state_dict"]["w"], torch.arange(3.0))
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*missing.ckpt: no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_load_module_names_the_module_a_checkpoint_holds(tmp_path: Path) -> None:
    from recattend.lit import PreprocessorModule
    from tests.helpers import SMALL_FCN

    def save(module: L.LightningModule, name: str, **extra) -> Path:
        checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
        torch.save({**checkpoint, **extra}, tmp_path / name)
        return tmp_path / name

    fcn = save(PreprocessorModule(image_size=[32, 32], net=SMALL_FCN), "fcn.ckpt")
    segmenter = save(tiny_segmenter(), "seg.ckpt")
    with pytest.raises(ValueError, match=(
        r"fcn\.ckpt does not hold a SegmenterModule: it holds a PreprocessorModule \(its settings "
        r"\['image_size', 'optimizer'\] are not SegmenterModule's\); load it as a "
        r"PreprocessorModule \(module=preprocessor\)$"
    )):  # fmt: skip
        load_module(SegmenterModule, fcn)
    with pytest.raises(ValueError, match=r"holds a PreprocessorModule .*; predict\.py needs a seg"):
        load_module(SegmenterModule, fcn, hint="predict.py needs a segmenter checkpoint")
    with pytest.raises(ValueError, match=r"holds a SegmenterModule .*\(module=segmenter\)$"):
        load_module(PreprocessorModule, segmenter)
    assert isinstance(load_module(PreprocessorModule, fcn), PreprocessorModule)
    # No settings at all (a state_dict saved by hand): said so, never a TypeError.
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": torch.load(segmenter, weights_only=True)["state_dict"]}, bare)
    with pytest.raises(ValueError, match="has no saved settings .hyper_parameters. to rebuild"):
        load_module(SegmenterModule, bare)
    # Settings the network does not take: a ValueError naming the checkpoint.
    odd = torch.load(segmenter, weights_only=True)
    odd["hyper_parameters"]["net"]["segmenter"]["depth"] = 3
    torch.save(odd, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match=r"odd\.ckpt: its settings do not build a SegmenterModule"):
        load_module(SegmenterModule, tmp_path / "odd.ckpt")


# Checkpoints from another version: the entries that differ are named.


def _saved(tmp_path: Path, state: dict, **extra) -> Path:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": state, **extra}, path)
    return path


def test_init_from_names_the_entries_left_at_their_initial_values(tmp_path: Path, caplog) -> None:
    module = tiny_segmenter()
    state = dict(module.state_dict())
    gone = sorted(state)[0]
    del state[gone]
    with caplog.at_level("WARNING"):
        missing = load_weights(tiny_segmenter(), _saved(tmp_path, state))
    assert missing == [gone]
    assert f"1 entries of this model are not in {tmp_path / 'other.ckpt'}" in caplog.text
    assert gone in caplog.text


def test_resuming_a_checkpoint_of_another_model_names_the_entries(
    compose_train, tmp_path: Path
) -> None:
    from recattend.tasks import train
    from tests.helpers import TINY

    cfg = compose_train(*TINY, "logger=none", "test=false")
    train.run(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    name = next(iter(saved["state_dict"]))
    saved["state_dict"]["net.renamed"] = saved["state_dict"].pop(name)
    torch.save(saved, last)
    with pytest.raises(
        ValueError,
        match=rf"cannot be resumed with this run's model: net\.renamed "
        rf"\(not in this model\); {re.escape(name)} \(not in the checkpoint\)",
    ):
        train.run(compose_train(*TINY, "logger=none", "test=false", f"ckpt_path={last}"))


def test_a_checkpoint_of_a_newer_lightning_is_warned_about(tmp_path: Path, caplog) -> None:
    state = tiny_segmenter().state_dict()
    with caplog.at_level("WARNING"):
        read_checkpoint(_saved(tmp_path, state, **{"pytorch-lightning_version": "99.0.0"}))
    assert "was written by Lightning 99.0.0, newer than the installed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_checkpoint(_saved(tmp_path, state, **{"pytorch-lightning_version": "2.0.0"}))
    assert "newer than the installed" not in caplog.text
