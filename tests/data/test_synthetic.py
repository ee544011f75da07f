"""The embedded synthetic data: determinism, the batch contract, edge counts, augmentation."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch

from recattend.data import SyntheticDataModule
from recattend.data.rosette import render_rosette
from recattend.data.synthetic import SyntheticInstances, render_shapes
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


# dataset.render_size: the same scenes drawn larger, resized to the resolution, scored there.


def test_null_render_size_draws_exactly_what_it_drew_before() -> None:
    # The digest of these six samples (pinned from the renderers as they are): a layout equal to
    # the drawn size must not move a single pixel, and a change to a renderer is a change to every
    # dataset drawn with it, so it shows here. (A numpy or OpenCV upgrade that changes the
    # generator or the rasteriser changes it too.)
    digest = hashlib.sha256()
    for style in ("leaves", "shapes"):
        source = SyntheticInstances(
            style=style, size=(48, 64), length=3, seed=7, split="train", min_objects=2,
            max_objects=5, kinds=("circle", "square", "triangle"),
        )  # fmt: skip
        for i in range(3):
            raw = source[i]
            digest.update(raw.image.tobytes())
            digest.update(np.ascontiguousarray(raw.masks).tobytes())
    assert digest.hexdigest() == (
        "c21c63fe9513480e536c6b31a4a3d4ed18e485a6894e231c407de4361258dbe4"
    )
    # A layout equal to the size is the same as none.
    rng = [np.random.default_rng(5) for _ in range(2)]
    a, b = render_rosette(rng[0], (64, 64), 6), render_rosette(rng[1], (64, 64), 6, 1.0, (64, 64))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("render", [render_rosette, render_shapes])
def test_a_scene_is_the_same_at_four_times_the_size(render) -> None:
    # The layout's draws do not depend on the drawn size, so 512x512 is the 128x128 scene: each
    # object's 512 mask, brought back to 128 (area average > 1/2), overlaps its 128 mask.
    # fillPoly grows a shape by about half a drawn pixel; at 512 an outline one layout pixel
    # wide keeps the 128 margin, else every 512 leaf would be ~10 % smaller in area.
    ious, other = [], []
    for seed in range(4):
        _, small = render(np.random.default_rng(seed), (128, 128), 8)
        _, large = render(np.random.default_rng(seed), (512, 512), 8, layout_size=(128, 128))
        _, unrelated = render(np.random.default_rng(seed + 100), (128, 128), 8)
        assert large.shape == (8, 512, 512) and large.dtype == bool
        for a, b, c in zip(small, large, unrelated, strict=True):
            if a.sum() < 100:  # slivers of hidden objects: a boundary pixel is a large share
                continue
            down = cv2.resize(b.astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA) > 0.5
            ious.append((a & down).sum() / (a | down).sum())
            other.append((a & c).sum() / (a | c).sum())
    assert len(ious) >= 10
    assert np.mean(ious) > 0.93 and min(ious) > 0.8, ious  # 0.945, 0.846 (shapes 0.973, 0.932)
    assert np.mean(other) < 0.3  # what an unrelated scene scores


def test_render_size_draws_the_same_scenes_at_that_size() -> None:
    plain = make(num_test=4, max_instances=10).test_dataloader()
    large = make(num_test=4, max_instances=10, render_size=[256, 256])
    a, b = next(iter(plain)), next(iter(large.test_dataloader()))
    # The network still sees the resolution; meta gives the drawn size (what pixel_area and the
    # original-resolution evaluation read) and which draw each sample is.
    assert b["image"].shape == (4, 3, 64, 64) and b["masks"].shape == (4, 11, 64, 64)
    assert [m["orig_size"] for m in a["meta"]] == [(64, 64)] * 4
    assert [m["orig_size"] for m in b["meta"]] == [(256, 256)] * 4
    assert [(m["id"], m["split"], m["index"]) for m in b["meta"]] == [
        (f"leaves_test_{i:06d}", "test", i) for i in range(4)
    ]
    assert large.render_size == (256, 256) and make().render_size is None
    # The same scenes: every image's foreground overlaps its 64x64 draw (Dice > 0.9) and its
    # pixels are within a few grey levels, while the neighbouring image's differ far more.
    fa, fb = a["foreground"][:, 0], b["foreground"][:, 0]
    dice = 2 * (fa * fb).sum((1, 2)) / (fa.sum((1, 2)) + fb.sum((1, 2)))
    assert (dice > 0.9).all(), dice
    assert torch.equal(a["num_instances"], b["num_instances"])

    # Compared at the scene's scale (a 2 px blur): the soil's grain and the sensor noise are
    # drawn per pixel, so they differ pixel by pixel by design.
    def scene(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)

    same = (scene(a["image"]) - scene(b["image"])).abs().mean((1, 2, 3)) * 255
    shifted = (scene(a["image"]) - scene(b["image"]).roll(1, 0)).abs().mean((1, 2, 3)) * 255
    assert (same < 5).all() and (shifted > 5 * same).all(), (same, shifted)


@pytest.mark.parametrize("style", ["leaves", "shapes"])
def test_original_target_is_the_label_map_the_batch_was_resized_from(style: str) -> None:
    dm = make(style=style, num_test=4, max_instances=10, render_size=[256, 256])
    batch = next(iter(dm.test_dataloader()))
    for i, meta in enumerate(batch["meta"]):
        target = dm.original_target(meta)
        assert target.shape == (256, 256) and target.dtype == np.int32
        ids = np.unique(target).tolist()
        assert ids == list(range(len(ids))), "0 background, instances 1..N without gaps"
        # The pipeline's centred nearest-neighbour resize (cv2.INTER_NEAREST_EXACT) gives
        # network pixel (y, x) the drawn pixel at floor(4 (y + 0.5)) = 4y + 2 (its centre, as
        # the image's resampling), not 4y: those samples of the target are the batch's instances.
        sampled = target[2::4, 2::4]
        expected = sorted((sampled == k).tobytes() for k in ids[1:] if (sampled == k).any())
        slots = batch["masks"][i].bool().numpy()
        assert sorted(m.tobytes() for m in slots if m.any()) == expected
        assert len(expected) == int(batch["num_instances"][i])
    # Drawn at the resolution, the target is the batch's own label map.
    plain = make(style=style, num_test=4, max_instances=10)
    batch = next(iter(plain.test_dataloader()))
    target = plain.original_target(batch["meta"][1])
    assert target.shape == (64, 64)
    slots = batch["masks"][1].bool().numpy()
    assert sorted(m.tobytes() for m in slots if m.any()) == sorted(
        (target == k).tobytes() for k in range(1, target.max() + 1)
    )
    with pytest.raises(ValueError, match="not one of this dataset's"):
        plain.original_target({**batch["meta"][1], "id": "shapes_test_000009"})


@pytest.mark.parametrize("value", [[512], [0, 512], [512, -1], [512.5, 512], [True, 512], "512"])
def test_bad_render_size_names_the_key(value) -> None:
    with pytest.raises(ValueError, match=r"dataset\.render_size=.* two positive integers"):
        make(render_size=value)
