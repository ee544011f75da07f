"""The contract's targets on hand-made masks with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import torch

from recattend.data.targets import (
    ANGLE_IGNORE,
    angle_classes,
    collate,
    instance_targets,
    tight_boxes,
)


def test_angle_classes_on_a_3x3_square() -> None:
    # Centroid at (1, 1). theta = atan2(dy, dx), y down;
    # class = floor((theta + pi/8 + pi) * 4 / pi) % 8.
    # Left (theta=pi) -> 8 % 8 = 0; up-left (-3pi/4) -> 1; up (-pi/2) -> 2; up-right (-pi/4) -> 3;
    # right (0) and the centre itself (atan2(0, 0) = 0) -> 4; down-right (pi/4) -> 5;
    # down (pi/2) -> 6; down-left (3pi/4) -> 7.
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 1:4, 1:4] = True
    expected = np.full((5, 5), ANGLE_IGNORE)
    expected[1:4, 1:4] = [[1, 2, 3], [0, 4, 4], [7, 6, 5]]
    np.testing.assert_array_equal(angle_classes(masks), expected)


def test_angle_classes_overlap_later_mask_on_top() -> None:
    # Mask 0 covers x = 0..1 (centroid 0.5): x=0 points left (0), x=1 right (4).
    # Mask 1, painted later, covers x = 1..2 (centroid 1.5): x=1 points left (0), x=2 right (4).
    # Where they overlap (x=1) mask 1 wins, so the map reads [0, 0, 4].
    masks = np.zeros((2, 1, 3), bool)
    masks[0, 0, :2] = True
    masks[1, 0, 1:] = True
    np.testing.assert_array_equal(angle_classes(masks), [[0, 0, 4]])


def test_tight_boxes_are_pixel_edges() -> None:
    masks = np.zeros((2, 6, 7), bool)
    masks[0, 2:5, 1:3] = True  # rows 2..4, cols 1..2
    assert tight_boxes(torch.from_numpy(masks)).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]
    # Any leading shape (a batch of slots), any dtype; a single pixel is a 1x1 box.
    batch = torch.zeros(1, 2, 5, 7)
    batch[0, 0, 4, 6] = 1.0
    assert tight_boxes(batch).tolist() == [[[4, 6, 5, 7], [0, 0, 0, 0]]]


def _three_instances() -> np.ndarray:
    """(4, 8, 8) masks: areas 2, 16, 8 and an empty one."""
    masks = np.zeros((4, 8, 8), bool)
    masks[0, 0:1, 0:2] = True  # area 2
    masks[1, 2:6, 2:6] = True  # area 16
    masks[2, 7:8, 0:8] = True  # area 8
    return masks  # masks[3] is empty: dropped


def test_instance_targets_sort_pad_truncate_and_count() -> None:
    h, w = 8, 8
    masks = _three_instances()
    out = instance_targets(np.zeros((h, w, 3), np.uint8), masks, max_instances=2, meta={"id": "x"})
    assert out["masks"].shape == (3, h, w) and out["masks"].dtype == torch.float32
    assert out["num_instances"].item() == 3  # the true count, beyond the 2 slots
    assert out["masks"][0].sum() == 16 and out["masks"][1].sum() == 8 and out["masks"][2].sum() == 0
    np.testing.assert_array_equal(out["boxes"].numpy(), [[2, 2, 6, 6], [7, 0, 8, 8], [0, 0, 0, 0]])
    # Foreground and angles cover all three instances, the truncated one included.
    assert out["foreground"].shape == (1, h, w) and out["foreground"].sum() == 26
    assert (out["angles"] != ANGLE_IGNORE).sum() == 26
    assert out["image"].shape == (3, h, w) and out["angles"].dtype == torch.int64


def test_without_a_stop_slot_all_t_slots_take_instances() -> None:
    # The same three instances with max_instances=2 (T = 3): the stop slot is filled too.
    out = instance_targets(
        np.zeros((8, 8, 3), np.uint8), _three_instances(), 2, {}, empty_last_slot=False
    )
    assert out["masks"].sum((1, 2)).tolist() == [16, 8, 2]
    np.testing.assert_array_equal(out["boxes"].numpy(), [[2, 2, 6, 6], [7, 0, 8, 8], [0, 0, 1, 2]])
    assert out["num_instances"].item() == 3
    # Classes follow their instances into every slot, the last one included.
    classes = np.array([7, 8, 9])  # of the masks in their given order (areas 2, 16, 8)
    out = instance_targets(
        np.zeros((8, 8, 3), np.uint8), _three_instances()[:3], 2, {}, classes, empty_last_slot=False
    )
    assert out["instance_classes"].tolist() == [8, 9, 7]


def test_instance_targets_without_instances() -> None:
    out = instance_targets(np.full((4, 6, 3), 255, np.uint8), np.zeros((0, 4, 6), bool), 3, {})
    assert out["num_instances"].item() == 0
    assert out["masks"].shape == (4, 4, 6) and out["masks"].sum() == 0
    assert out["foreground"].sum() == 0 and (out["angles"] == ANGLE_IGNORE).all()
    assert torch.allclose(out["image"], torch.ones(3, 4, 6))


def test_collate_keeps_meta_as_a_list() -> None:
    samples = [
        instance_targets(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 4), bool), 2, {"id": i})
        for i in range(3)
    ]
    batch = collate(samples)
    assert batch["masks"].shape == (3, 3, 4, 4) and batch["num_instances"].tolist() == [0, 0, 0]
    assert batch["meta"] == [{"id": 0}, {"id": 1}, {"id": 2}]
