"""The Evaluate callback in a real (tiny) Lightning run: val/ and test/ metrics, per_image.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from recattend.evaluation import Evaluate, InstanceEvaluator
from recattend.evaluation.statistics import APPEARANCE_STATISTICS
from tests.evaluation.fakes import FakePostProcess, make_batch, slots
from tests.metrics.labels import GT_ONE, GT_TWO


class TinyModule(L.LightningModule):
    """Predicts GT_TWO for every image; its steps return the forward outputs, as the segmenter's.

    Args:
        returns: what ``validation_step`` / ``test_step`` return: ``"outputs"`` or ``"nothing"``.
    """

    def __init__(self, returns: str = "outputs") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.returns = returns
        self.postprocess = FakePostProcess()

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        b = image.shape[0]
        return {
            "masks": slots(GT_TWO, 3).expand(b, -1, -1, -1),
            "scores": torch.tensor([0.9, 0.8, 0.1]).expand(b, -1),
        }

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return (self.weight - 1) ** 2

    def validation_step(self, batch, batch_idx: int):
        return self(batch["image"]) if self.returns == "outputs" else None

    def test_step(self, batch, batch_idx: int):
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(target: Tensor, ids: list[str]) -> DataLoader:
    """Batches of one image each with ground truth ``target``, collated by hand."""
    batches = [make_batch([target], [target], [[0.9, 0.8, 0.1]], [{"id": i}])[0] for i in ids]
    return DataLoader(batches, batch_size=None)


def trainer(folder: Path, evaluate: Evaluate, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=folder, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[evaluate], **kwargs,
    )  # fmt: skip


def test_val_and_test_metrics_are_logged_per_loop(tmp_path: Path) -> None:
    evaluate = Evaluate(test=InstanceEvaluator(original_resolution=False, per_image=True))
    module = TinyModule()
    # Perfect on GT_TWO: SBD 1. Against GT_ONE the second predicted instance matches nothing:
    # SBD = min((1 + 0) / 2, 1) = 1/2, DiC 2 - 1 = +1.
    run = trainer(tmp_path, evaluate, max_steps=1, num_sanity_val_steps=1)
    run.fit(module, loader(GT_TWO, ["t"]), loader(GT_TWO, ["v1", "v2"]))
    assert run.callback_metrics["val/sbd"] == 1.0
    assert "val/sbd" in run.progress_bar_metrics and "val/mwcov_std" in run.callback_metrics
    # The sanity check and the epoch each post-processed their batches at network resolution.
    assert len(module.postprocess.calls) == 1 + 2
    assert all(c["size"] is None for c in module.postprocess.calls)
    assert not (tmp_path / "per_image.csv").exists()  # validation keeps no rows

    # A second loop starts afresh: only GT_ONE's images count.
    [val] = trainer(tmp_path, evaluate).validate(module, loader(GT_ONE, ["w"]), verbose=False)
    assert (val["val/sbd"], val["val/dic"]) == (0.5, 1.0)

    run = trainer(tmp_path, evaluate)
    [test] = run.test(module, loader(GT_ONE, ["b", "a"]), verbose=False)
    assert (test["test/sbd"], test["test/abs_dic"], test["test/sbd_std"]) == (0.5, 1.0, 0.0)
    assert not any(key.startswith("val/") for key in test)
    assert "test/sbd" not in run.progress_bar_metrics
    with (tmp_path / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["sbd"], r["pred_count"], r["gt_count"]) for r in rows] == [
        ("a", "0.5", "2", "1"),
        ("b", "0.5", "2", "1"),
    ]


def test_a_step_that_returns_nothing_is_an_error(tmp_path: Path) -> None:
    evaluate = Evaluate(test=InstanceEvaluator(original_resolution=False, per_image=False))
    with pytest.raises(TypeError, match=r"return self\(batch\[\"image\"\]\)"):
        trainer(tmp_path, evaluate).validate(
            TinyModule(returns="nothing"), loader(GT_TWO, ["v"]), verbose=False
        )


def test_the_test_evaluator_is_required() -> None:
    with pytest.raises(TypeError, match="give the test split's evaluator"):
        Evaluate(test=None)


def test_export_reaches_the_test_evaluator_only(tmp_path: Path) -> None:
    val, test = (
        InstanceEvaluator(original_resolution=False, per_image=False),
        InstanceEvaluator(original_resolution=False, per_image=False),
    )
    evaluate = Evaluate(test=test, val=val, export=True)
    trainer(tmp_path, evaluate).test(TinyModule(), loader(GT_TWO, ["x"]), verbose=False)
    assert (val.export, test.export) == (False, True)
    assert val.output_dir == test.output_dir == tmp_path
    assert (tmp_path / "predictions" / "labels" / "x.png").is_file()


def test_validation_gives_the_module_its_output_statistics(tmp_path: Path) -> None:
    evaluate = Evaluate(test=InstanceEvaluator(original_resolution=False, per_image=False))
    module = TinyModule()
    # Only the sanity check validates here (no validation epoch in a 1-epoch run): nothing set.
    run = trainer(
        tmp_path, evaluate, max_epochs=1, check_val_every_n_epoch=2, num_sanity_val_steps=1
    )
    run.fit(module, loader(GT_TWO, ["t"]), loader(GT_TWO, ["v1", "v2"]))
    assert len(module.postprocess.calls) == 1 and not hasattr(module, "output_statistics")

    # A validation epoch: GT_TWO on each 4 x 4 image, scores 0.9 and 0.8 kept (0.1: no pixel).
    trainer(tmp_path, evaluate).validate(module, loader(GT_TWO, ["v1", "v2"]), verbose=False)
    assert module.output_statistics == pytest.approx(
        {
            "images": 2.0,
            "foreground_fraction.mean": 1.0,
            "foreground_fraction.std": 0.0,
            "instances.mean": 2.0,
            "instances.std": 0.0,
            "mean_score.mean": 0.85,
            "mean_score.std": 0.0,
            "image_area.mean": 16.0,
            "image_area.std": 0.0,
            "aspect_ratio.mean": 1.0,
            "aspect_ratio.std": 0.0,
            # Black images: every appearance statistic 0.
            **{f"{name}.{what}": 0.0 for name in APPEARANCE_STATISTICS for what in ("mean", "std")},
        }
    )
    # The next validation replaces them: only its own images count.
    trainer(tmp_path, evaluate).validate(module, loader(GT_TWO, ["w"]), verbose=False)
    assert module.output_statistics["images"] == 1.0
