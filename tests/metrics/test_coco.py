"""COCO segm AP through pycocotools on a fixture written in COCO's JSON schema."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from recattend.data.fixtures import write_coco
from recattend.evaluation.export import coco_results
from recattend.metrics.coco import coco_segm_ap


def _ground_truth(tmp_path: Path) -> tuple[COCO, dict]:
    truth = write_coco(tmp_path, "val2017", images=2)  # two images, two zebras each
    return COCO(str(tmp_path / "annotations" / "instances_val2017.json")), truth


def _results(truth: dict, keep: int = 2) -> list[dict]:
    entries = []
    for image_id, (masks, _) in truth.items():
        labels = np.zeros(masks.shape[1:], np.int64)
        for k, mask in enumerate(masks[:keep], start=1):
            labels[mask] = k
        entries += coco_results(labels, [0.9, 0.8], int(image_id), category_id=24)
    return entries


def test_perfect_results_score_one(tmp_path: Path) -> None:
    gt, truth = _ground_truth(tmp_path)
    results = _results(truth)
    scores = coco_segm_ap(gt, results, [1000, 1001], [24])
    assert scores == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ar100": 1.0}
    assert "area" not in results[0]  # loadRes worked on copies


def test_half_the_instances_found(tmp_path: Path) -> None:
    # One of two zebras per image, perfectly: precision 1 up to recall 0.5, then nothing, so the
    # 101-point interpolated AP is 51/101 at every IoU threshold; AR100 = 0.5.
    gt, truth = _ground_truth(tmp_path)
    scores = coco_segm_ap(gt, _results(truth, keep=1), [1000, 1001], [24])
    assert math.isclose(scores["ap"], 51 / 101, rel_tol=1e-6)
    assert math.isclose(scores["ar100"], 0.5, rel_tol=1e-6)


def test_no_results_is_zero(tmp_path: Path) -> None:
    gt, _ = _ground_truth(tmp_path)
    assert coco_segm_ap(gt, [], [1000, 1001], [24])["ap"] == 0.0
