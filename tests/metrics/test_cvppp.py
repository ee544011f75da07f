"""Official CVPPP SBD and DiC on 4x4 label maps with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recattend.metrics import (
    DifferenceInCount,
    SymmetricBestDice,
    instance_overlaps,
    symmetric_best_dice,
)


def columns(*ids: int) -> torch.Tensor:
    """(4, 4) int64 label map whose column c is ``ids[c]`` on every row (4 pixels per column)."""
    return torch.tensor(ids, dtype=torch.int64).expand(4, 4).clone()


# Ground truth: instance 1 on columns 0..2 (12 px), instance 2 on column 3 (4 px).
GT_TWO = columns(1, 1, 1, 2)
# Ground truth with instance 1 only (12 px), column 3 background.
GT_ONE = columns(1, 1, 1, 0)
EMPTY = columns(0, 0, 0, 0)


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


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """Five (pred, target) images covering every case above."""
    pred = torch.stack([GT_TWO, columns(1, 1, 1, 1), GT_ONE, columns(1, 1, 1, 2), EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, GT_ONE, GT_TWO])
    return pred, target


def _ddp_worker(rank: int, world_size: int, init_method: str, expected: dict[str, float]) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        pred, target = dataset()
        # Uneven shards (3 + 2 images) check that every image counts exactly once.
        shard = slice(0, 3) if rank == 0 else slice(3, 5)
        sbd, dic = SymmetricBestDice(), DifferenceInCount()
        for metric in (sbd, dic):
            metric.update(pred[shard], target[shard])
        got = {k: v.item() for k, v in (sbd.compute() | dic.compute()).items()}
        assert got == pytest.approx(expected), (rank, got, expected)
    finally:
        # Gloo threads alive at exit abort the process (reference/platform.md, section 2 row 9).
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path) -> None:
    expected = scores(*dataset())
    init_method = f"file://{tmp_path / 'process_group'}"
    mp.spawn(_ddp_worker, args=(2, init_method, expected), nprocs=2, join=True)


def test_dic_counts_the_true_number_of_instances_when_given() -> None:
    # The label map holds 2 instances (truncated), the image had 5: DiC = 2 - 5 = -3, not 0.
    labels = torch.tensor([[[0, 1], [2, 2]]])
    metric = DifferenceInCount()
    metric.update(labels, labels, torch.tensor([5]))
    out = metric.compute()
    assert out["dic"].item() == -3.0 and out["abs_dic"].item() == 3.0
