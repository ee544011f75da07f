"""Teacher forcing: the switches per stage and probability, which instance is fed, its noise."""

from __future__ import annotations

import pytest
import torch

from recattend.lit.rollout import (
    BOX_PAD_RATIO,
    BOX_SHIFT,
    MASK_NOISE,
    StepForcing,
    TeacherForcing,
)
from recattend.losses import padded_box_edges
from recattend.models.segmenter import BoxState


class SoftBoxModel:
    """Stands in for the segmenter: its soft box b_t is a fixed map."""

    def __init__(self, soft_box: torch.Tensor) -> None:
        self.map = soft_box

    def soft_box(self, box: BoxState) -> torch.Tensor:
        return self.map


def _box(b: int, z: bool = True) -> BoxState:
    ones = torch.ones(b, 2)
    return BoxState(
        ones * 3, ones * 4, ones, torch.ones(b, 3), torch.zeros(b, 8) if z else None, None
    )


def _batch() -> dict[str, torch.Tensor]:
    """Two 16x16 images, instances in slots 0 (rows 0-3, cols 0-3) and 1 (rows 8-15, cols 8-15)."""
    masks = torch.zeros(2, 3, 16, 16)
    masks[:, 0, :4, :4] = 1.0
    masks[:, 1, 8:, 8:] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 0.0, 0.0]])
    return {"image": torch.rand(2, 3, 16, 16), "masks": masks, "boxes": boxes.expand(2, 3, 4)}


def test_the_switches_follow_the_stage_and_the_probabilities() -> None:
    forcing = TeacherForcing()
    # The box stage: the canvas always takes ground truth, the patch never a ground-truth box.
    assert forcing.draw("mask", 0, 3, "box", torch.device("cpu")).tolist() == [True] * 3
    assert forcing.draw("box", 0, 3, "box", torch.device("cpu")).tolist() == [False] * 3
    # The full stage without probabilities (ScheduledSampling absent): nothing is fed.
    assert forcing.draw("mask", 0, 3, "full", torch.device("cpu")).tolist() == [False] * 3
    forcing.probabilities = {"box": torch.tensor([0.0, 1.0]), "mask": torch.tensor([1.0, 0.0])}
    assert forcing.draw("mask", 0, 4, "full", torch.device("cpu")).all()
    assert not forcing.draw("mask", 1, 4, "full", torch.device("cpu")).any()
    assert forcing.draw("box", 1, 4, "full", torch.device("cpu")).all()


def test_the_maximally_overlapping_instance_is_fed_with_its_noise() -> None:
    torch.manual_seed(0)
    batch = _batch()
    forcing = TeacherForcing()
    forcing.probabilities = {"box": torch.ones(3), "mask": torch.ones(3)}
    # b_t covers the bottom-right quarter: slot 1's padded box overlaps it most.
    soft_box = torch.zeros(2, 16, 16)
    soft_box[:, 8:, 8:] = 1.0
    box_masks = batch["masks"].clone()  # the padded boxes as masks, here the instances themselves
    knob = forcing.knob(SoftBoxModel(soft_box), 0, _box(2), batch, box_masks, "full", 1.0)
    assert knob.use_box.all() and knob.use_mask.all()
    # The fed mask is slot 1's, scaled by 1 - U(0, 0.3) per pixel.
    fed = knob.mask
    assert (fed[:, 8:, 8:] >= 1 - MASK_NOISE).all() and (fed[:, 8:, 8:] <= 1).all()
    assert (fed[:, :8].eq(0)).all() and (fed[:, :, :8].eq(0)).all()
    # Slot 1's box (8, 8)-(16, 16): centre 11.5, delta 7; padded by max(ratio * 8, 1) a side
    # with ratio in [0.1, 0.3]: 0.8-2.4 px, so the delta lies in [7 + 1.6, 7 + 4.8]; the centre
    # moves by at most 5 % of that delta.
    low, high = BOX_PAD_RATIO
    assert ((knob.size >= 7 + 2 * 8 * low - 1e-5) & (knob.size <= 7 + 2 * 8 * high + 1e-5)).all()
    assert ((knob.center - 11.5).abs() <= BOX_SHIFT * knob.size + 1e-5).all()


def test_the_coordinate_box_iou_picks_the_instance_by_the_box_coordinates() -> None:
    # The soft box b_t covers the top-left corner in both images: the soft IoU feeds slot 0. The
    # predicted boxes' coordinates: image 0's (8, 8)-(16, 16) lies inside slot 1's padded box
    # (6.4, 6.4)-(17.6, 17.6) and is disjoint from slot 0's (-1, -1)-(5, 5); image 1's
    # (0, 0)-(2, 2) is the empty slot 2's box (IoU 1; slot 0's: 4 / 36). Any of the T slots may
    # be chosen, so image 1 is fed the empty slot's all-zero mask.
    batch = _batch()
    soft_box = torch.zeros(2, 16, 16)
    soft_box[:, :4, :4] = 1.0
    model = SoftBoxModel(soft_box)
    center, size = torch.tensor([[11.5, 11.5], [0.5, 0.5]]), torch.tensor([[7.0, 7.0], [1.0, 1.0]])
    box = BoxState(center, size, torch.ones(2, 2), torch.ones(2, 3), torch.zeros(2, 8), None)
    probabilities = {"box": torch.ones(3), "mask": torch.ones(3)}
    soft = TeacherForcing()
    soft.probabilities = probabilities
    fed = soft.knob(model, 0, box, batch, batch["masks"], "full", 1.0).mask
    assert (fed[:, :4, :4] > 0).all() and fed[:, 4:].eq(0).all()  # slot 0 in both images
    coordinates = TeacherForcing(box_iou="coordinates")
    coordinates.probabilities = probabilities
    padded = padded_box_edges(batch["boxes"], torch.tensor([2, 2]), 1.0)
    fed = coordinates.knob(model, 0, box, batch, padded, "full", 1.0).mask
    assert (fed[0, 8:, 8:] > 0).all() and fed[0, :8].eq(0).all()  # slot 1
    assert fed[1].eq(0).all()  # the empty slot 2


@pytest.mark.parametrize(
    ("jitter", "centres"), [("padded", [11.875, 1.775]), ("tight", [11.7, 1.6])]
)
def test_the_fed_box_centre_shift_follows_the_jitter_scale(
    monkeypatch, jitter: str, centres: list[float]
) -> None:
    # Every uniform draw is 0.75: pad ratio 0.1 + 0.2 * 0.75 = 0.25, centre shift
    # 0.05 * (2 * 0.75 - 1) = 0.025 of the scale. With min_pad 4, image 0 is fed slot 1
    # (8, 8)-(16, 16), tight size 8, padded by max(2, 4) = 4 to (4, 4)-(20, 20): centre 11.5,
    # delta 15; image 1 slot 0 (0, 0)-(4, 4), tight size 4, padded by 4 to (-4, -4)-(8, 8):
    # centre 1.5, delta 11. "padded" shifts by 0.025 x 15 and 11 (0.375, 0.275); "tight", the
    # authors', by 0.025 x 8 and 4 (0.2, 0.1): 2.75x less for the small instance.
    batch = _batch()
    soft_box = torch.zeros(2, 16, 16)
    soft_box[0, 8:, 8:] = 1.0
    soft_box[1, :4, :4] = 1.0
    monkeypatch.setattr(torch, "rand", lambda *size, **where: torch.full(size, 0.75, **where))
    monkeypatch.setattr(torch, "rand_like", lambda x: torch.full_like(x, 0.75))
    forcing = TeacherForcing(jitter=jitter)
    forcing.probabilities = {"box": torch.ones(3), "mask": torch.ones(3)}
    knob = forcing.knob(SoftBoxModel(soft_box), 0, _box(2), batch, batch["masks"], "full", 4.0)
    torch.testing.assert_close(knob.size, torch.tensor([[15.0, 15.0], [11.0, 11.0]]))
    torch.testing.assert_close(knob.center, torch.tensor(centres)[:, None].expand(2, 2))


def test_without_a_box_network_the_step_feeds_its_own_slot_and_never_a_box() -> None:
    batch = _batch()
    forcing = TeacherForcing()
    forcing.probabilities = {"box": torch.ones(3), "mask": torch.ones(3)}
    model = SoftBoxModel(torch.zeros(2, 16, 16))
    knob = forcing.knob(model, 1, _box(2, z=False), batch, batch["masks"], "full", 1.0)
    assert not knob.use_box.any() and knob.use_mask.all()
    assert (knob.mask[:, 8:, 8:] > 0).all() and knob.mask[:, :8].eq(0).all()  # slot t = 1
    forcing.probabilities = None  # the box stage feeds masks whatever the probabilities
    box_stage = forcing.knob(model, 1, _box(2, z=False), batch, batch["masks"], "box", 1.0)
    assert box_stage.use_mask.all() and not box_stage.use_box.any()
    assert forcing.knob(model, 1, _box(2), batch, batch["masks"], "full", 1.0) is None


def test_a_knob_replaces_boxes_and_canvas_writes_only_where_it_is_used() -> None:
    use = torch.tensor([True, False])
    knob = StepForcing(
        use, torch.full((2, 2), 9.0), torch.full((2, 2), 5.0), ~use, torch.ones(2, 4, 4)
    )
    box = _box(2)
    patch = knob.patch_box(box)
    assert patch.center.tolist() == [[9.0, 9.0], [3.0, 3.0]]
    assert patch.size.tolist() == [[5.0, 5.0], [4.0, 4.0]]
    written = knob.write(torch.full((2, 4, 4), 0.25))
    assert written[0].eq(0.25).all() and written[1].eq(1.0).all()
    none = StepForcing(~use & use, knob.center, knob.size, use, knob.mask)
    assert none.patch_box(box) is None
