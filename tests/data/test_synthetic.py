"""The embedded synthetic data: determinism, the batch contract, edge counts, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recattend.data import SyntheticDataModule
from recattend.data.synthetic import SyntheticInstances
from recattend.structures import ANGLE_IGNORE


def make(**kwargs) -> SyntheticDataModule:
    args = dict(
        resolution=[64, 64],
        max_instances=6,
        batch_size=4,
        num_train=8,
        num_val=4,
        num_test=4,
        augment=None,
    )
    return SyntheticDataModule(**{**args, **kwargs})


@pytest.mark.parametrize("style", ["leaves", "shapes"])
def test_same_seed_same_images_other_seed_other_images(style: str) -> None:
    def draw(seed: int) -> SyntheticInstances:
        return SyntheticInstances(
            style=style,
            size=(48, 64),
            length=3,
            seed=seed,
            split="train",
            min_objects=2,
            max_objects=5,
        )

    a, b, c = draw(7), draw(7), draw(8)
    for i in range(3):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        np.testing.assert_array_equal(a[i].masks, b[i].masks)
        assert a[i].image.shape == (48, 64, 3) and a[i].image.dtype == np.uint8
    assert any(not np.array_equal(a[i].image, c[i].image) for i in range(3))
    # Splits never share images.
    val = SyntheticInstances(
        style=style, size=(48, 64), length=3, seed=7, split="val", min_objects=2, max_objects=5
    )
    assert not np.array_equal(a[0].image, val[0].image)


@pytest.mark.parametrize("style", ["leaves", "shapes"])
def test_batch_contract_shapes_dtypes_and_ranges(style: str) -> None:
    dm = make(style=style, min_objects=1, max_objects=6)
    batch = next(iter(dm.train_dataloader()))
    b, t, h, w = 4, 7, 64, 64
    expected = {
        "image": ((b, 3, h, w), torch.float32),
        "masks": ((b, t, h, w), torch.float32),
        "num_instances": ((b,), torch.int64),
        "boxes": ((b, t, 4), torch.float32),
        "foreground": ((b, 1, h, w), torch.float32),
        "angles": ((b, h, w), torch.int64),
    }
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert set(batch["masks"].unique().tolist()) <= {0.0, 1.0}
    areas = batch["masks"].sum(dim=(2, 3))
    assert (areas[:, :-1] >= areas[:, 1:]).all(), "instances are sorted by area, largest first"
    filled = (areas > 0).sum(dim=1)
    assert torch.equal(filled, batch["num_instances"].clamp(max=t - 1))
    assert (batch["foreground"][:, 0] == (batch["masks"].sum(1) > 0)).all()
    on = batch["angles"] != ANGLE_IGNORE
    assert torch.equal(on, batch["foreground"][:, 0].bool()) and batch["angles"][on].max() < 8
    assert len(batch["meta"]) == b and batch["meta"][0]["orig_size"] == (h, w)


def test_images_without_instances() -> None:
    dm = make(min_objects=0, max_objects=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["num_instances"].tolist() == [0, 0, 0, 0]
    assert (
        batch["masks"].sum() == 0 and batch["boxes"].sum() == 0 and batch["foreground"].sum() == 0
    )


def test_more_instances_than_slots_keeps_the_largest() -> None:
    dm = make(style="shapes", min_objects=8, max_objects=8, max_instances=3)
    dm.setup("fit")
    raw = dm.datasets["train"].source[0]
    visible = sorted((int(m.sum()) for m in raw.masks if m.any()), reverse=True)
    sample = dm.datasets["train"][0]
    assert sample["masks"].shape[0] == 4
    assert sample["num_instances"].item() == len(visible) > 3
    assert sample["masks"].sum(dim=(1, 2)).tolist() == [*visible[:3], 0]


def test_augmentation_moves_masks_with_the_image() -> None:
    # A flip must move image and masks together: the flipped sample's masks are the mirrored masks
    # of the unflipped one, and the image mirrors too.
    plain = make(style="shapes", min_objects=1, max_objects=1)
    flipped = make(
        style="shapes",
        min_objects=1,
        max_objects=1,
        augment={"per_image": {"HorizontalFlip": {"p": 1.0}}},
    )
    plain.setup("fit")
    flipped.setup("fit")
    a, b = plain.datasets["train"][0], flipped.datasets["train"][0]
    assert torch.equal(b["masks"], a["masks"].flip(-1))
    assert torch.equal(b["image"], a["image"].flip(-1))
    assert torch.equal(
        b["boxes"][0],
        torch.tensor(
            [a["boxes"][0, 0], 64 - a["boxes"][0, 3], a["boxes"][0, 2], 64 - a["boxes"][0, 1]]
        ),
    )


def test_augmentations_are_reproducible_and_differ_between_workers() -> None:
    def epoch(workers: int) -> list[torch.Tensor]:
        torch.manual_seed(3)
        dm = make(
            style="shapes",
            num_train=8,
            batch_size=1,
            num_workers=workers,
            augment={"per_image": {"HorizontalFlip": {"p": 0.5}, "VerticalFlip": {"p": 0.5}}},
        )
        loader = dm.train_dataloader()
        return [b["image"] for b in loader]

    first, again = epoch(2), epoch(2)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    # Same images, random orientation: with 8 images and 4 flip states, at least two states occur
    # unless the generator is broken (probability of a single state: 4 * (1/4)^8 < 1e-4).
    dm = make(
        style="shapes",
        num_train=8,
        batch_size=1,
        num_workers=2,
        augment={"per_image": {"HorizontalFlip": {"p": 0.5}, "VerticalFlip": {"p": 0.5}}},
    )
    dm.setup("fit")
    base = make(style="shapes", num_train=8, batch_size=1)
    base.setup("fit")
    states = set()
    torch.manual_seed(5)
    for batch in dm.train_dataloader():
        index = int(batch["meta"][0]["id"].rsplit("_", 1)[1])
        ref = base.datasets["train"][index]["image"]
        for state, view in enumerate([ref, ref.flip(-1), ref.flip(-2), ref.flip(-1).flip(-2)]):
            if torch.equal(batch["image"][0], view):
                states.add(state)
    assert len(states) >= 2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_instances": 0}, "dataset.max_instances"),
        ({"resolution": [64]}, "dataset.resolution"),
        ({"resolution": [0, 64]}, "dataset.resolution"),
        ({"batch_size": 0}, "dataset.batch_size"),
        ({"style": "blobs"}, "dataset.style"),
        ({"min_objects": 5, "max_objects": 2}, "dataset.min_objects"),
        ({"num_val": 0}, "dataset.num_val"),
        ({"kinds": ["hexagon"]}, "dataset.kinds"),
        ({"augment": {"per_image": {"HorizontalFlipp": {"p": 0.5}}}}, "HorizontalFlip"),
        (
            {"augment": {"per_image": {"HorizontalFlip": {"prob": 0.5}}}},
            "dataset.augment.per_image.HorizontalFlip",
        ),
        ({"augment": {"HorizontalFlip": {"p": 0.5}}}, "dataset.augment.per_image"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make(**kwargs)
