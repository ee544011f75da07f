"""Synthetic data drawn larger than the network's input (``dataset.render_size``) and scored at
that size through the original-resolution path of the file datasets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from recattend.data import SyntheticDataModule
from recattend.evaluation import InstanceEvaluator
from recattend.postprocess import PostProcess
from recattend.utils.config import instantiate_data


def data() -> SyntheticDataModule:
    """Leaves laid out at 64x64 and drawn at 256x256, four test images."""
    return SyntheticDataModule(
        resolution=[64, 64], render_size=[256, 256], max_instances=10, batch_size=4,
        num_train=1, num_val=1, num_test=4, augment=None,
    )  # fmt: skip


# The module's post-processing without blur, upsampling by nearest neighbour.
nearest = PostProcess(blur=False, upsample="nearest")


def score(evaluator: InstanceEvaluator, dm, batch, outputs, folder=None) -> dict[str, float]:
    evaluator.setup(dm, folder)
    evaluator.reset()
    evaluator.process(batch, outputs, nearest)
    return {k: float(v) for k, v in evaluator.evaluate().items()}


def test_the_config_scores_synthetic_data_at_the_drawn_size(compose_train) -> None:
    cfg = compose_train(
        "dataset.resolution=[64,64]", "dataset.render_size=[256,256]",
        "dataset.evaluator.original_resolution=true",
    )  # fmt: skip
    dm, evaluator = instantiate_data(cfg.dataset)
    assert dm.render_size == (256, 256) and evaluator.original_resolution
    evaluator.setup(dm)  # refuses a datamodule without original_target
    assert compose_train().dataset.render_size is None


def test_the_ground_truth_scores_near_one_at_the_drawn_size(tmp_path: Path) -> None:
    dm = data()
    batch = next(iter(dm.test_dataloader()))
    # The prediction is the batch's own instances, each with score 1.
    outputs = {"masks": batch["masks"], "scores": (batch["masks"].amax((2, 3)) > 0).float()}
    at_network = score(InstanceEvaluator(original_resolution=False, per_image=False), dm, batch,
                       outputs)  # fmt: skip
    assert (at_network["sbd"], at_network["dic"], at_network["fg_dice"]) == (1.0, 0.0, 1.0)

    got = score(InstanceEvaluator(original_resolution=True, per_image=True), dm, batch, outputs,
                tmp_path)  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert {(r["height"], r["width"]) for r in rows} == {("256", "256")}
    # At 256 the same instances are 4x4 blocks of the pixels the batch sampled ((4y + 2, 4x + 2),
    # the pipeline's centred nearest resize), so only their outlines miss: every one is still
    # found (DiC 0) and the foreground Dice is that of the blocks against the drawn foreground.
    dice = []
    for meta in batch["meta"]:
        target = dm.original_target(meta)
        pred = np.kron(target[2::4, 2::4] > 0, np.ones((4, 4), bool))
        dice.append(2 * (pred & (target > 0)).sum() / (pred.sum() + (target > 0).sum()))
    assert got["fg_dice"] == pytest.approx(np.mean(dice), abs=1e-6)
    assert 0.85 < got["sbd"] < 1 and got["dic"] == 0 and got["abs_dic"] == 0
    # Another image's instances score far lower: the targets are this batch's images.
    other = {k: v.roll(1, 0) for k, v in outputs.items()}
    wrong = score(InstanceEvaluator(original_resolution=True, per_image=False), dm, batch, other)
    assert wrong["sbd"] < 0.6


def test_upsampling_modes_reach_the_original_resolution_path() -> None:
    # Soft masks: the ground truth at 0.8 inside, so every mode keeps the instances; the modes
    # differ only along the outlines.
    dm = data()
    batch = next(iter(dm.test_dataloader()))
    outputs = {"masks": batch["masks"] * 0.8, "scores": torch.ones(4, 11)}
    sbd = {}
    for mode in ("bilinear", "bicubic", "nearest"):
        settings = PostProcess(blur=False, upsample=mode)
        slots = settings.slots(outputs["masks"], outputs["scores"], (256, 256))
        assert slots.shape == (4, 256, 256)
        evaluator = InstanceEvaluator(original_resolution=True, per_image=False)
        evaluator.setup(dm)
        evaluator.reset()
        evaluator.process(batch, outputs, settings)
        sbd[mode] = float(evaluator.evaluate()["sbd"])
    assert all(0.85 < v < 1 for v in sbd.values()), sbd
    assert len(set(sbd.values())) > 1, "the modes draw different outlines"
