"""KITTI MWCov, MUCov, FP and FN on 4x4 label maps with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch

from recattend.metrics.kitti import Coverage, coverage_scores
from tests.metrics.labels import (
    EMPTY,
    GT_ONE,
    GT_TWO,
    columns,
    ddp_and_single_process_values,
)


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Coverage of a (B, H, W) batch in one update, as plain floats."""
    metric = Coverage()
    metric.update(pred, target)
    return {k: v.item() for k, v in metric.compute().items()}


def one(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Scores of one image: the means; every std over a single image is 0."""
    out = scores(pred[None], target[None])
    assert all(out[f"{k}_std"] == 0 for k in ("mwcov", "mucov", "fp", "fn"))
    return {k: out[k] for k in ("mwcov", "mucov", "fp", "fn")}


def test_perfect_prediction() -> None:
    # Every GT instance is covered with IoU 1: MWCov = MUCov = 1; nothing missed or spurious.
    assert one(GT_TWO, GT_TWO) == pytest.approx({"mwcov": 1, "mucov": 1, "fp": 0, "fn": 0})


def test_two_instances_merged_into_one() -> None:
    # One prediction P on all 16 px: IoU(P, G1) = 12/16 = 3/4, IoU(P, G2) = 4/16 = 1/4.
    # MUCov = (3/4 + 1/4) / 2 = 1/2; MWCov = (12/16)(3/4) + (4/16)(1/4) = 9/16 + 1/16 = 5/8.
    # P touches GT (not an FP) and both GT instances are touched (no FN).
    out = one(columns(1, 1, 1, 1), GT_TWO)
    assert out == pytest.approx({"mwcov": 5 / 8, "mucov": 1 / 2, "fp": 0, "fn": 0})


def test_dropped_instance() -> None:
    # P1 = G1 exactly, G2 missed: coverages 1 and 0.
    # MUCov = (1 + 0) / 2 = 1/2; MWCov = (12/16)(1) + (4/16)(0) = 3/4; FN = 1 (G2).
    out = one(GT_ONE, GT_TWO)
    assert out == pytest.approx({"mwcov": 3 / 4, "mucov": 1 / 2, "fp": 0, "fn": 1})


def test_empty_prediction() -> None:
    # No prediction: every max over predictions is 0, so MWCov = MUCov = 0; FN = 2, FP = 0.
    out = one(EMPTY, GT_TWO)
    assert out == {"mwcov": 0, "mucov": 0, "fp": 0, "fn": 2}


def test_empty_ground_truth() -> None:
    # No GT: N' = 1 with an empty sum, MUCov = MWCov = 0. Any prediction touches no GT pixel, so
    # P1 (12 px) is an FP; nothing can be missed, FN = 0. Empty on both sides: all 0.
    assert one(GT_ONE, EMPTY) == {"mwcov": 0, "mucov": 0, "fp": 1, "fn": 0}
    assert one(EMPTY, EMPTY) == {"mwcov": 0, "mucov": 0, "fp": 0, "fn": 0}


def test_extra_false_positive() -> None:
    # P1 = G1 exactly plus P2 on column 3, which is background in the GT: coverage of G1 is 1,
    # so MUCov = MWCov = 1; P2 touches no GT pixel: FP = 1.
    out = one(columns(1, 1, 1, 2), GT_ONE)
    assert out == pytest.approx({"mwcov": 1, "mucov": 1, "fp": 1, "fn": 0})


def test_extra_prediction_touching_one_gt_pixel_is_not_a_false_positive() -> None:
    # P1 = G1 minus pixel (0, 2): 11 px, IoU(P1, G1) = 11/12. P2 = column 3 plus pixel (0, 2):
    # 5 px, IoU(P2, G1) = 1 / (5 + 12 - 1) = 1/16 > 0, so P2 is not an FP.
    # MUCov = MWCov = max(11/12, 1/16) = 11/12 (one GT instance).
    pred = columns(1, 1, 1, 2)
    pred[0, 2] = 2
    out = one(pred, GT_ONE)
    assert out == pytest.approx({"mwcov": 11 / 12, "mucov": 11 / 12, "fp": 0, "fn": 0})


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        # Merged case with pred id 7: as above. Unrenumbered, ids 1..6 would be 6 empty
        # predictions touching no GT, i.e. 6 FPs.
        (columns(7, 7, 7, 7), GT_TWO, {"mwcov": 5 / 8, "mucov": 1 / 2, "fp": 0, "fn": 0}),
        # Dropped case with pred id 9 and GT ids 101, 102. Unrenumbered, the GT ids 1..100 would
        # be 100 missed (FN) instances and N' = 102: MUCov = 1/102.
        (
            columns(9, 9, 9, 0),
            columns(101, 101, 101, 102),
            {"mwcov": 3 / 4, "mucov": 1 / 2, "fp": 0, "fn": 1},
        ),
        # False-positive case with pred ids {7, 9} and GT id 100.
        (columns(7, 7, 7, 9), GT_ONE * 100, {"mwcov": 1, "mucov": 1, "fp": 1, "fn": 0}),
    ],
)
def test_gaps_and_offsets_in_ids_do_not_change_scores(
    pred: torch.Tensor, target: torch.Tensor, expected: dict[str, float]
) -> None:
    assert one(pred, target) == pytest.approx(expected)


def test_coverage_scores_per_image_types() -> None:
    # The pure function returns float32 coverages and int64 counts (merged case: 5/8, 1/2, 0, 0).
    out = coverage_scores(columns(1, 1, 1, 1), GT_TWO)
    assert (out.mwcov.dtype, out.mucov.dtype) == (torch.float32, torch.float32)
    assert (out.fp.dtype, out.fn.dtype) == (torch.int64, torch.int64)
    assert (out.mwcov.item(), out.mucov.item(), out.fp.item(), out.fn.item()) == (
        5 / 8,
        1 / 2,
        0,
        0,
    )


def test_mean_and_population_std_over_images() -> None:
    # Images (MWCov, MUCov, FP, FN): perfect (1, 1, 0, 0), dropped (3/4, 1/2, 0, 1),
    # empty prediction (0, 0, 0, 2), extra FP (1, 1, 1, 0).
    # MWCov: mean 11/16; deviations 5, 1, -11, 5 (/16): var = 172/256/4 = 43/256, std sqrt(43)/16.
    # MUCov: mean 5/8; deviations 3, -1, -5, 3 (/8): var = 44/64/4 = 11/64, std sqrt(11)/8.
    # FP: mean 1/4; deviations -1, -1, -1, 3 (/4): var = 12/16/4 = 3/16, std sqrt(3)/4.
    # FN: mean 3/4; deviations -3, 1, 5, -3 (/4): var = 44/16/4 = 11/16, std sqrt(11)/4.
    pred = torch.stack([GT_TWO, GT_ONE, EMPTY, columns(1, 1, 1, 2)])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, GT_ONE])
    out = scores(pred, target)
    assert out == pytest.approx(
        {
            "mwcov": 11 / 16,
            "mwcov_std": math.sqrt(43) / 16,
            "mucov": 5 / 8,
            "mucov_std": math.sqrt(11) / 8,
            "fp": 1 / 4,
            "fp_std": math.sqrt(3) / 4,
            "fn": 3 / 4,
            "fn_std": math.sqrt(11) / 4,
        }
    )

    metric = Coverage()
    metric.update(pred, target)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in metric.compute().values())


def test_two_updates_equal_one_concatenated_update() -> None:
    pred = torch.stack([GT_TWO, columns(1, 1, 1, 1), GT_ONE, EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, EMPTY])
    metric = Coverage()
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    accumulated = {k: v.item() for k, v in metric.compute().items()}
    assert accumulated == pytest.approx(scores(pred, target))


def test_update_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        Coverage().update(GT_TWO, GT_TWO)  # (H, W) without the batch dimension
    with pytest.raises(ValueError, match="integer"):
        Coverage().update(GT_TWO[None].float(), GT_TWO[None])


def _coverage_metric() -> tuple:
    return (Coverage(),)


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path) -> None:
    ranks, expected = ddp_and_single_process_values(_coverage_metric, tmp_path)
    for got in ranks:
        assert got == pytest.approx(expected)
