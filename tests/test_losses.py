"""Losses of eq. (21-27) against hand-worked numbers and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recattend.losses import (
    box_loss,
    box_stage_losses,
    coordinate_iou,
    hungarian_match,
    matched_iou_loss,
    monotonic_score_loss,
    padded_box_edges,
    padded_box_masks,
    padded_gt_boxes,
    score_target,
    segmenter_losses,
    soft_iou,
    supervised_counts,
)

EPS = 1e-5


def test_soft_iou_hand_computed() -> None:
    a = [[1.0, 0.0], [1.0, 1.0]]
    soft = [[0.5, 1.0], [0.0, 0.25]]
    pred = torch.tensor([[a, soft], [[[0.0, 0.0], [0.0, 0.0]]] * 2])  # (2, 2, 2, 2)
    target = torch.tensor(
        [
            [a, [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]],
            [a, [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]],
        ]
    )  # (2, 3, 2, 2)
    # Image 0, prediction a: identical to target 0 (3 / 3); disjoint from target 1 (0);
    # against target 2: intersection 1, union 3 + 2 - 1 = 4.
    # Image 0, prediction soft (sum 1.75): against target 0 (sum 3) the products are
    # 0.5 + 0.25 = 0.75, union 1.75 + 3 - 0.75 = 4; against target 1 (sum 1): 1 / (1.75 + 1 - 1);
    # against target 2 (sum 2): products 0.5 + 1 = 1.5, union 1.75 + 2 - 1.5 = 2.25 -> 2/3.
    # Image 1: empty predictions give 0 everywhere, also against an empty target (0 / eps).
    expected = torch.tensor(
        [
            [
                [3 / (3 + EPS), 0.0, 1 / (4 + EPS)],
                [0.75 / (4 + EPS), 1 / (1.75 + EPS), 1.5 / (2.25 + EPS)],
            ],
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    got = soft_iou(pred, target)
    assert got.shape == (2, 2, 3)
    torch.testing.assert_close(got, expected)


def _brute_force_best(iou: torch.Tensor, n: int) -> float:
    """Largest total IoU over all one-to-one pairings of rows 0..n-1 with columns 0..n-1."""
    return max(
        (
            sum(iou[i, perm[i]].item() for i in range(n))
            for perm in itertools.permutations(range(n))
        ),
        default=0.0,
    )


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_match_against_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_valid = torch.tensor([0, 1, 2, 3, 4, 4])
    iou = 0.9 * torch.rand(6, 4, 4, generator=gen, dtype=torch.float64)
    # Padded predictions and GT slots look like perfect matches; they must still get nothing.
    for b, n in enumerate(num_valid.tolist()):
        iou[b, n:, :] = 1.0
        iou[b, :, n:] = 1.0
    match = hungarian_match(iou, num_valid)
    assert match.shape == (6, 4, 4) and match.dtype == iou.dtype and not match.requires_grad
    for b, n in enumerate(num_valid.tolist()):
        block = match[b, :n, :n]
        assert set(match[b].unique().tolist()) <= {0.0, 1.0}
        assert match[b].sum() == n == block.sum()  # nothing outside the n x n block
        assert (block.sum(0) == 1).all() and (block.sum(1) == 1).all()
        assert (match[b] * iou[b]).sum().item() == pytest.approx(_brute_force_best(iou[b], n))


def test_hungarian_match_clamps_count_to_the_smaller_side() -> None:
    # T = 3 predictions, N = 5 slots, n_b = 7: only the 3 x 3 block can be matched. Its best
    # pairing is the anti-diagonal (0.9 each), not the larger values in columns 3 and 4.
    iou = torch.zeros(1, 3, 5)
    iou[0, [0, 1, 2], [2, 1, 0]] = 0.9
    iou[0, :, 3:] = 1.0
    match = hungarian_match(iou, torch.tensor([7]))
    expected = torch.zeros(1, 3, 5)
    expected[0, [0, 1, 2], [2, 1, 0]] = 1.0
    torch.testing.assert_close(match, expected)


def test_matched_iou_loss_by_hand() -> None:
    iou = torch.tensor(
        [
            [[0.8, 0.1], [0.3, 0.6]],
            [[0.5, 0.9], [0.2, 0.4]],
            [[0.7, 0.7], [0.7, 0.7]],
        ],
        requires_grad=True,
    )
    match = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[0.0, 1.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    num_valid = torch.tensor([2, 1, 0])
    # Image 0: (0.8 + 0.6) / 2 = 0.7; image 1: 0.9 / 1; image 2 has no instances: 0.
    # Loss = -(0.7 + 0.9 + 0) / 3.
    loss = matched_iou_loss(iou, match, num_valid)
    assert loss.item() == pytest.approx(-1.6 / 3)
    loss.backward()
    # d loss / d M_bij = -match_bij / (B * max(1, n_b)).
    expected_grad = torch.tensor(
        [
            [[-1 / 6, 0.0], [0.0, -1 / 6]],
            [[0.0, -1 / 3], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    torch.testing.assert_close(iou.grad, expected_grad)


def test_padded_box_masks_hand_drawn() -> None:
    boxes = torch.tensor(
        [
            [
                # Rows 30..42 (height 13): 0.2 * 13 = 2.6 > min_pad 1.2, edges 27.4 and 45.6
                # -> rows 27..45 (pixel centres 27.5 .. 45.5). Columns 20..24 (width 5):
                # 0.2 * 5 = 1 < 1.2, edges 18.8 and 26.2 -> columns 19..25.
                [30.0, 20.0, 43.0, 25.0],
                # At the border, height 3 and width 5 both pad by 1.2 (rows -0.2..5.2 clip to
                # 0..4), columns 44.8..51.2 clip to 45..49.
                [1.0, 46.0, 4.0, 50.0],
                # A real-looking box in a slot past n_b: not drawn.
                [10.0, 10.0, 20.0, 20.0],
                [0.0, 0.0, 0.0, 0.0],
            ],
            [[10.0, 10.0, 20.0, 20.0]] + [[0.0, 0.0, 0.0, 0.0]] * 3,
        ]
    )
    got = padded_box_masks(boxes, (50, 50), torch.tensor([2, 0]), min_pad=1.2)
    expected = torch.zeros(2, 4, 50, 50)
    expected[0, 0, 27:46, 19:26] = 1.0
    expected[0, 1, 0:5, 45:50] = 1.0
    assert got.shape == (2, 4, 50, 50) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_padded_box_masks_default_min_pad_dominates() -> None:
    # Height 10, width 30 in a 64 x 80 image: 0.2 * 10 = 2 and 0.2 * 30 = 6, both below 20, so
    # every side grows by 20: rows -10..40 -> 0..39, columns 20..80 -> 20..79 (clipped).
    boxes = torch.tensor([[[10.0, 40.0, 20.0, 70.0]]])
    got = padded_box_masks(boxes, (64, 80), torch.tensor([1]), min_pad=20.0)
    expected = torch.zeros(1, 1, 64, 80)
    expected[0, 0, 0:40, 20:80] = 1.0
    torch.testing.assert_close(got, expected)


def _box_rasters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two GT boxes in a 32 x 32 image and their rasters padded with min_pad = 2, drawn by hand.

    Box 0 (4, 4, 9, 9), size 5: pad max(1, 2) = 2 -> rows and columns 2..10.
    Box 1 (20, 10, 30, 20), size 10: pad max(2, 2) = 2 -> rows 18..31 (clipped), columns 8..21.
    """
    boxes = torch.tensor([[[4.0, 4.0, 9.0, 9.0], [20.0, 10.0, 30.0, 20.0], [0.0, 0.0, 0.0, 0.0]]])
    raster0 = torch.zeros(32, 32)
    raster0[2:11, 2:11] = 1.0
    raster1 = torch.zeros(32, 32)
    raster1[18:32, 8:22] = 1.0
    return boxes, raster0, raster1


def test_box_loss_perfect_boxes_and_gradient() -> None:
    boxes, raster0, raster1 = _box_rasters()
    # Predictions in the other order than the GT slots: the box loss matches them itself.
    soft_boxes = torch.stack([raster1, raster0, torch.zeros(32, 32)]).unsqueeze(0)
    soft_boxes.requires_grad_(True)
    loss, match = box_loss(soft_boxes, boxes, torch.tensor([2]), min_pad=2.0)
    assert loss.item() == pytest.approx(-1.0, abs=1e-5)
    assert match[0].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    loss.backward()
    grad = soft_boxes.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[0, 0].abs().sum() > 0 and grad[0, 1].abs().sum() > 0
    assert (grad[0, 2] == 0).all()  # prediction t >= n_b: no box loss


def test_box_stage_losses_use_the_box_matching_for_the_scores() -> None:
    # Soft boxes in swapped order are matched to both GT boxes (loss_box = -1); the score target
    # is then [1, 1, 0]. Scores [0.9, 0.8, 0.3]: cummin [0.9, 0.8, 0.3], future max for t=2: 0.3.
    # L_s = (-ln 0.9 - ln 0.8 - ln 0.7) / 3 = (0.10536 + 0.22314 + 0.35667) / 3 = 0.22839.
    boxes, raster0, raster1 = _box_rasters()
    soft_boxes = torch.stack([raster1, raster0, torch.zeros(32, 32)]).unsqueeze(0)
    scores = torch.tensor([[0.9, 0.8, 0.3]])
    terms = box_stage_losses(soft_boxes, scores, boxes, torch.tensor([2]), 1.0, 2.0, min_pad=2.0)
    assert terms["loss_box"].item() == pytest.approx(-1.0, abs=1e-5)
    assert terms["loss_score"].item() == pytest.approx(0.22839, abs=1e-4)
    assert terms["loss"].item() == pytest.approx(-1.0 + 2 * 0.22839, abs=2e-4)
    assert terms["match"][0].sum(1).tolist() == [1.0, 1.0, 0.0]
    # No instances: nothing matched, all-zero score target, no box loss.
    empty = box_stage_losses(
        soft_boxes, scores, torch.zeros(1, 3, 4), torch.tensor([0]), min_pad=2.0
    )
    assert empty["loss_box"].item() == 0.0 and empty["match"].sum() == 0


def test_coordinate_iou_hand_computed_and_no_gradient_when_disjoint() -> None:
    # p0 (0, 0)-(4, 4), area 16: with t0 (2, 2)-(6, 6) the intersection is (2, 2)-(4, 4) = 4 and
    # the union 16 + 16 - 4 = 28, IoU 1/7; with t1, itself, 1; with t2, the box below it sharing
    # its edge y = 4, 0. p1 overlaps none: all 0, and no gradient.
    pred = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 13.0]]], requires_grad=True)
    target = torch.tensor([[[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]]])
    iou = coordinate_iou(pred, target)
    expected = torch.tensor([[[4 / (28 + EPS), 16 / (16 + EPS), 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(iou, expected)
    iou.sum().backward()
    assert pred.grad[0, 0].abs().sum() > 0
    assert (pred.grad[0, 1] == 0).all()


def test_padded_box_edges_hand_computed() -> None:
    # As test_padded_box_masks_hand_drawn, min_pad 1.2, but the coordinates, unclipped: rows
    # 30..43 grow by 2.6, columns 20..25 by 1.2; the border box by 1.2 on every side. Slots past
    # n_b (a real-looking box too) get the authors' empty box (0, 0)-(2.4, 2.4).
    boxes = torch.tensor(
        [
            [[30.0, 20.0, 43.0, 25.0], [1.0, 46.0, 4.0, 50.0], [10.0, 10.0, 20.0, 20.0]],
            [[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    counts = torch.tensor([2, 0])
    got = padded_box_edges(boxes, counts, min_pad=1.2)
    empty = [0.0, 0.0, 2.4, 2.4]
    expected = torch.tensor(
        [[[27.4, 18.8, 45.6, 26.2], [-0.2, 44.8, 5.2, 51.2], empty], [empty] * 3]
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(padded_gt_boxes("coordinates", boxes, counts, 1.2, (50, 50)), got)
    torch.testing.assert_close(
        padded_gt_boxes("soft", boxes, counts, 1.2, (50, 50)),
        padded_box_masks(boxes, (50, 50), counts, min_pad=1.2),
    )


def test_the_coordinate_box_iou_changes_the_box_matching_and_loss() -> None:
    # The padded GT boxes (min_pad 2) as coordinates: box 0 (2, 2)-(11, 11), area 81; box 1
    # (18, 8)-(32, 22). The soft boxes are the rasters in GT order: the soft IoU matches them in
    # that order, L_b = -1. The predicted boxes' edges are in the other order: p0 is box 1's
    # padded box (IoU 1), p1 = (3, 3)-(8, 10), area 35, lies inside box 0's (IoU 35 / 81) and is
    # disjoint from box 1's, so the coordinate IoU matches p0-1 and p1-0: L_b = -(1 + 35/81) / 2.
    # d IoU(p1, box 0) / d p1 = (-7, -5, 7, 5) / 81 for (y0, x0, y1, x1) (the overlap's width 7
    # and height 5; the union stays box 0's area), halved and negated in L_b.
    boxes, raster0, raster1 = _box_rasters()
    soft_boxes = torch.stack([raster0, raster1, torch.zeros(32, 32)]).unsqueeze(0)
    soft_boxes.requires_grad_(True)
    edges = torch.tensor(
        [[[18.0, 8.0, 32.0, 22.0], [3.0, 3.0, 8.0, 10.0], [0.0, 0.0, 4.0, 4.0]]],
        requires_grad=True,
    )
    counts = torch.tensor([2])
    soft, soft_match = box_loss(soft_boxes, boxes, counts, min_pad=2.0, box_edges=edges)
    assert soft.item() == pytest.approx(-1.0, abs=1e-5)
    assert soft_match[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    loss, match = box_loss(
        soft_boxes, boxes, counts, min_pad=2.0, box_edges=edges, kind="coordinates"
    )
    assert loss.item() == pytest.approx(-(1 + 35 / 81) / 2, abs=1e-5)
    assert match[0].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    loss.backward()
    assert soft_boxes.grad is None  # the soft boxes are not read
    torch.testing.assert_close(edges.grad[0, 1], torch.tensor([7.0, 5.0, -7.0, -5.0]) / 162)
    assert (edges.grad[0, 2] == 0).all()  # prediction t >= n_b: no box loss
    # The joint loss and the box stage's pass the switch on.
    masks, scores = torch.zeros(1, 3, 32, 32), torch.tensor([[0.9, 0.8, 0.3]])
    joint = segmenter_losses(
        masks, scores, soft_boxes, masks, boxes, counts,
        min_pad=2.0, box_edges=edges, box_iou="coordinates",
    )  # fmt: skip
    stage = box_stage_losses(
        soft_boxes, scores, boxes, counts, min_pad=2.0, box_edges=edges, box_iou="coordinates"
    )
    for terms in (joint, stage):
        assert terms["loss_box"].item() == pytest.approx(-(1 + 35 / 81) / 2, abs=1e-5)
    assert stage["match"][0].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_monotonic_score_loss_hand_worked() -> None:
    # scores [0.9, 0.4, 0.8], targets [1, 1, 0].
    # min over t' <= t (cummin): [0.9, 0.4, 0.4];
    # max over t' >= t (flipped cummax): [0.9, 0.8, 0.8].
    # t=0, target 1: -log(0.9) = 0.1054
    # t=1, target 1: -log(0.4) = 0.9163
    # t=2, target 0: -log(1 - 0.8) = 1.6094
    # mean over the 3 steps: 2.6311 / 3 = 0.8770
    scores = torch.tensor([[0.9, 0.4, 0.8]])
    target = torch.tensor([[1.0, 1.0, 0.0]])
    expected = -(math.log(0.9 + EPS) + math.log(0.4 + EPS) + math.log(0.2 + EPS)) / 3
    assert monotonic_score_loss(scores, target).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.8770, abs=1e-4)


def test_monotonic_score_loss_penalises_a_later_higher_score() -> None:
    # scores [0.9, 0.2, 0.7], targets [1, 0, 0]. Step 1 is already low (0.2), but the max over the
    # future is 0.7, so it costs -log(0.3) instead of -log(0.8); step 2 also costs -log(0.3).
    scores = torch.tensor([[0.9, 0.2, 0.7]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0]])
    loss = monotonic_score_loss(scores, target)
    expected = -(math.log(0.9 + EPS) + 2 * math.log(0.3 + EPS)) / 3
    per_step_bce = -(math.log(0.9) + math.log(0.8) + math.log(0.3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() > per_step_bce
    loss.backward()
    # The gradient goes to the late high score (twice), none to the low step 1:
    # d/ds0 = -1 / (3 (0.9 + eps)); d/ds1 = 0; d/ds2 = 2 / (3 (1 - 0.7 + eps)).
    expected_grad = torch.tensor([[-1 / (3 * (0.9 + EPS)), 0.0, 2 / (3 * (0.3 + EPS))]])
    torch.testing.assert_close(scores.grad, expected_grad)


def test_monotonic_score_loss_earlier_low_score_bounds_positive_targets() -> None:
    # scores [0.3, 0.9, 0.95], all targets 1: the running minimum is 0.3 at every step.
    scores = torch.tensor([[0.3, 0.9, 0.95]])
    loss = monotonic_score_loss(scores, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-math.log(0.3 + EPS), rel=1e-6)


def test_score_target_is_matched_rows() -> None:
    match = torch.zeros(2, 3, 3)
    match[0, 0, 1] = match[0, 1, 0] = 1.0
    torch.testing.assert_close(score_target(match), torch.tensor([[1.0, 1.0, 0.0], [0.0] * 3]))


def test_segmenter_losses_empty_ground_truth() -> None:
    masks = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([[0.5, 0.25, 0.1]])
    out = segmenter_losses(
        masks,
        scores,
        masks.clone(),
        torch.zeros(1, 3, 8, 8),
        torch.zeros(1, 3, 4),
        torch.tensor([0]),
        min_pad=20.0,
    )
    assert out["loss_segm"].item() == 0.0 and out["loss_box"].item() == 0.0
    assert (out["match"] == 0).all()
    # All targets 0; the max over the future equals the score itself here (decreasing):
    # -(log(1 - 0.5) + log(1 - 0.25) + log(1 - 0.1)) / 3.
    expected = -(math.log(0.5 + EPS) + math.log(0.75 + EPS) + math.log(0.9 + EPS)) / 3
    assert out["loss_score"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_segmenter_losses_more_objects_than_slots() -> None:
    # T = 3 slots, 5 true instances: only the 2 largest are in the batch, n_b = T - 1 = 2.
    gt = torch.zeros(1, 3, 8, 8)
    gt[0, 0, :4] = 1.0
    gt[0, 1, 5:, :3] = 1.0
    # Predictions 0 and 1 swap the instances; prediction 2 copies instance 0 but is past n_b.
    masks = torch.stack([gt[0, 1], gt[0, 0], gt[0, 0]]).unsqueeze(0)
    boxes = torch.tensor([[[0.0, 0, 4, 8], [5, 0, 8, 3], [0, 0, 0, 0]]])
    out = segmenter_losses(
        masks, torch.full((1, 3), 0.5), None, gt, boxes, torch.tensor([5]), min_pad=20.0
    )
    # Two perfect matches divided by n_b = 2 (not 3 or 5).
    assert out["loss_segm"].item() == pytest.approx(-1.0, abs=1e-5)
    expected_match = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(out["match"], expected_match)
    # Score targets [1, 1, 0] on scores 0.5 everywhere: every step costs -log(0.5).
    assert out["loss_score"].item() == pytest.approx(-math.log(0.5 + EPS), rel=1e-6)


def test_every_slot_supervised_without_a_stop_slot() -> None:
    # dataset.empty_last_slot=false (the authors' Cityscapes): T = 3 slots all hold instances of
    # the 5, so n_b = 3, every prediction is matched and every score target is 1: no stop step.
    gt = torch.zeros(1, 3, 8, 8)
    gt[0, 0, :4] = 1.0  # rows 0-3
    gt[0, 1, 5:, :3] = 1.0  # rows 5-7, cols 0-2
    gt[0, 2, 5:, 6:] = 1.0  # rows 5-7, cols 6-7
    boxes = torch.tensor([[[0.0, 0, 4, 8], [5, 0, 8, 3], [5, 6, 8, 8]]])
    assert supervised_counts(torch.tensor([5]), boxes).tolist() == [3]
    assert supervised_counts(torch.tensor([2]), boxes).tolist() == [2]  # the true count caps it
    out = segmenter_losses(
        gt.clone(), torch.full((1, 3), 0.5), None, gt, boxes, torch.tensor([5]), min_pad=20.0
    )
    assert out["loss_segm"].item() == pytest.approx(-1.0, abs=1e-5)  # three perfect matches / 3
    torch.testing.assert_close(out["match"], torch.eye(3)[None])
    torch.testing.assert_close(score_target(out["match"]), torch.ones(1, 3))
    # Targets all 1 on scores 0.5: every step costs -log(0.5 + 1e-5).
    assert out["loss_score"].item() == pytest.approx(-math.log(0.5 + EPS), rel=1e-6)


def test_segmenter_losses_box_matching_is_its_own() -> None:
    boxes, raster0, raster1 = _box_rasters()
    gt = torch.stack([raster0, raster1, torch.zeros(32, 32)]).unsqueeze(0)  # masks = boxes here
    # Masks in GT order, soft boxes swapped: each loss finds its own perfect matching.
    soft_boxes = torch.stack([raster1, raster0, torch.zeros(32, 32)]).unsqueeze(0)
    out = segmenter_losses(
        gt.clone(), torch.full((1, 3), 0.5), soft_boxes, gt, boxes, torch.tensor([2]), min_pad=2.0
    )
    assert out["loss_segm"].item() == pytest.approx(-1.0, abs=1e-5)
    assert out["loss_box"].item() == pytest.approx(-1.0, abs=1e-5)
    torch.testing.assert_close(out["match"][0, :2, :2], torch.eye(2))


@pytest.mark.parametrize("with_boxes", [True, False])
def test_segmenter_losses_finite_with_gradients(with_boxes: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    b, t, h, w = 2, 4, 16, 16
    mask_logits = torch.randn(b, t, h, w, generator=gen, requires_grad=True)
    score_logits = torch.randn(b, t, generator=gen, requires_grad=True)
    box_logits = torch.randn(b, t, h, w, generator=gen, requires_grad=True)
    gt = torch.zeros(b, t, h, w)
    gt[0, 0, 2:10, 2:12] = 1.0
    gt[0, 1, 11:15, 3:7] = 1.0
    gt[1, 0, 4:8, 4:8] = 1.0
    gt_boxes = torch.zeros(b, t, 4)
    gt_boxes[0, 0] = torch.tensor([2.0, 2.0, 10.0, 12.0])
    gt_boxes[0, 1] = torch.tensor([11.0, 3.0, 15.0, 7.0])
    gt_boxes[1, 0] = torch.tensor([4.0, 4.0, 8.0, 8.0])
    out = segmenter_losses(
        mask_logits.sigmoid(),
        score_logits.sigmoid(),
        box_logits.sigmoid() if with_boxes else None,
        gt,
        gt_boxes,
        torch.tensor([2, 1]),
        lambda_box=0.5,
        lambda_score=2.0,
        min_pad=3.0,
    )
    for key in ("loss_segm", "loss_box", "loss_score", "loss"):
        assert out[key].shape == () and torch.isfinite(out[key]), key
    total = out["loss_segm"] + 0.5 * out["loss_box"] + 2.0 * out["loss_score"]
    torch.testing.assert_close(out["loss"], total)
    assert out["match"].shape == (b, t, t) and not out["match"].requires_grad
    out["loss"].backward()
    for name, leaf in [("masks", mask_logits), ("scores", score_logits)]:
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name
    if with_boxes:
        assert box_logits.grad is not None and box_logits.grad.abs().sum() > 0
    else:
        assert out["loss_box"].item() == 0.0 and box_logits.grad is None
