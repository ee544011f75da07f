"""CityscapesEvaluator: instance metrics, Cityscapes AP from classes, official result files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recattend.data.cityscapes import label_ids
from recattend.evaluation import CityscapesEvaluator
from tests.evaluation.fakes import CityscapesData, FakePostProcess, FileData, make_batch
from tests.metrics.labels import columns

STEM = "frankfurt_000000_000019"


def data() -> CityscapesData:
    """A 20x20 original: a car (26000) on columns 0..9 and a person (24000) on 10..19, 200 px
    each (Cityscapes AP counts GT instances of at least 100 px)."""
    ids = np.full((20, 20), 26000, np.int64)
    ids[:, 10:] = 24000
    return CityscapesData({STEM: (ids // 1000 == 24) + 1}, {STEM: ids})


def batch():
    # Prediction at 4x4: columns 0..1 -> instance 1 (s 0.75), 2..3 -> 2 (s 0.5); x5 at 20x20.
    pred = columns(1, 1, 2, 2)
    return make_batch([pred], [pred], [[0.75, 0.5, 0.0]], [{"id": STEM, "orig_size": (20, 20)}])


def test_classes_give_cityscapes_ap_and_the_official_result_files(tmp_path: Path) -> None:
    evaluator = CityscapesEvaluator()
    evaluator.setup(data(), tmp_path, export=True)
    evaluator.reset()
    # Both instances classified car (train id 3 -> label id 26): the car is found (TP at 0.75),
    # the second "car" lies on the person (IoU 0 with the car, nothing ignored there: FP at 0.5).
    evaluator.process(*batch(), FakePostProcess(classes=[3, 3]))
    got = {k: float(v) for k, v in evaluator.evaluate().items()}
    # The labels themselves are perfect.
    assert got["sbd"] == 1.0 and got["dic"] == 0.0 and got["mwcov"] == 1.0
    # Car, one GT: scores 0.5 (p 1/2, r 1) and 0.75 (p 1, r 1), closed by p 1 at r 0:
    # AP = 1/2 (1 - 1)/2 + 1 (1 - 0)/2 + 1 (1 - 0)/2 = 1 at every threshold. Person: one GT,
    # no prediction: 0. Classes without GT are nan and left out of the mean: AP = (1 + 0) / 2.
    assert (got["ap"], got["ap50"], got["ap_car"], got["ap_person"]) == (0.5, 0.5, 1.0, 0.0)
    assert math.isnan(got["ap_rider"]) and math.isnan(got["ap_bicycle"])

    folder = tmp_path / "predictions" / "cityscapes"
    assert (folder / f"{STEM}_pred.txt").read_text().splitlines() == [
        f"masks/{STEM}_001.png 26 0.75",
        f"masks/{STEM}_002.png 26 0.5",
    ]
    with Image.open(folder / "masks" / f"{STEM}_002.png") as png:
        mask = np.asarray(png)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask[:, 10:] == 255).all() and (mask[:, :10] == 0).all()
    assert (tmp_path / "predictions" / "labels" / f"{STEM}.png").is_file()
    assert (tmp_path / "per_image.csv").is_file()


def test_without_classes_no_ap_and_no_result_files(tmp_path: Path) -> None:
    evaluator = CityscapesEvaluator(per_image=False)
    evaluator.setup(data(), tmp_path, export=True)
    evaluator.reset()
    evaluator.process(*batch(), FakePostProcess())
    got = evaluator.evaluate()
    assert got["sbd"] == 1.0 and not any(k.startswith("ap") for k in got)
    assert not (tmp_path / "predictions" / "cityscapes").exists()
    assert not (tmp_path / "per_image.csv").exists()


def test_reset_clears_the_ap() -> None:
    evaluator = CityscapesEvaluator()
    evaluator.setup(data())
    evaluator.process(*batch(), FakePostProcess(classes=[3, 1]))  # perfect: car and person
    assert float(evaluator.evaluate()["ap"]) == 1.0
    evaluator.reset()
    evaluator.process(*batch(), FakePostProcess())
    assert "ap" not in evaluator.evaluate()


def test_setup_needs_the_instance_ids() -> None:
    with pytest.raises(ValueError, match="original_instance_ids"):
        CityscapesEvaluator().setup(FileData({}))


def test_label_ids_map_train_ids_to_official_label_ids() -> None:
    train_ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=torch.int32)
    assert label_ids(train_ids).tolist() == [[0, 24, 25, 26], [27, 28, 31, 32]]
    assert label_ids(torch.tensor([8])).dtype == torch.int64
