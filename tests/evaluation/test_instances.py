"""InstanceEvaluator on hand-made batches: every metric, per_image.csv, original resolution, export.

The label maps are those of the metric tests (tests/metrics/labels.py, 4x4, four pixels a column):
GT_TWO has instance 1 on columns 0..2 (12 px) and instance 2 on column 3 (4 px).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recattend.evaluation import InstanceEvaluator, gt_label_map, pixel_area
from tests.evaluation.fakes import FakePostProcess, FileData, make_batch
from tests.metrics.labels import GT_TWO, columns

KEYS = {
    f"{name}{suffix}"
    for name in ("sbd", "dic", "abs_dic", "sbd_recattend", "fg_dice", "mwcov", "mucov", "fp", "fn")
    for suffix in ("", "_std")
} | {"mask_ap", "mask_ap50"}


def values(evaluator: InstanceEvaluator) -> dict[str, float]:
    out = evaluator.evaluate()
    assert set(out) == KEYS
    return {k: float(v) for k, v in out.items()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def network_batch():
    # Image "b": both instances merged into one prediction (all 16 px); image "a": perfect, but
    # its true count is 3 (the batch kept 2 of them), and its original is 8x8 (4 px per pixel).
    return make_batch(
        targets=[GT_TWO, GT_TWO],
        preds=[columns(1, 1, 1, 1), GT_TWO],
        scores=[[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]],
        metas=[{"id": "b"}, {"id": "a", "orig_size": (8, 8)}],
        num_instances=[2, 3],
    )


def test_network_resolution_scores_every_metric_and_writes_rows(tmp_path: Path) -> None:
    evaluator = InstanceEvaluator(original_resolution=False, per_image=True)
    evaluator.setup(None, tmp_path)
    evaluator.reset()
    postprocess = FakePostProcess()
    evaluator.process(*network_batch(), postprocess)
    # One call for the batch, at network resolution, with each image's original pixels per pixel.
    [call] = postprocess.calls
    assert call["images"] == 2 and call["size"] is None
    torch.testing.assert_close(call["pixel_area"], torch.tensor([1.0, 4.0]))

    got = values(evaluator)
    # b: SBD = min(BD(P, G), BD(G, P)) = min(6/7, (6/7 + 2/5) / 2 = 22/35) = 22/35; a: 1.
    # DiC uses the batch's true counts: b 1 - 2 = -1, a 2 - 3 = -1.
    # rec-attend SBD of b: outputs -> GT 6/7, GT -> outputs 6/7 + 2/5 = 44/35, min / 2 = 3/7.
    # Coverage of b: MUCov (3/4 + 1/4) / 2 = 1/2, MWCov (12/16)(3/4) + (4/16)(1/4) = 5/8.
    # Mask AP, 4 GT instances: b's one prediction (0.9) has IoU 12/16 with its first, a TP up to
    # th 0.70; a's two (0.9, 0.8) are exact. th <= 0.70: p = (1, 1) at r = (3/4, 1/2), widths
    # (1/8, 3/8, 1/4) with the closing point: AP 3/4. th >= 0.75: p = (2/3, 1/2) at r = (1/2, 1/4),
    # widths (1/8, 1/4, 1/8): AP 1/12 + 1/8 + 1/8 = 1/3. Mean: (3/4 + 1/3) / 2 = 13/24.
    expected = {
        "sbd": 57 / 70, "sbd_std": 13 / 70,
        "dic": -1, "dic_std": 0, "abs_dic": 1, "abs_dic_std": 0,
        "sbd_recattend": 5 / 7, "sbd_recattend_std": 2 / 7,
        "fg_dice": 1, "fg_dice_std": 0,
        "mwcov": 13 / 16, "mwcov_std": 3 / 16, "mucov": 3 / 4, "mucov_std": 1 / 4,
        "fp": 0, "fp_std": 0, "fn": 0, "fn_std": 0,
        "mask_ap": 13 / 24, "mask_ap50": 3 / 4,
    }  # fmt: skip
    assert got == pytest.approx(expected, abs=1e-6)

    rows = read_csv(tmp_path / "per_image.csv")
    assert [r["id"] for r in rows] == ["a", "b"]  # sorted by id, not in batch order
    assert list(rows[0]) == [
        "id", "height", "width", "sbd", "sbd_recattend", "fg_dice", "pred_count", "gt_count",
        "mwcov", "mucov", "fp", "fn",
    ]  # fmt: skip
    a, b = rows
    assert (a["height"], a["width"], a["pred_count"], a["gt_count"]) == ("4", "4", "2", "3")
    assert (a["sbd"], a["mwcov"], a["fp"], a["fn"]) == ("1.0", "1.0", "0.0", "0.0")
    assert (b["pred_count"], b["gt_count"], b["mucov"], b["mwcov"]) == ("1", "2", "0.5", "0.625")
    assert float(b["sbd"]) == pytest.approx(22 / 35)
    assert float(b["sbd_recattend"]) == pytest.approx(3 / 7)


def test_reset_forgets_the_previous_epoch(tmp_path: Path) -> None:
    evaluator = InstanceEvaluator(original_resolution=False, per_image=True)
    evaluator.setup(None, tmp_path)
    evaluator.reset()
    evaluator.process(*network_batch(), FakePostProcess())
    assert values(evaluator)["sbd"] == pytest.approx(57 / 70)
    evaluator.reset()
    perfect = make_batch([GT_TWO], [GT_TWO], [[0.9, 0.8, 0.1]], [{"id": "c"}])
    evaluator.process(*perfect, FakePostProcess())
    got = values(evaluator)
    assert (got["sbd"], got["sbd_std"], got["dic"]) == (1.0, 0.0, 0.0)
    assert [r["id"] for r in read_csv(tmp_path / "per_image.csv")] == ["c"]


def test_without_per_image_or_folder_no_csv(tmp_path: Path) -> None:
    for evaluator, folder in (
        (InstanceEvaluator(original_resolution=False, per_image=False), tmp_path),
        (InstanceEvaluator(original_resolution=False, per_image=True), None),
    ):
        evaluator.setup(None, folder)
        evaluator.reset()
        evaluator.process(*network_batch(), FakePostProcess())
        evaluator.evaluate()
    assert not (tmp_path / "per_image.csv").exists()


def original_data() -> FileData:
    """8x8 originals: "p1" has three instances where the batch (4x4) shows two: columns 0..5,
    then columns 6..7 split into rows 0..3 and 4..7; "p2" is GT_TWO upsampled."""
    p1 = np.zeros((8, 8), np.int64)
    p1[:, :6], p1[:4, 6:], p1[4:, 6:] = 1, 2, 3
    p2 = np.kron(GT_TWO.numpy(), np.ones((2, 2), np.int64))
    return FileData({"p1": p1, "p2": p2})


def original_batch():
    # Both predict GT_TWO at 4x4, i.e. columns 0..5 and 6..7 at 8x8.
    metas = [{"id": "p1", "orig_size": (8, 8)}, {"id": "p2", "orig_size": (8, 8)}]
    return make_batch([GT_TWO, GT_TWO], [GT_TWO, GT_TWO], [[0.75, 0.5, 0.0]] * 2, metas)


def test_original_resolution_reads_the_ground_truth_again(tmp_path: Path) -> None:
    data = original_data()
    evaluator = InstanceEvaluator(original_resolution=True, per_image=True)
    evaluator.setup(data, tmp_path)
    evaluator.reset()
    postprocess = FakePostProcess()
    evaluator.process(*original_batch(), postprocess)
    assert data.read == ["p1", "p2"]
    # One image at a time, post-processed at its original size, min_size in original pixels.
    assert [(c["images"], c["size"], c["pixel_area"]) for c in postprocess.calls] == [
        (1, (8, 8), 1.0),
        (1, (8, 8), 1.0),
    ]
    got = values(evaluator)
    # p1: P1 = G1 (48 px); P2 (16 px) covers G2 and G3 (8 px each): Dice 2*8/24 = 2/3, IoU 1/2.
    # SBD = min((1 + 2/3) / 2, (1 + 2/3 + 2/3) / 3) = 7/9; DiC 2 - 3 = -1 (counted at 8x8).
    # rec-attend: outputs -> GT (1 + 2/3), GT -> outputs 7/3, min / 3 = 5/9.
    # MUCov (1 + 1/2 + 1/2) / 3 = 2/3; MWCov (48 + 4 + 4) / 64 = 7/8. p2 scores 1 (DiC 0).
    # Mask AP, 5 GT instances, the same at every threshold: P2 of p1 (0.5, IoU 1/2 at best) is an
    # FP, the other three exact TPs (0.75, 0.75, 0.5): p = (3/4, 1) at r = (3/5, 2/5), widths
    # (1/10, 3/10, 1/5) with the closing point: AP 3/40 + 3/10 + 1/5 = 23/40.
    assert got == pytest.approx(
        {
            **{k: got[k] for k in KEYS if k.endswith("_std")},
            "sbd": 8 / 9, "dic": -0.5, "abs_dic": 0.5, "sbd_recattend": 7 / 9, "fg_dice": 1,
            "mwcov": 15 / 16, "mucov": 5 / 6, "fp": 0, "fn": 0,
            "mask_ap": 23 / 40, "mask_ap50": 23 / 40,
        }, abs=1e-6,
    )  # fmt: skip
    assert got["sbd_std"] == pytest.approx(1 / 9) and got["dic_std"] == 0.5
    p1 = read_csv(tmp_path / "per_image.csv")[0]
    assert (p1["id"], p1["height"], p1["width"], p1["gt_count"], p1["pred_count"]) == (
        "p1", "8", "8", "3", "2",
    )  # fmt: skip


def test_export_writes_each_label_map_as_png(tmp_path: Path) -> None:
    evaluator = InstanceEvaluator(original_resolution=True, per_image=False)
    evaluator.setup(original_data(), tmp_path, export=True)
    evaluator.reset()
    evaluator.process(*original_batch(), FakePostProcess())
    expected = np.kron(GT_TWO.numpy(), np.ones((2, 2), np.int64))
    for stem in ("p1", "p2"):
        with Image.open(tmp_path / "predictions" / "labels" / f"{stem}.png") as png:
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), expected)
    evaluator.evaluate()
    assert not (tmp_path / "per_image.csv").exists()
    # At network resolution the maps are the network's (generated data: its own size).
    evaluator = InstanceEvaluator(original_resolution=False, per_image=False)
    evaluator.setup(None, tmp_path / "net", export=True)
    evaluator.process(*network_batch(), FakePostProcess())
    with Image.open(tmp_path / "net" / "predictions" / "labels" / "b.png") as png:
        np.testing.assert_array_equal(np.asarray(png), np.ones((4, 4)))


def test_setup_refuses_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no original_target"):
        InstanceEvaluator(original_resolution=True, per_image=True).setup(object(), tmp_path)
    with pytest.raises(ValueError, match="export=true needs an output folder"):
        InstanceEvaluator(original_resolution=False, per_image=False).setup(None, None, export=True)


def test_gt_label_map_and_pixel_area() -> None:
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0] = 1  # top row: slot 0
    masks[0, 2, :, 1] = 1  # right column: slot 2, over slot 0 where they overlap
    labels = gt_label_map(masks)
    assert labels.dtype == torch.int64 and labels.tolist() == [[[1, 3], [0, 3]]]
    batch = {"image": torch.zeros(2, 3, 4, 5), "meta": [{"orig_size": (8, 15)}, {}]}
    torch.testing.assert_close(pixel_area(batch), torch.tensor([6.0, 1.0]))
