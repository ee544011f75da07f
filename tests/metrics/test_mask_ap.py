"""Class-agnostic mask AP on 4x4 label maps with hand-computed expectations.

Image A: two 8 px ground-truth instances (columns 0-1 and 2-3). Prediction 1 is the first exactly
(IoU 1, score 0.9); prediction 2 covers rows 0-2 of the second (6 px, IoU 6/8 = 0.75, score 0.8),
so it is a TP at 0.50 ... 0.70 and an FP at 0.75 ... 0.95 (the match is strict). Instance id 3 has
no pixel and is skipped.
"""

from __future__ import annotations

import math

import pytest
import torch

from recattend.metrics.mask_ap import MaskAP, match_instances

TARGET_A = torch.tensor([[1, 1, 2, 2]] * 4)
PRED_A = torch.tensor([[1, 1, 2, 2]] * 3 + [[1, 1, 0, 0]])
SCORES_A = torch.tensor([0.9, 0.8, 0.7])  # id 3 (score 0.7) has no pixel


def test_each_prediction_is_a_tp_up_to_its_iou() -> None:
    score, is_tp, num_gt = match_instances(PRED_A, SCORES_A, TARGET_A)
    assert score.tolist() == pytest.approx([0.9, 0.8])
    assert num_gt == 2
    assert is_tp[:, 0].all()  # IoU 1 beats every threshold
    assert is_tp[:, 1].tolist() == [True] * 5 + [False] * 5  # IoU 0.75: up to th 0.70


def test_ap_of_one_image() -> None:
    metric = MaskAP()
    metric.update(PRED_A[None], [SCORES_A], TARGET_A[None])
    out = metric.compute()
    # th <= 0.70: both TPs, AP 1. th >= 0.75: p = (1/2, 1, 1) at r = (1/2, 1/2, 0), step widths
    # (0, 1/4, 1/4): AP 1/2. Mean over the 10 thresholds: (5 * 1 + 5 * 1/2) / 10.
    assert out["mask_ap50"].item() == pytest.approx(1.0)
    assert out["mask_ap"].item() == pytest.approx(0.75)


def test_a_false_positive_in_another_image_counts() -> None:
    """Image B has no ground truth and one prediction of score 0.95: an FP at every threshold,
    ranked first."""
    metric = MaskAP()
    metric.update(PRED_A[None], [SCORES_A], TARGET_A[None])
    pred_b = torch.zeros(1, 4, 4, dtype=torch.long)
    pred_b[0, 0, 0] = 1
    metric.update(pred_b, [torch.tensor([0.95])], torch.zeros(1, 4, 4, dtype=torch.long))
    out = metric.compute()
    # th <= 0.70: scores >= 0.8, 0.9, 0.95 give p = (2/3, 1/2, 0) at r = (1, 1/2, 0), closed by
    # (1, 0); widths (1/4, 1/2, 1/4, 0): AP = 1/6 + 1/4 = 5/12.
    # th >= 0.75: p = (1/3, 1/2, 0) at r = (1/2, 1/2, 0); widths (0, 1/4, 1/4, 0): AP = 1/8.
    assert out["mask_ap50"].item() == pytest.approx(5 / 12)
    assert out["mask_ap"].item() == pytest.approx((5 * 5 / 12 + 5 / 8) / 10)


def test_no_ground_truth_is_nan_and_no_prediction_is_zero() -> None:
    metric = MaskAP()
    with pytest.warns(UserWarning, match="called before the ``update``"):  # torchmetrics' own
        assert math.isnan(metric.compute()["mask_ap"].item())  # no image at all
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), [torch.zeros(0)], TARGET_A[None])
    assert metric.compute()["mask_ap"].item() == 0.0  # two GT instances, nothing predicted
