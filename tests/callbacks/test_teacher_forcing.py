"""Teacher forcing: the switches per stage and probability, which instance is fed, its noise."""

from __future__ import annotations

import torch

from recattend.callbacks.teacher_forcing import (
    BOX_PAD_RATIO,
    BOX_SHIFT,
    MASK_NOISE,
    Knob,
    TeacherForcing,
)
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
    knob = Knob(use, torch.full((2, 2), 9.0), torch.full((2, 2), 5.0), ~use, torch.ones(2, 4, 4))
    box = _box(2)
    patch = knob.patch_box(box)
    assert patch.center.tolist() == [[9.0, 9.0], [3.0, 3.0]]
    assert patch.size.tolist() == [[5.0, 5.0], [4.0, 4.0]]
    written = knob.write(torch.full((2, 4, 4), 0.25))
    assert written[0].eq(0.25).all() and written[1].eq(1.0).all()
    none = Knob(~use & use, knob.center, knob.size, use, knob.mask)
    assert none.patch_box(box) is None
