"""CocoEvaluator on the COCO fixture: instance metrics, results per image, segm AP, export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from recattend.data import COCODataModule
from recattend.data.fixtures import write_coco
from recattend.evaluation import CocoEvaluator
from tests.evaluation.fakes import FakePostProcess, FileData, make_batch


def datamodule(tmp_path: Path, categories: tuple[str, ...] = ("zebra",)) -> COCODataModule:
    # Images 1000 and 1001 have two zebras each (a square and a blob); 1002 only a giraffe, so
    # it is not a test image. Zebra is category 24.
    write_coco(tmp_path / "coco", "val2017", images=3, size=(60, 80))
    data = COCODataModule(
        root=tmp_path / "coco", categories=categories, resolution=[60, 80], max_instances=3,
        batch_size=2, num_workers=0,
    )  # fmt: skip
    data.setup("test")
    return data


def batch(data: COCODataModule, keep: tuple[int, int] = (2, 1)):
    """Both test images; image i predicts its first keep[i] zebras exactly (scores 0.75, 0.5)."""
    metas = [data.datasets["test"].source[i].meta for i in range(2)]
    preds = []
    for meta, k in zip(metas, keep, strict=True):
        labels = torch.from_numpy(data.original_target(meta)).long()
        preds.append(torch.where(labels <= k, labels, 0))
    return make_batch(preds, preds, [[0.75, 0.5, 0.0]] * 2, metas)


def test_the_datamodule_gives_what_the_evaluator_reads(tmp_path: Path) -> None:
    data = datamodule(tmp_path)
    assert data.annotation_file("test") == tmp_path / "coco/annotations/instances_val2017.json"
    assert data.category_ids == [24]
    assert data.image_ids("test") == {1000, 1001}


def test_results_per_image_and_segm_ap(tmp_path: Path) -> None:
    data = datamodule(tmp_path)
    evaluator = CocoEvaluator()
    evaluator.setup(data, tmp_path, export=True)
    evaluator.reset()
    evaluator.process(*batch(data), FakePostProcess())
    got = {k: float(v) for k, v in evaluator.evaluate().items()}
    # 1000: both zebras, SBD 1; 1001: one of two, SBD min(1, (1 + 0) / 2) = 1/2; DiC 0 and -1.
    assert (got["sbd"], got["dic"]) == (0.75, -0.5)
    # 3 of the 4 zebras found exactly, no false positive: precision 1 up to recall 3/4, then
    # nothing, so the 101-point AP is 76/101 at every IoU threshold; AR100 = 3/4.
    assert got["ap"] == pytest.approx(76 / 101) and got["ap50"] == pytest.approx(76 / 101)
    assert got["ap75"] == pytest.approx(76 / 101) and got["ar100"] == pytest.approx(0.75)

    results = json.loads((tmp_path / "predictions" / "coco_results.json").read_text())
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [
        (1000, 24, 0.75), (1000, 24, 0.5), (1001, 24, 0.75),
    ]  # fmt: skip
    assert set(results[0]["segmentation"]) == {"size", "counts"}
    assert results[0]["segmentation"]["size"] == [60, 80]
    assert len(list((tmp_path / "predictions" / "labels").glob("*.png"))) == 2


def test_no_detection_is_ap_zero_and_reset_forgets(tmp_path: Path) -> None:
    data = datamodule(tmp_path)
    evaluator = CocoEvaluator(per_image=False)
    evaluator.setup(data, tmp_path)
    evaluator.process(*batch(data), FakePostProcess())
    assert len(evaluator.detections) == 3
    evaluator.reset()
    assert evaluator.detections == []
    evaluator.process(*batch(data, keep=(0, 0)), FakePostProcess())
    got = evaluator.evaluate()
    assert {k: got[k] for k in ("ap", "ap50", "ap75", "ar100")} == dict.fromkeys(
        ("ap", "ap50", "ap75", "ar100"), 0.0
    )
    assert float(got["sbd"]) == 0.0
    assert not (tmp_path / "predictions").exists()  # no export asked


def test_several_categories_compute_no_ap(tmp_path: Path, caplog) -> None:
    data = datamodule(tmp_path, categories=("zebra", "giraffe"))
    evaluator = CocoEvaluator()
    evaluator.setup(data)
    evaluator.process(*batch(data), FakePostProcess())
    with caplog.at_level(logging.WARNING):
        got = evaluator.evaluate()
    assert "sbd" in got and "ap" not in got
    assert "COCO AP needs one category" in caplog.text


def test_setup_needs_the_annotation_accessors() -> None:
    with pytest.raises(ValueError, match="annotation_file"):
        CocoEvaluator().setup(FileData({}))
