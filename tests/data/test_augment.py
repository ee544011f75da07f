"""Augmentation policies: the authors' batch-shared shift, stage-bound flips, refreshed targets."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recattend.data import SyntheticDataModule
from recattend.data.augment import AugmentPolicy, transform_batch
from recattend.data.targets import angle_classes, collate, instance_targets

PAPER = {"shift": 16, "flips": ["horizontal", "vertical", "transpose"], "flip_stages": ["box"]}


def _batch() -> dict:
    """Two 12x12 images: image 0 has a 3x4 and a 2x2 instance, image 1 one instance at the edge."""
    h = w = 12
    first = np.zeros((2, h, w), bool)
    first[0, 2:5, 3:7] = True  # rows 2-4, cols 3-6: area 12
    first[1, 8:10, 8:10] = True  # area 4
    second = np.zeros((1, h, w), bool)
    second[0, 0:2, 10:12] = True  # top-right corner, area 4
    rng = np.random.default_rng(0)
    samples = [
        instance_targets(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), m, 3, {"id": i})
        for i, m in enumerate([first, second])
    ]
    return collate(samples)


def test_shift_moves_image_masks_and_targets_together() -> None:
    batch = _batch()
    out = transform_batch(batch, offset=(3, -2))  # 3 px down, 2 px left
    # Every pixel (y, x) comes from (y - 3, x + 2); uncovered rows (top 3) and columns (right 2)
    # are zero, 255 in the angle map.
    torch.testing.assert_close(out["image"][..., 3:, :10], batch["image"][..., :9, 2:])
    assert (out["image"][..., :3, :] == 0).all() and (out["image"][..., :, 10:] == 0).all()
    assert (out["angles"][:, :3] == 255).all() and (out["angles"][:, :, 10:] == 255).all()
    torch.testing.assert_close(out["angles"][:, 3:, :10], batch["angles"][:, :9, 2:])
    torch.testing.assert_close(out["foreground"], out["masks"].amax(1, keepdim=True))
    # Image 0: boxes (2, 3, 5, 7) and (8, 8, 10, 10) move by (+3, -2).
    assert out["boxes"][0, :2].tolist() == [[5, 1, 8, 5], [11, 6, 12, 8]]
    # The 2x2 instance lost its lower row: still present (area 2), still second by area.
    assert out["masks"][0, 1].sum() == 2 and out["num_instances"][0] == 2
    # Image 1: the corner instance (cols 10-11) moves to cols 8-9, rows 3-4.
    assert out["boxes"][1, 0].tolist() == [3, 8, 5, 10]


def test_an_instance_moved_out_of_the_image_is_counted_out_and_the_slots_resorted() -> None:
    batch = _batch()
    # 6 px right: image 1's corner instance leaves; in image 0 the 3x4 instance keeps cols 9-11
    # (area 9) and the 2x2 one (cols 14-15) leaves.
    out = transform_batch(batch, offset=(0, 6))
    assert out["num_instances"].tolist() == [1, 0]
    assert out["masks"][1].sum() == 0 and out["boxes"][1].abs().sum() == 0
    assert out["masks"][0, 0].sum() == 9 and out["boxes"][0, 0].tolist() == [2, 9, 5, 12]
    assert out["masks"][0, 1].sum() == 0
    # Re-sorting: moving up 4 px leaves 1 row (area 4) of the 3x4 instance; the 2x2 one is whole
    # (area 4); stable order keeps the first first. Up 3 more: the first is gone.
    out = transform_batch(batch, offset=(-4, 0))
    assert out["masks"][0, :2].sum((1, 2)).tolist() == [4, 4]
    out = transform_batch(batch, offset=(-5, 0))
    assert out["masks"][0, 0].sum() == 4 and out["boxes"][0, 0].tolist() == [3, 8, 5, 10]
    assert out["num_instances"][0] == 1


@pytest.mark.parametrize("flip", ["horizontal", "vertical", "transpose"])
def test_flips_mirror_the_angle_classes(flip: str) -> None:
    # The flipped angle map equals the angle classes computed afresh on the flipped masks, and
    # each box is its mirror image on the 12x12 grid.
    batch = _batch()
    out = transform_batch(batch, [flip])
    for b in range(2):
        masks = out["masks"][b, : int(out["num_instances"][b])].numpy().astype(bool)
        assert (out["angles"][b].numpy() == angle_classes(masks[::-1])).all()
        y0, x0, y1, x1 = batch["boxes"][b].unbind(-1)
        mirrored = {
            "horizontal": (y0, 12 - x1, y1, 12 - x0),
            "vertical": (12 - y1, x0, 12 - y0, x1),
            "transpose": (x0, y0, x1, y1),
        }[flip]
        present = batch["boxes"][b, :, 2] > 0
        expected = torch.where(present[:, None], torch.stack(mirrored, -1), 0.0)
        assert torch.equal(out["boxes"][b], expected)


def test_paper_policy_never_flips_in_the_full_stage_and_flips_in_the_box_stage() -> None:
    policy = AugmentPolicy.parse({**PAPER, "shift": 0}, (12, 12))
    batch = _batch()
    torch.manual_seed(0)
    for _ in range(20):
        out = policy(batch, "full")
        assert torch.equal(out["image"], batch["image"]) and torch.equal(
            out["angles"], batch["angles"]
        )
    changed = sum(not torch.equal(policy(batch, "box")["image"], batch["image"]) for _ in range(20))
    assert changed > 10  # 1 - 1/8 of the draws flip something


def test_paper_policy_shifts_the_whole_batch_by_one_offset() -> None:
    policy = AugmentPolicy.parse(PAPER, (12, 12))
    batch = _batch()
    batch["image"] = torch.ones_like(batch["image"])
    torch.manual_seed(1)
    seen = set()
    for _ in range(30):
        zero = policy(batch, "full")["image"][:, 0] == 0  # the uncovered band of each image
        assert torch.equal(zero[0], zero[1])  # one offset for the batch
        seen.add(int(zero.sum()))
    assert len(seen) > 5


def test_the_datamodule_applies_the_policy_to_training_batches_in_its_stage() -> None:
    dm = SyntheticDataModule(
        resolution=[32, 32], max_instances=3, batch_size=2, num_train=4, num_val=2, num_test=2,
        min_objects=1, max_objects=3, num_workers=0, augment={**PAPER, "shift": 0},
    )  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch  # validation and test: never
    dm.trainer = SimpleNamespace(training=True)
    dm.stage = "full"
    assert dm.on_after_batch_transfer(batch, 0)["image"].equal(batch["image"])
    dm.stage = "box"
    torch.manual_seed(0)
    flipped = [
        not dm.on_after_batch_transfer(batch, 0)["image"].equal(batch["image"]) for _ in range(8)
    ]
    assert any(flipped)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"HorizontalFlip": {"p": 0.5}}, "per_image"),
        ({"shift": -1}, "shift=-1"),
        ({"flips": ["diagonal"]}, "unknown \\['diagonal'\\]"),
    ],
)
def test_bad_policies_are_refused(augment: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentPolicy.parse(augment, (12, 12))
    with pytest.raises(ValueError, match="not square"):
        AugmentPolicy.parse({"flips": ["transpose"]}, (12, 16))
