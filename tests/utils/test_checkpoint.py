"""Checkpoints written before the network became one node still load, resume and initialise."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from recattend.lit import SegmenterModule
from recattend.utils.checkpoint import load_module, load_weights, upgrade_checkpoint
from tests.helpers import tiny_data, tiny_segmenter


def _trainer(folder: Path, max_steps: int) -> L.Trainer:
    return L.Trainer(
        default_root_dir=folder, max_steps=max_steps, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip


def _legacy_copy(path: Path, out: Path) -> dict:
    """The checkpoint at ``path`` in the old layout: the network's settings among the module's
    hyper-parameters and the weights under ``model.*`` / ``preprocessor.*``."""
    checkpoint = torch.load(path, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    net = hparams.pop("net")
    hparams.update(
        image_size=net["image_size"],
        max_instances=net["max_instances"],
        net=net["segmenter"],
        preprocessor=net["preprocessor"],
        parallel_backward=True,
    )
    renamed = {}
    for name, value in checkpoint["state_dict"].items():
        for new, old in (("net.segmenter.", "model."), ("net.preprocessor.", "preprocessor.")):
            if name.startswith(new):
                name = old + name[len(new) :]
        renamed[name] = value
    checkpoint["state_dict"] = renamed
    torch.save(checkpoint, out)
    return checkpoint


def test_an_old_checkpoint_loads_resumes_and_initialises(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = _trainer(tmp_path / "run", 1)
    trainer.fit(tiny_segmenter(), tiny_data())
    path = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    new = torch.load(path, weights_only=True)
    legacy = _legacy_copy(path, tmp_path / "old.ckpt")
    assert any(k.startswith("model.box_net.") for k in legacy["state_dict"])

    # In memory: exactly today's layout again.
    upgraded = upgrade_checkpoint(torch.load(tmp_path / "old.ckpt", weights_only=True))
    assert upgraded["hyper_parameters"] == new["hyper_parameters"]
    assert upgraded["state_dict"].keys() == new["state_dict"].keys()

    # eval.py / predict.py, and Lightning's own entry: the module rebuilt with the same weights.
    module = load_module(SegmenterModule, tmp_path / "old.ckpt")
    lightning_way = SegmenterModule.load_from_checkpoint(tmp_path / "old.ckpt", threshold=0.5)
    assert lightning_way.hparams.threshold == 0.5
    for name, value in module.state_dict().items():
        assert torch.equal(value, new["state_dict"][name]), name
        assert torch.equal(lightning_way.state_dict()[name], value), name

    # init_from: every entry fits.
    fresh = tiny_segmenter()
    assert load_weights(fresh, tmp_path / "old.ckpt") == []
    assert torch.equal(
        fresh.state_dict()["net.segmenter.score_head.weight"],
        module.state_dict()["net.segmenter.score_head.weight"],
    )

    # ckpt_path=: Lightning restores the renamed weights (max_steps reached: nothing trains).
    resumed = tiny_segmenter()
    _trainer(tmp_path / "resumed", 1).fit(resumed, tiny_data(), ckpt_path=tmp_path / "old.ckpt")
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, new["state_dict"][name]), name


def test_other_objects_pass_unchanged() -> None:
    preprocessor = {"hyper_parameters": {"image_size": [32, 32], "net": {}}, "state_dict": {}}
    assert upgrade_checkpoint(preprocessor) == {
        "hyper_parameters": {"image_size": [32, 32], "net": {}},
        "state_dict": {},
    }
    assert upgrade_checkpoint([1, 2]) == [1, 2]
