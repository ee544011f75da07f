"""Official CVPPP SBD and DiC on 4x4 label maps with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch

from recattend.metrics import (
    DifferenceInCount,
    SymmetricBestDice,
    instance_overlaps,
    symmetric_best_dice,
)
from recattend.metrics.cvppp import ForegroundDice, RecAttendSBD, recattend_sbd
from tests.metrics.labels import (
    EMPTY,
    GT_ONE,
    GT_TWO,
    columns,
    ddp_and_single_process_values,
)


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """SBD and DiC of a (B, H, W) batch in one update, as plain floats."""
    sbd, dic = SymmetricBestDice(), DifferenceInCount()
    sbd.update(pred, target)
    dic.update(pred, target)
    return {k: v.item() for k, v in (sbd.compute() | dic.compute()).items()}


def one(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return scores(pred[None], target[None])


def test_instance_overlaps_counts_and_ratios() -> None:
    # Pixels (pred, target): (1, 1), (1, 0), (3, 3), (0, 3). Ids 2 are absent on both sides, so
    # instance 2 is empty: zero row and zero column.
    # Intersections: |p1 ∩ g1| = 1, |p3 ∩ g3| = 1, all others 0.
    # Areas: p = [2, 0, 1], g = [1, 0, 2].
    pred = torch.tensor([[1, 1, 3, 0]])
    target = torch.tensor([[1, 0, 3, 3]])
    ov = instance_overlaps(pred, target)
    assert ov.intersection.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert ov.pred_area.tolist() == [2, 0, 1] and ov.target_area.tolist() == [1, 0, 2]
    # Dice(p1, g1) = 2*1 / (2+1) = 2/3; Dice(p3, g3) = 2*1 / (1+2) = 2/3;
    # Dice(p2, g2) = 0 / (0+0) := 0; Dice(p1, g3) = 0 / (2+2) = 0.
    d = 2 / 3
    torch.testing.assert_close(ov.dice(), torch.tensor([[d, 0, 0], [0, 0, 0], [0, 0, d]]))
    # IoU(p1, g1) = 1 / (2+1-1) = 1/2; IoU(p3, g3) = 1 / (1+2-1) = 1/2; IoU(p2, g2) = 0/0 := 0.
    h = 1 / 2
    torch.testing.assert_close(ov.iou(), torch.tensor([[h, 0, 0], [0, 0, 0], [0, 0, h]]))


def test_perfect_prediction() -> None:
    # Every instance matches itself: Dice 1 both ways, SBD = 1; 2 - 2 = 0 instances off.
    assert one(GT_TWO, GT_TWO) == pytest.approx(
        {"sbd": 1, "sbd_std": 0, "dic": 0, "dic_std": 0, "abs_dic": 0, "abs_dic_std": 0}
    )


def test_two_instances_merged_into_one() -> None:
    # Prediction: one instance p on all 16 px.
    # Dice(p, g1) = 2*12 / (16+12) = 24/28 = 6/7; Dice(p, g2) = 2*4 / (16+4) = 8/20 = 2/5.
    # BD(pred, gt) = max(6/7, 2/5) = 6/7 (one predicted instance).
    # BD(gt, pred) = (6/7 + 2/5) / 2 = (30/35 + 14/35) / 2 = 22/35.
    # SBD = min(6/7, 22/35) = 22/35 ≈ 0.6286; DiC = 1 - 2 = -1, |DiC| = 1.
    out = one(columns(1, 1, 1, 1), GT_TWO)
    assert out["sbd"] == pytest.approx(22 / 35)
    assert (out["dic"], out["abs_dic"]) == (-1, 1)


def test_dropped_instance() -> None:
    # Prediction finds g1 exactly and misses g2.
    # BD(pred, gt) = Dice(p1, g1) = 1; BD(gt, pred) = (1 + 0) / 2 = 1/2; SBD = 1/2.
    # DiC = 1 - 2 = -1.
    out = one(GT_ONE, GT_TWO)
    assert out["sbd"] == pytest.approx(1 / 2)
    assert (out["dic"], out["abs_dic"]) == (-1, 1)


def test_extra_false_positive() -> None:
    # Prediction: p1 = g1 exactly, plus p2 on column 3, which is background in the GT.
    # BD(pred, gt) = (Dice(p1, g1) + Dice(p2, g1)) / 2 = (1 + 0) / 2 = 1/2; BD(gt, pred) = 1.
    # SBD = 1/2; DiC = 2 - 1 = +1.
    out = one(columns(1, 1, 1, 2), GT_ONE)
    assert out["sbd"] == pytest.approx(1 / 2)
    assert (out["dic"], out["abs_dic"]) == (1, 1)


def test_empty_prediction() -> None:
    # BD(pred, gt) = 0 (pred has no instance) -> SBD = 0; DiC = 0 - 2 = -2, |DiC| = 2.
    out = one(EMPTY, GT_TWO)
    assert out["sbd"] == 0
    assert (out["dic"], out["abs_dic"]) == (-2, 2)


def test_empty_ground_truth() -> None:
    # Literal official definition: BD(gt, pred) = 0 when the GT has no instance, so SBD = 0 even
    # for the (correct) empty prediction, and for any non-empty one. DiC = 0 - 0 = 0 and 1 - 0 = 1.
    out = one(EMPTY, EMPTY)
    assert out["sbd"] == 0 and out["dic"] == 0
    out = one(GT_ONE, EMPTY)
    assert out["sbd"] == 0 and out["dic"] == 1


@pytest.mark.parametrize(
    ("pred", "target", "sbd", "dic"),
    [
        # Merged case with pred id 7 instead of 1: SBD 22/35, DiC -1 as above.
        (columns(7, 7, 7, 7), GT_TWO, 22 / 35, -1),
        # Dropped case with pred id 9 and GT ids offset by +100: SBD 1/2, DiC -1.
        (columns(9, 9, 9, 0), columns(101, 101, 101, 102), 1 / 2, -1),
        # False-positive case with pred ids {0, 7, 9} and GT id 100: SBD 1/2, DiC +1.
        (columns(7, 7, 7, 9), GT_ONE * 100, 1 / 2, 1),
    ],
)
def test_gaps_and_offsets_in_ids_do_not_change_scores(
    pred: torch.Tensor, target: torch.Tensor, sbd: float, dic: int
) -> None:
    # Without renumbering, the absent ids 1..6 and 8 of pred {0, 7, 9} would count as empty
    # instances: BD(pred, gt) = (1 + 0) / 9 instead of (1 + 0) / 2 in the third case.
    out = one(pred, target)
    assert out["sbd"] == pytest.approx(sbd)
    assert out["dic"] == dic


def test_mean_and_population_std_over_images() -> None:
    # Images: perfect (SBD 1, DiC 0), dropped (1/2, -1), empty prediction (0, -2).
    # SBD: mean = (1 + 1/2 + 0) / 3 = 1/2; std = sqrt(((1/2)^2 + 0^2 + (1/2)^2) / 3) = sqrt(1/6).
    # DiC: mean = (0 - 1 - 2) / 3 = -1; std = sqrt((1 + 0 + 1) / 3) = sqrt(2/3).
    # |DiC|: values 0, 1, 2: mean 1, std sqrt(2/3).
    pred = torch.stack([GT_TWO, GT_ONE, EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO])
    assert scores(pred, target) == pytest.approx(
        {
            "sbd": 1 / 2,
            "sbd_std": math.sqrt(1 / 6),
            "dic": -1,
            "dic_std": math.sqrt(2 / 3),
            "abs_dic": 1,
            "abs_dic_std": math.sqrt(2 / 3),
        }
    )


def test_two_updates_equal_one_concatenated_update() -> None:
    pred = torch.stack([GT_TWO, columns(1, 1, 1, 1), GT_ONE, EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, EMPTY])
    sbd, dic = SymmetricBestDice(), DifferenceInCount()
    for metric in (sbd, dic):
        metric.update(pred[:1], target[:1])
        metric.update(pred[1:], target[1:])
    accumulated = {k: v.item() for k, v in (sbd.compute() | dic.compute()).items()}
    assert accumulated == pytest.approx(scores(pred, target))


def test_symmetric_best_dice_is_symmetric() -> None:
    # min(BD(a, b), BD(b, a)) does not depend on which map is called the prediction.
    pred, target = columns(1, 1, 1, 1), GT_TWO
    assert symmetric_best_dice(pred, target) == symmetric_best_dice(target, pred)


def test_update_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        SymmetricBestDice().update(GT_TWO, GT_TWO)  # (H, W) without the batch dimension
    with pytest.raises(ValueError, match="integer"):
        DifferenceInCount().update(GT_TWO[None].float(), GT_TWO[None])


def _all_cvppp_metrics() -> tuple:
    return (SymmetricBestDice(), DifferenceInCount(), RecAttendSBD(), ForegroundDice())


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path) -> None:
    ranks, expected = ddp_and_single_process_values(_all_cvppp_metrics, tmp_path)
    for got in ranks:
        assert got == pytest.approx(expected)


def test_dic_counts_the_true_number_of_instances_when_given() -> None:
    # The label map holds 2 instances (truncated), the image had 5: DiC = 2 - 5 = -3, not 0.
    labels = torch.tensor([[[0, 1], [2, 2]]])
    metric = DifferenceInCount()
    metric.update(labels, labels, torch.tensor([5]))
    out = metric.compute()
    assert out["dic"].item() == -3.0 and out["abs_dic"].item() == 3.0


# rec-attend's own SBD and FgBgDice. Pred ids of RecAttendSBD are timestep slots (id t + 1 =
# output t): a gap is an empty output, so these cases are written in model order.


def extra_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """rec-attend SBD and FgBgDice of a (B, H, W) batch in one update, as plain floats."""
    sbd, fg = RecAttendSBD(), ForegroundDice()
    sbd.update(pred, target)
    fg.update(pred, target)
    return {k: v.item() for k, v in (sbd.compute() | fg.compute()).items()}


def extra_one(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(SBD_recattend, FgBgDice) of one image; every std over a single image is 0."""
    out = extra_scores(pred[None], target[None])
    assert out["sbd_recattend_std"] == 0 and out["fg_dice_std"] == 0
    return out["sbd_recattend"], out["fg_dice"]


def test_extra_perfect_prediction() -> None:
    # N' = 2; y1 = g1, y2 = g2: both terms (1 + 1) / 2 = 1. Foreground identical: Dice 1.
    assert extra_one(GT_TWO, GT_TWO) == pytest.approx((1, 1))


def test_extra_two_instances_merged_into_one() -> None:
    # y1 on all 16 px: Dice(y1, g1) = 6/7, Dice(y1, g2) = 2/5 (see the official case); N' = 2.
    # Outputs -> GT over slots t < 2: (max(6/7, 2/5) + 0 [y2 empty]) / 2 = 3/7.
    # GT -> outputs: (6/7 + 2/5) / 2 = 22/35. SBD_recattend = min(3/7, 22/35) = 3/7 = 15/35,
    # below the official 22/35 (#pred 1 != #gt 2).
    # Foreground: 16 px on both sides, FgBgDice = 1 (instances do not matter).
    sbd, fg = extra_one(columns(1, 1, 1, 1), GT_TWO)
    assert sbd == pytest.approx(3 / 7) and fg == pytest.approx(1)
    assert symmetric_best_dice(columns(1, 1, 1, 1), GT_TWO).item() == pytest.approx(22 / 35)


def test_extra_dropped_instance() -> None:
    # y1 = g1, g2 missed; N' = 2. Outputs -> GT: (1 + 0) / 2; GT -> outputs: (1 + 0) / 2.
    # SBD_recattend = 1/2. FgBgDice = 2*12 / (12 + 16) = 6/7.
    assert extra_one(GT_ONE, GT_TWO) == pytest.approx((1 / 2, 6 / 7))


def test_extra_empty_prediction() -> None:
    # Every output empty: both terms 0. FgBgDice = 0 / (0 + 16) = 0.
    assert extra_one(EMPTY, GT_TWO) == (0, 0)


def test_extra_empty_ground_truth() -> None:
    # No GT: N' = 1 and the max over no GT is 0, so SBD_recattend = 0 whatever the prediction.
    # FgBgDice: 0 / (12 + 0) = 0, and 0/0 := 0 when both are empty.
    assert extra_one(GT_ONE, EMPTY) == (0, 0)
    assert extra_one(EMPTY, EMPTY) == (0, 0)


def test_extra_false_positive_output() -> None:
    # GT g1 only, N' = 1. Official SBD = 1/2 (test_extra_false_positive).
    # FP output last (y1 = g1, y2 on column 3): only slot t = 0 counts, Dice(y1, g1) = 1;
    # GT -> outputs max(1, 0) = 1: SBD_recattend = 1. FgBgDice = 2*12 / (16 + 12) = 6/7.
    assert extra_one(columns(1, 1, 1, 2), GT_ONE) == pytest.approx((1, 6 / 7))
    # FP output first (y1 on column 3, y2 = g1): slot t = 0 holds the FP, max_j Dice(y1, g_j) = 0,
    # so SBD_recattend = min(0, 1) = 0; the official SBD does not depend on order (1/2 again).
    assert extra_one(columns(2, 2, 2, 1), GT_ONE) == pytest.approx((0, 6 / 7))
    assert symmetric_best_dice(columns(2, 2, 2, 1), GT_ONE).item() == pytest.approx(1 / 2)


def test_extra_three_outputs_two_gt_differs_from_official() -> None:
    # GT: g1 on columns 0..1 (8 px), g2 on column 2 (4 px); outputs y1 = g1, y2 = g2, y3 on
    # column 3 (background). Official: BD(pred, gt) = (1 + 1 + 0) / 3 = 2/3, BD(gt, pred) = 1,
    # SBD = 2/3. rec-attend: N' = 2 ignores y3: (1 + 1) / 2 = 1 both ways, SBD_recattend = 1.
    pred, target = columns(1, 1, 2, 3), columns(1, 1, 2, 0)
    assert recattend_sbd(pred, target).item() == pytest.approx(1)
    assert symmetric_best_dice(pred, target).item() == pytest.approx(2 / 3)


def test_extra_ground_truth_ids_do_not_change_scores() -> None:
    # Dropped case with GT ids offset by +100 (101, 102): 1/2 and 6/7 as above. Unrenumbered,
    # N' would be 102 and the score 1/102.
    assert extra_one(GT_ONE, columns(101, 101, 101, 102)) == pytest.approx((1 / 2, 6 / 7))
    # GT order does not matter (both terms use all N GT instances): merged case with g1, g2
    # swapped (g1 = column 3, g2 = columns 0..2) still gives 3/7.
    assert extra_one(columns(1, 1, 1, 1), columns(2, 2, 2, 1)) == pytest.approx((3 / 7, 1))


def test_extra_pred_ids_are_slots_not_renumbered() -> None:
    # Outputs y1 = g1, y2 empty (id 2 absent), y3 = g2; N' = 2.
    # Outputs -> GT over t < 2: (1 + 0) / 2 = 1/2; GT -> outputs: (1 + 1) / 2 = 1; SBD = 1/2.
    # Renumbered ({1, 3} -> {1, 2}) it would be 1, as is the official SBD.
    # FgBgDice only sees the foreground: ids with gaps and offsets (7, 9) give 1 here.
    sbd, _ = extra_one(columns(1, 1, 1, 3), GT_TWO)
    assert sbd == pytest.approx(1 / 2)
    assert symmetric_best_dice(columns(1, 1, 1, 3), GT_TWO).item() == pytest.approx(1)
    assert extra_one(columns(7, 7, 7, 9), GT_TWO * 100)[1] == pytest.approx(1)


def test_extra_mean_and_population_std_over_images() -> None:
    # Images: perfect, dropped, empty prediction (GT_TWO each).
    # SBD_recattend 1, 1/2, 0: mean 1/2, std sqrt(((1/2)^2 + 0 + (1/2)^2) / 3) = sqrt(1/6).
    # FgBgDice 1, 6/7, 0: mean 13/21; E[x^2] = (1 + 36/49) / 3 = 85/147 = 255/441,
    # var = 255/441 - 169/441 = 86/441, std sqrt(86)/21.
    pred = torch.stack([GT_TWO, GT_ONE, EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO])
    assert extra_scores(pred, target) == pytest.approx(
        {
            "sbd_recattend": 1 / 2,
            "sbd_recattend_std": math.sqrt(1 / 6),
            "fg_dice": 13 / 21,
            "fg_dice_std": math.sqrt(86) / 21,
        }
    )


def test_extra_two_updates_equal_one_concatenated_update() -> None:
    pred = torch.stack([GT_TWO, columns(1, 1, 1, 1), GT_ONE, EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, EMPTY])
    sbd, fg = RecAttendSBD(), ForegroundDice()
    for metric in (sbd, fg):
        metric.update(pred[:1], target[:1])
        metric.update(pred[1:], target[1:])
    accumulated = {k: v.item() for k, v in (sbd.compute() | fg.compute()).items()}
    assert accumulated == pytest.approx(extra_scores(pred, target))


def test_extra_update_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        RecAttendSBD().update(GT_TWO, GT_TWO)  # (H, W) without the batch dimension
    with pytest.raises(ValueError, match="integer"):
        ForegroundDice().update(GT_TWO[None].float(), GT_TWO[None])
