"""Post-processing into label maps on hand-made soft masks with hand-computed labels."""

from __future__ import annotations

import pytest
import torch

from recattend.postprocess import label_map, relabel_consecutive


def test_score_weighting_decides_the_winner() -> None:
    # One pixel, two timesteps. Raw masks: y_0 = 0.9 > y_1 = 0.6, so unweighted t=0 would win.
    # Weighted: y_0 * s_0 = 0.9 * 0.5 = 0.45 < y_1 * s_1 = 0.6 * 1.0 = 0.6, so t=1 wins; t=0 keeps
    # no pixel, hence t=1 is the first (and only) instance: label 1.
    masks = torch.tensor([0.9, 0.6]).view(1, 2, 1, 1)
    scores = torch.tensor([[0.5, 1.0]])
    out = label_map(masks, scores)
    assert out.dtype == torch.int64 and out.shape == (1, 1, 1)
    assert out.item() == 1
    # Label 1 alone cannot tell t=0 from t=1, so add a second pixel only t=0 covers:
    # pixel 0: 0.45 vs 0.6 -> t=1; pixel 1: 0.9 * 0.5 = 0.45 vs 0.0 -> t=0.
    # Both timesteps present, numbered in timestep order: t=0 -> 1, t=1 -> 2.
    masks = torch.tensor([[0.9, 0.9], [0.6, 0.0]]).view(1, 2, 1, 2)
    out = label_map(masks, torch.tensor([[0.5, 1.0]]))
    assert out.tolist() == [[[2, 1]]]
    # Unweighted (equal scores), t=0 wins pixel 0 as well (0.9 > 0.6): one instance only.
    assert label_map(masks, torch.ones(1, 2)).tolist() == [[[1, 1]]]


def test_threshold_is_strict_and_drops_weak_pixels() -> None:
    # One timestep with s = 1, pixel values 0.2, 0.3, 0.31, 0.8.
    # Default threshold 0.3 (strict >): 0.2 and 0.3 -> background, 0.31 and 0.8 -> instance 1.
    masks = torch.tensor([0.2, 0.3, 0.31, 0.8]).view(1, 1, 1, 4)
    scores = torch.ones(1, 1)
    assert label_map(masks, scores).tolist() == [[[0, 0, 1, 1]]]
    # Cityscapes threshold 0.6: only 0.8 survives.
    assert label_map(masks, scores, threshold=0.6).tolist() == [[[0, 0, 0, 1]]]
    # A low score pushes every pixel under the threshold: 0.8 * 0.3 = 0.24 <= 0.3.
    assert label_map(masks, torch.tensor([[0.3]])).tolist() == [[[0, 0, 0, 0]]]


def test_empty_timesteps_get_no_label_and_labels_are_consecutive_in_timestep_order() -> None:
    # T = 4 on a 1x3 image, all scores 1:
    #   t=0: all zero            -> below the threshold everywhere
    #   t=1: 0.9 on pixel 2
    #   t=2: 0.5 on pixels 0..2
    #   t=3: 0.7 on pixel 0
    # Pixel 0: max(0, 0, 0.5, 0.7) -> t=3; pixel 1: max(0, 0, 0.5, 0) -> t=2;
    # pixel 2: max(0, 0.9, 0.5, 0) -> t=1.
    # Present timesteps in order: 1, 2, 3 -> labels 1, 2, 3 (t=0 gets none).
    masks = torch.zeros(1, 4, 1, 3)
    masks[0, 1, 0, 2] = 0.9
    masks[0, 2, 0, :] = 0.5
    masks[0, 3, 0, 0] = 0.7
    assert label_map(masks, torch.ones(1, 4)).tolist() == [[[3, 2, 1]]]
    # Now t=2 also loses pixel 1 (t=3 covers it at 0.7): t=2 ends up empty, so t=3 becomes 2.
    masks[0, 3, 0, 1] = 0.7
    assert label_map(masks, torch.ones(1, 4)).tolist() == [[[2, 2, 1]]]


def test_batch_images_are_independent() -> None:
    # Random soft masks: the batched result equals the single-image results stacked.
    torch.manual_seed(0)
    masks = torch.rand(3, 4, 5, 6)
    scores = torch.rand(3, 4)
    batched = label_map(masks, scores)
    singles = torch.cat([label_map(masks[i : i + 1], scores[i : i + 1]) for i in range(3)])
    assert torch.equal(batched, singles)
    # Image a uses only t=2, image b uses t=0 (top row) and t=1 (bottom row): each image is
    # numbered from 1 on its own, so a's t=2 is 1 although b holds two instances.
    a = torch.zeros(1, 3, 2, 2)
    a[0, 2] = 0.9
    b = torch.zeros(1, 3, 2, 2)
    b[0, 0, 0] = 0.9
    b[0, 1, 1] = 0.9
    out = label_map(torch.cat([a, b]), torch.ones(2, 3))
    assert out[0].tolist() == [[1, 1], [1, 1]]
    assert out[1].tolist() == [[1, 1], [2, 2]]


def test_label_map_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="scores"):
        label_map(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([[0, 7, 9], [9, 0, 7]], [[0, 1, 2], [2, 0, 1]]),  # gaps: 7 -> 1, 9 -> 2
        ([[100, 0], [101, 102]], [[1, 0], [2, 3]]),  # offset +99: order kept
        ([[3, 1], [2, 0]], [[3, 1], [2, 0]]),  # already consecutive: unchanged
        ([[5, 5], [5, 5]], [[1, 1], [1, 1]]),  # no background at all
        ([[0, 0], [0, 0]], [[0, 0], [0, 0]]),  # background only
    ],
)
def test_relabel_consecutive(labels: list[list[int]], expected: list[list[int]]) -> None:
    out = relabel_consecutive(torch.tensor(labels, dtype=torch.int32))
    assert out.dtype == torch.int64
    assert out.tolist() == expected


def test_refine_labels_dilates_ands_and_drops_small_ones_by_hand() -> None:
    from recattend.postprocess import refine_labels

    labels = torch.zeros(6, 8, dtype=torch.int64)
    labels[1:3, 1:3] = 4  # 4 pixels
    labels[4, 6] = 9  # 1 pixel
    # 3x3 dilation grows instance 4 to rows 0..3, cols 0..3 (16 px) and 9 to rows 3..5, cols 5..7.
    grown, kept = refine_labels(labels, dilate=3)
    assert kept.tolist() == [4, 9]
    assert int((grown == 1).sum()) == 16 and int((grown == 2).sum()) == 9
    # AND with a foreground that covers only the left half keeps instance 4's 16 px, drops 9.
    foreground = torch.zeros(6, 8)
    foreground[:, :4] = 0.9
    anded, kept = refine_labels(labels, foreground, dilate=3)
    assert kept.tolist() == [4]
    assert int(anded.max()) == 1 and int((anded == 1).sum()) == 16
    # min_size 4 removes both (4 px and 1 px, "at most"), 3 keeps the 4-pixel one.
    assert int(refine_labels(labels, min_size=4)[0].max()) == 0
    small, _ = refine_labels(labels, min_size=3)
    assert int(small.max()) == 1 and int((small == 1).sum()) == 4
    with pytest.raises(ValueError, match="odd"):
        refine_labels(labels, dilate=4)


def test_majority_class_per_instance() -> None:
    from recattend.postprocess import majority_class

    labels = torch.tensor([[1, 1, 1, 2], [0, 3, 3, 2]])
    semantic = torch.tensor([[3, 3, 5, 0], [1, 0, 0, 0]])
    # Instance 1: classes 3, 3, 5 -> 3. Instance 2: all background -> 0. Instance 3: background.
    assert majority_class(labels, semantic).tolist() == [3, 0, 0]
