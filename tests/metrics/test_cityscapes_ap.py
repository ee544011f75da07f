"""Cityscapes instance-level AP on 20x20 instanceIds maps with hand-computed expectations.

Background is road (label 7), which is not void, so a prediction on it is a plain false positive.
Instances are 10x10 = 100 px boxes unless said otherwise (exactly the minimum GT size).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recattend.metrics.cityscapes_ap import (
    CLASS_NAMES,
    OVERLAP_THRESHOLDS,
    CityscapesAP,
    average_precision,
    match_image,
)

ROAD, UNLABELED, PARKING = 7, 0, 9
PERSON, CAR = 24, 26
SIZE = 20

Pred = tuple[torch.Tensor, int, float]
Image = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def box(rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """(20, 20) bool mask, True on rows[0]:rows[1] x cols[0]:cols[1]."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# Four 100 px quadrants.
TOP_LEFT, TOP_RIGHT = box((0, 10), (0, 10)), box((0, 10), (10, 20))
BOTTOM_LEFT, BOTTOM_RIGHT = box((10, 20), (0, 10)), box((10, 20), (10, 20))


def gt_map(*regions: tuple[torch.Tensor, int]) -> torch.Tensor:
    """(20, 20) int32 instanceIds map: road everywhere, then each (mask, id) painted in order."""
    ids = torch.full((SIZE, SIZE), ROAD, dtype=torch.int32)
    for mask, region_id in regions:
        ids[mask] = region_id
    return ids


def image(gt: torch.Tensor, *preds: Pred) -> Image:
    """One image's (pred_masks, pred_labels, pred_scores, gt_ids) from (mask, label, score)s."""
    if not preds:
        empty = torch.zeros(0, SIZE, SIZE, dtype=torch.bool)
        return empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0), gt
    masks, labels, scores = zip(*preds, strict=True)
    return torch.stack(masks), torch.tensor(labels), torch.tensor(scores, dtype=torch.float64), gt


def update(metric: CityscapesAP, images: list[Image]) -> None:
    metric.update(*(list(column) for column in zip(*images, strict=True)))


def evaluate(*images: Image) -> dict[str, float]:
    """compute() after one update with all images, as plain floats."""
    metric = CityscapesAP()
    update(metric, list(images))
    return {key: value.item() for key, value in metric.compute().items()}


def records(img: Image) -> list[tuple[int, float, bool]]:
    """Sorted (threshold index, score, is_tp) records of one image."""
    m = match_image(*img)
    rows = zip(m.threshold_index.tolist(), m.score.tolist(), m.is_tp.tolist(), strict=True)
    return sorted(rows)


def at_every_threshold(*pairs: tuple[float, bool]) -> list[tuple[int, float, bool]]:
    return sorted((t, s, tp) for t in range(len(OVERLAP_THRESHOLDS)) for s, tp in pairs)


def assert_nan_except(out: dict[str, float], *names: str) -> None:
    for name in CLASS_NAMES:
        assert math.isnan(out[f"ap_{name}"]) == (name not in names), name


def test_thresholds_and_classes() -> None:
    assert OVERLAP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert CLASS_NAMES == (
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )


@pytest.mark.parametrize(
    ("scores", "is_tp", "num_gt", "expected"),
    [
        # Sorted by score: 0.7 T, 0.8 F, 0.9 T; N_gt = 2. Points (score >= s):
        #   s=0.7: 2 TP / 3 -> p0 = 2/3, r0 = 1;  s=0.8: 1/2 -> p1 = 1/2, r1 = 1/2;
        #   s=0.9: 1/1 -> p2 = 1, r2 = 1/2;  artificial closing point p3 = 1, r3 = 0.
        # Widths (r_{i-1} - r_{i+1}) / 2 with r_{-1} = r0, r4 = 0:
        #   w0 = (1 - 1/2)/2 = 1/4, w1 = (1 - 1/2)/2 = 1/4, w2 = (1/2 - 0)/2 = 1/4,
        #   w3 = (1/2 - 0)/2 = 1/4.
        # AP = (2/3 + 1/2 + 1 + 1) / 4 = 19/24 (COCO-style envelope would give 5/6).
        ([0.9, 0.8, 0.7], [True, False, True], 2, 19 / 24),
        # 0.8 F, 0.9 T; N_gt = 2: p0 = 1/2, r0 = 1/2; p1 = 1, r1 = 1/2; artificial p2 = 1, r2 = 0.
        # w0 = (1/2 - 1/2)/2 = 0, w1 = (1/2 - 0)/2 = 1/4, w2 = (1/2 - 0)/2 = 1/4. AP = 1/2.
        ([0.9, 0.8], [True, False], 2, 1 / 2),
        # 0.8 T, 0.9 F; N_gt = 2: p0 = 1/2, r0 = 1/2; p1 = 0, r1 = 0; artificial p2 = 1, r2 = 0.
        # w0 = (1/2 - 0)/2 = 1/4, w1 = (1/2 - 0)/2 = 1/4, w2 = (0 - 0)/2 = 0. AP = 1/2 * 1/4 = 1/8
        # (a plain sum of p * delta r would give 1/4).
        ([0.9, 0.8], [False, True], 2, 1 / 8),
        # Tied scores form one point: p0 = 1/2, r0 = 1; artificial p1 = 1, r1 = 0.
        # w0 = (1 - 0)/2 = 1/2, w1 = (1 - 0)/2 = 1/2. AP = 1/2 * 1/2 + 1 * 1/2 = 3/4
        # (repeating p0 at the artificial point would give 1/2).
        ([0.8, 0.8], [True, False], 1, 3 / 4),
        ([0.8, 0.8], [False, True], 1, 3 / 4),
        # One TP on one GT: p0 = 1, r0 = 1; artificial p1 = 1, r1 = 0; w0 = w1 = 1/2. AP = 1.
        ([0.3], [True], 1, 1.0),
        # Only FPs: every recall is 0. AP = 0.
        ([0.9, 0.4], [False, False], 3, 0.0),
        # GT but no prediction: AP = 0.
        ([], [], 2, 0.0),
    ],
)
def test_average_precision_step_rule_by_hand(
    scores: list[float], is_tp: list[bool], num_gt: int, expected: float
) -> None:
    ap = average_precision(
        torch.tensor(scores, dtype=torch.float64), torch.tensor(is_tp, dtype=torch.bool), num_gt
    )
    assert ap.dtype == torch.float64 and ap.shape == ()
    assert ap.item() == pytest.approx(expected)


def test_average_precision_without_gt_is_nan() -> None:
    assert math.isnan(average_precision(torch.tensor([0.5]), torch.tensor([False]), 0).item())


@pytest.mark.parametrize(
    ("scores", "is_tp", "num_gt", "expected", "repeated_last"),
    [
        # Tied top scores holding a TP and an FP: 1.0 T, 1.0 F, 0.5 T; N_gt = 2.
        # Points in ascending score (predictions with score >= s):
        #   s=0.5: 2 TP / 3 -> p0 = 2/3, r0 = 2/2 = 1;  s=1.0: 1 TP / 2 -> p1 = 1/2, r1 = 1/2;
        #   closing point p2 = 1, r2 = 0 (not p2 = p1 = 1/2).
        # Recall padded as [r0, r0, r1, r2, 0] = [1, 1, 1/2, 0, 0]; widths (r_{i-1} - r_{i+1}) / 2:
        #   w0 = (1 - 1/2)/2 = 1/4, w1 = (1 - 0)/2 = 1/2, w2 = (1/2 - 0)/2 = 1/4.
        # AP = 2/3 * 1/4 + 1/2 * 1/2 + 1 * 1/4 = 1/6 + 1/4 + 1/4 = 2/3 ≈ 0.667.
        # Repeating p1 = 1/2 at the closing point: 1/6 + 1/4 + 1/8 = 13/24 ≈ 0.542.
        ([1.0, 1.0, 0.5], [True, False, True], 2, 2 / 3, 13 / 24),
        # Everything scored 1 (one tied group): 2 TP + 1 FP; N_gt = 3.
        #   s=1.0: p0 = 2/3, r0 = 2/3; closing point p1 = 1, r1 = 0.
        #   Padded [2/3, 2/3, 0, 0]: w0 = (2/3 - 0)/2 = 1/3, w1 = (2/3 - 0)/2 = 1/3.
        # AP = 2/3 * 1/3 + 1 * 1/3 = 5/9 (repeated p0: 2/9 + 2/9 = 4/9).
        ([1.0, 1.0, 1.0], [True, True, False], 3, 5 / 9, 4 / 9),
        # 0.9 T, 0.9 F, 0.6 F, 0.4 T; N_gt = 3:
        #   s=0.4: 2/4 -> p0 = 1/2, r0 = 2/3;  s=0.6: 1/3 -> p1 = 1/3, r1 = 1/3;
        #   s=0.9: 1/2 -> p2 = 1/2, r2 = 1/3;  closing p3 = 1, r3 = 0.
        #   Padded [2/3, 2/3, 1/3, 1/3, 0, 0]: w0 = w1 = (2/3 - 1/3)/2 = 1/6, w2 = w3 = 1/6.
        # AP = (1/2 + 1/3 + 1/2 + 1) / 6 = 7/18 (repeated p2: (1/2 + 1/3 + 1/2 + 1/2) / 6 = 11/36).
        ([0.9, 0.9, 0.6, 0.4], [True, False, False, True], 3, 7 / 18, 11 / 36),
    ],
)
def test_curve_is_closed_with_precision_one_at_recall_zero(
    scores: list[float], is_tp: list[bool], num_gt: int, expected: float, repeated_last: float
) -> None:
    # The closing point differs from "repeat the last precision" exactly when the top score group
    # holds both a TP and an FP: the difference is (1 - p_top) * r_top / 2.
    assert expected - repeated_last > 0.05
    scores_t = torch.tensor(scores, dtype=torch.float64)
    is_tp_t = torch.tensor(is_tp, dtype=torch.bool)
    assert average_precision(scores_t, is_tp_t, num_gt).item() == pytest.approx(expected)
    # Tied predictions form one point: reversing the input order changes nothing.
    reversed_ap = average_precision(scores_t.flip(0), is_tp_t.flip(0), num_gt)
    assert reversed_ap.item() == pytest.approx(expected)


def test_tied_top_scores_in_an_image() -> None:
    # Two GT cars; a model scoring car 1 (TP) and a road box (FP) both 1.0, and car 2 at 0.5.
    # At every threshold the records are 1.0 T, 1.0 F, 0.5 T with N_gt = 2: AP = 2/3 (first case
    # of the closing-point test above), so ap = ap50 = ap_car = 2/3.
    gt = gt_map((TOP_LEFT, 26001), (BOTTOM_LEFT, 26002))
    img = image(gt, (TOP_LEFT, CAR, 1.0), (TOP_RIGHT, CAR, 1.0), (BOTTOM_LEFT, CAR, 0.5))
    assert records(img) == at_every_threshold((1.0, True), (1.0, False), (0.5, True))
    out = evaluate(img)
    assert out["ap"] == pytest.approx(2 / 3)
    assert out["ap50"] == pytest.approx(2 / 3)
    assert out["ap_car"] == pytest.approx(2 / 3)
    assert_nan_except(out, "car")


def test_perfect_prediction() -> None:
    gt = gt_map((TOP_LEFT, 26001), (BOTTOM_LEFT, 26002), (TOP_RIGHT, 24001))
    img = image(gt, (TOP_LEFT, CAR, 0.9), (BOTTOM_LEFT, CAR, 0.4), (TOP_RIGHT, PERSON, 0.7))
    out = evaluate(img)
    assert out["ap"] == 1.0 and out["ap50"] == 1.0
    assert out["ap_car"] == 1.0 and out["ap_person"] == 1.0
    assert_nan_except(out, "car", "person")
    m = match_image(*img)
    assert m.num_gt.tolist() == [1, 0, 2, 0, 0, 0, 0, 0]
    assert m.is_tp.all() and m.score.numel() == 3 * 10


def test_hand_integrated_image() -> None:
    # Two GT cars; A (0.9) = car 1, B (0.8) on road = FP, C (0.7) = car 2. At every threshold the
    # records are 0.9 T, 0.8 F, 0.7 T with N_gt = 2: AP = 19/24 (first step-rule case above).
    gt = gt_map((TOP_LEFT, 26001), (BOTTOM_LEFT, 26002))
    img = image(gt, (TOP_LEFT, CAR, 0.9), (TOP_RIGHT, CAR, 0.8), (BOTTOM_LEFT, CAR, 0.7))
    assert records(img) == at_every_threshold((0.9, True), (0.8, False), (0.7, True))
    out = evaluate(img)
    assert out["ap"] == pytest.approx(19 / 24)
    assert out["ap50"] == pytest.approx(19 / 24)
    assert out["ap_car"] == pytest.approx(19 / 24)


def test_iou_exactly_at_threshold_does_not_match() -> None:
    gt = gt_map((TOP_LEFT, 26001))
    # Car (100 px) plus 100 road px: IoU = 100 / 200 = 0.5, not > 0.5 -> FP at every threshold,
    # so AP50 = AP = 0 (one GT, no TP).
    exact = image(gt, (box((0, 10), (0, 20)), CAR, 0.9))
    assert records(exact) == at_every_threshold((0.9, False))
    out = evaluate(exact)
    assert out["ap50"] == 0.0 and out["ap"] == 0.0
    # Car plus 90 road px (10x19 box): IoU = 100 / 190 ≈ 0.526 > 0.5 but < 0.55: TP at 0.5 only.
    # AP50 = 1; AP = (1 + 9 * 0) / 10 = 0.1.
    above = image(gt, (box((0, 10), (0, 19)), CAR, 0.9))
    out = evaluate(above)
    assert out["ap50"] == 1.0
    assert out["ap"] == pytest.approx(0.1)


def test_iou_exactly_at_a_higher_threshold_does_not_match() -> None:
    # 80 of the car's 100 px: IoU = 80 / 100 = 0.8 exactly. TP at 0.5..0.75 (6 thresholds), FP at
    # 0.8 (not > 0.8) and above. AP = 6 / 10.
    out = evaluate(image(gt_map((TOP_LEFT, 26001)), (box((0, 8), (0, 10)), CAR, 0.9)))
    assert out["ap"] == pytest.approx(0.6) and out["ap50"] == 1.0


def test_duplicate_detection_lower_score_is_false_positive() -> None:
    gt = gt_map((TOP_LEFT, 26001))
    # Two identical perfect masks, the lower-scoring one listed first: it is the FP.
    img = image(gt, (TOP_LEFT, CAR, 0.6), (TOP_LEFT, CAR, 0.9))
    assert records(img) == at_every_threshold((0.9, True), (0.6, False))
    # Records 0.9 T, 0.6 F, N_gt = 1: p0 = 1/2, r0 = 1; p1 = 1, r1 = 1; artificial p2 = 1, r2 = 0.
    # w0 = (1 - 1)/2 = 0, w1 = (1 - 0)/2 = 1/2, w2 = (1 - 0)/2 = 1/2. AP = 1.
    assert evaluate(img)["ap"] == 1.0


def test_duplicate_with_higher_score_wins_while_it_matches() -> None:
    gt = gt_map((TOP_LEFT, 26001))
    # A: exact, score 0.6. B: 80 px of the car, IoU 0.8, score 0.9.
    # th 0.5..0.75: both match, B (higher score) is the TP, A an FP: records 0.9 T, 0.6 F -> AP 1.
    # th 0.8..0.95: B no longer matches; its pixels are on a normal car, so it is an FP; A is TP:
    #   records 0.9 F, 0.6 T, N_gt = 1: p0 = 1/2, r0 = 1; p1 = 0, r1 = 0; artificial p2 = 1,
    #   r2 = 0. w0 = (1 - 0)/2 = 1/2, w1 = (1 - 0)/2 = 1/2, w2 = (0 - 0)/2 = 0. AP = 1/4.
    # AP = (6 * 1 + 4 * 1/4) / 10 = 0.7; AP50 = 1.
    img = image(gt, (TOP_LEFT, CAR, 0.6), (box((0, 8), (0, 10)), CAR, 0.9))
    low = [(t, s, tp) for t in range(6) for s, tp in ((0.9, True), (0.6, False))]
    high = [(t, s, tp) for t in range(6, 10) for s, tp in ((0.9, False), (0.6, True))]
    assert records(img) == sorted(low + high)
    out = evaluate(img)
    assert out["ap"] == pytest.approx(0.7) and out["ap50"] == 1.0


def test_prediction_on_group_region_is_ignored() -> None:
    # Top left: a crowd of cars (id 26, no *1000). Bottom: one car and one person instance.
    gt = gt_map((TOP_LEFT, CAR), (BOTTOM_LEFT, 26001), (BOTTOM_RIGHT, 24001))
    img = image(
        gt,
        (BOTTOM_LEFT, CAR, 0.5),
        (BOTTOM_RIGHT, PERSON, 0.5),
        (TOP_LEFT, CAR, 0.9),  # car on the car crowd: ignored
        (TOP_LEFT, PERSON, 0.9),  # person on the car crowd: another class's group, an FP
    )
    m = match_image(*img)
    assert m.num_gt[CLASS_NAMES.index("car")] == 1  # the crowd is no GT instance
    out = evaluate(img)
    assert out["ap_car"] == 1.0
    # Person: records 0.9 F, 0.5 T with N_gt = 1 -> AP = 1/4 (as in the duplicate test above).
    assert out["ap_person"] == pytest.approx(1 / 4)
    # Control: the same car prediction on road is an FP, and car AP drops to 1/4 as well.
    on_road = image(gt, (BOTTOM_LEFT, CAR, 0.5), (TOP_RIGHT, CAR, 0.9))
    assert evaluate(on_road)["ap_car"] == pytest.approx(1 / 4)


def test_small_gt_instances_are_ignored() -> None:
    small = box((0, 9), (0, 11))  # 9 x 11 = 99 px < 100
    gt = gt_map((small, 26002), (BOTTOM_LEFT, 26001))
    # The small car is no GT instance: N_gt = 1.
    assert match_image(*image(gt)).num_gt[CLASS_NAMES.index("car")] == 1
    # Not counted in recall: finding the big car alone gives recall 1, AP = 1 (not 1/2).
    assert evaluate(image(gt, (BOTTOM_LEFT, CAR, 0.5)))["ap"] == 1.0
    # A higher-scoring prediction on the small car is ignored, not an FP (else AP = 1/4).
    img = image(gt, (BOTTOM_LEFT, CAR, 0.5), (small, CAR, 0.9))
    assert records(img) == at_every_threshold((0.5, True))
    assert evaluate(img)["ap"] == 1.0
    # An image whose only car is small has no car GT: car AP is nan, and so is the mean.
    out = evaluate(image(gt_map((small, 26001)), (small, CAR, 0.9)))
    assert math.isnan(out["ap_car"]) and math.isnan(out["ap"]) and math.isnan(out["ap50"])


def test_predictions_on_void_labels_are_ignored() -> None:
    # Top left unlabeled (0, void category), top right parking (9, ignoreInEval), bottom left car.
    gt = gt_map((TOP_LEFT, UNLABELED), (TOP_RIGHT, PARKING), (BOTTOM_LEFT, 26001))
    img = image(gt, (BOTTOM_LEFT, CAR, 0.5), (TOP_LEFT, CAR, 0.9), (TOP_RIGHT, CAR, 0.8))
    assert records(img) == at_every_threshold((0.5, True))
    assert evaluate(img)["ap"] == 1.0
    # Control: on road (bottom right) the same prediction is an FP: AP = 1/4.
    assert evaluate(image(gt, (BOTTOM_LEFT, CAR, 0.5), (BOTTOM_RIGHT, CAR, 0.9)))[
        "ap"
    ] == pytest.approx(1 / 4)


def test_ignore_fraction_must_exceed_the_threshold() -> None:
    # Car crowd on the top left; the prediction covers 60 px of it (cols 4..9) and 40 road px
    # (cols 10..13): ignore fraction 60 / 100 = 0.6. Ignored at 0.5 and 0.55 (0.6 > th); an FP
    # at 0.6 (0.6 is not > 0.6) and at every higher threshold.
    gt = gt_map((TOP_LEFT, CAR))
    img = image(gt, (box((0, 10), (4, 14)), CAR, 0.9))
    assert records(img) == [(t, 0.9, False) for t in range(2, 10)]


def test_small_group_region_counts_twice() -> None:
    # Official quirk: the loop over matched GT regions adds a group region's intersection once for
    # "group" and once more for "smaller than 100 px". Car crowd of 5 x 10 = 50 px; the prediction
    # has 30 px on it (cols 4..9) and 40 road px (cols 10..17), 70 px in all.
    # Ignore pixels = 30 + 30 = 60: fraction 60 / 70 ≈ 0.857 > th for th <= 0.85 (ignored), FP at
    # 0.9 and 0.95. Counted once, 30 / 70 ≈ 0.43 would be an FP at every threshold.
    gt = gt_map((box((0, 5), (0, 10)), CAR))
    img = image(gt, (box((0, 5), (4, 18)), CAR, 0.9))
    assert records(img) == [(8, 0.9, False), (9, 0.9, False)]


def test_classes_without_gt_are_skipped_in_the_mean() -> None:
    # Car found perfectly; a person prediction on road with no person GT anywhere: person AP is
    # nan and left out, so AP = 1 (not 1/2).
    gt = gt_map((TOP_LEFT, 26001))
    out = evaluate(image(gt, (TOP_LEFT, CAR, 0.9), (TOP_RIGHT, PERSON, 0.9)))
    assert out["ap"] == 1.0 and out["ap50"] == 1.0
    assert_nan_except(out, "car")
    # A class with GT but no prediction scores 0 and counts: car 1, person 0 -> AP = 1/2.
    gt = gt_map((TOP_LEFT, 26001), (BOTTOM_RIGHT, 24001))
    out = evaluate(image(gt, (TOP_LEFT, CAR, 0.9)))
    assert out["ap_person"] == 0.0 and out["ap"] == pytest.approx(1 / 2)
    assert_nan_except(out, "car", "person")


def test_unscored_predictions_are_skipped() -> None:
    # Road (7) and caravan (29) labels are not evaluated classes; an empty mask has no pixel.
    gt = gt_map((TOP_LEFT, 26001))
    img = image(
        gt,
        (TOP_RIGHT, ROAD, 0.9),
        (TOP_RIGHT, 29, 0.9),
        (torch.zeros(SIZE, SIZE, dtype=torch.bool), CAR, 0.9),
    )
    assert records(img) == []
    assert records(image(gt)) == []
    assert evaluate(img)["ap"] == 0.0


def dataset() -> list[Image]:
    """Five images covering the cases above."""
    cars = gt_map((TOP_LEFT, 26001), (BOTTOM_LEFT, 26002))
    crowd = gt_map((TOP_LEFT, CAR), (BOTTOM_LEFT, 26001), (BOTTOM_RIGHT, 24001))
    return [
        image(cars, (TOP_LEFT, CAR, 0.9), (TOP_RIGHT, CAR, 0.8), (BOTTOM_LEFT, CAR, 0.7)),
        image(gt_map((TOP_LEFT, 26001)), (TOP_LEFT, CAR, 0.6), (box((0, 8), (0, 10)), CAR, 0.95)),
        image(crowd, (BOTTOM_LEFT, CAR, 0.5), (TOP_LEFT, PERSON, 0.85), (TOP_LEFT, CAR, 0.99)),
        image(gt_map((TOP_RIGHT, 24001))),
        image(gt_map((TOP_LEFT, 33001)), (box((0, 10), (0, 19)), 33, 0.3)),
    ]


def test_two_updates_equal_one_combined_update() -> None:
    images = dataset()
    split = CityscapesAP()
    update(split, images[:2])
    update(split, images[2:])
    combined = evaluate(*images)
    got = {key: value.item() for key, value in split.compute().items()}
    assert got == pytest.approx(combined, nan_ok=True)
    # Not a trivial result: several classes with GT and AP strictly between 0 and 1.
    assert 0 < combined["ap"] < 1 and 0 < combined["ap50"] < 1
    assert_nan_except(combined, "car", "person", "bicycle")


def _ddp_worker(rank: int, world_size: int, folder) -> None:
    init_method = f"file://{folder / 'process_group'}"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        images = dataset()
        # Uneven shards (3 + 2 images; rank 1 has an image without predictions).
        shard = images[:3] if rank == 0 else images[3:]
        metric = CityscapesAP()
        update(metric, shard)
        got = {key: value.item() for key, value in metric.compute().items()}
        (folder / f"rank{rank}.json").write_text(json.dumps(got))  # nan survives as NaN
    finally:
        # Gloo threads still alive at interpreter exit abort the process: sync, then tear down.
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path) -> None:
    mp.spawn(_ddp_worker, args=(2, tmp_path), nprocs=2, join=True)
    expected = evaluate(*dataset())
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(expected, nan_ok=True), (rank, got, expected)


def test_inputs_are_validated() -> None:
    gt = gt_map((TOP_LEFT, 26001))
    masks, labels, scores, _ = image(gt, (TOP_LEFT, CAR, 0.9))
    with pytest.raises(ValueError, match="bool"):
        match_image(masks.float(), labels, scores, gt)  # soft masks are not instance masks
    with pytest.raises(ValueError, match="differ in size"):
        match_image(masks[:, :10], labels, scores, gt)
    with pytest.raises(ValueError, match="pred_scores"):
        match_image(masks, labels, scores[:0], gt)
    with pytest.raises(ValueError, match="one entry per image"):
        CityscapesAP().update([masks], [labels], [scores], [])
