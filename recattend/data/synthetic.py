"""Embedded synthetic instance data: generated from a seed, no files, the default dataset.

Two styles:

* ``leaves``: CVPPP-like rosettes. Elongated leaves of varied length, width and green shade radiate
  from a centre at the golden angle (as real phyllotaxis does); younger, shorter leaves are drawn
  last, on top of the older ones, over a textured soil-like background.
* ``shapes``: the authors' toy data: grey (100, 100, 100) background, green shapes with a red
  border (3 px at 224x224), radius U(15, 45) px at 224x224, later shapes occluding earlier ones.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``, so a dataset
is the same on every run, in every worker and on every rank, and splits never share an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from recattend.data.base import SPLITS, InstanceDataModule, RawSample

STYLES = ("leaves", "shapes")
SHAPE_KINDS = ("circle", "square", "triangle")
_SUBPIXEL = 4  # fixed-point bits for cv2 polygon drawing: smooth, anti-alias-free edges
_GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))


def _polygon(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32).reshape(-1, 1, 2)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, size[::-1], interpolation=cv2.INTER_CUBIC), -1, 1)


def render_soil(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A soil-like background: brown with mottling, grain and a few pebbles. float32 RGB 0-255."""
    h, w = size
    base = np.array([96, 72, 52], np.float32) * rng.uniform(0.8, 1.15)
    mottling = 18 * _smooth_noise(rng, size, 6) + 8 * _smooth_noise(rng, size, 24)
    grain = rng.normal(0, 6, (h, w)).astype(np.float32)
    img = base[None, None, :] + (mottling + grain)[..., None]
    for _ in range(int(rng.integers(5, 15))):
        centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        radius = float(rng.uniform(0.005, 0.02)) * min(h, w)
        shade = base * rng.uniform(0.6, 1.4)
        cv2.circle(
            img,
            _polygon(np.array(centre))[0, 0],
            int(radius * (1 << _SUBPIXEL)),
            shade.tolist(),
            -1,
            cv2.LINE_8,
            _SUBPIXEL,
        )
    return img


def _leaf_outline(centre: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """Leaf polygon: a thin petiole from the centre, then a pointed-oval blade. (K, 2) in x, y."""
    petiole = 0.25 * length
    blade = length - petiole
    s = np.linspace(0.0, 1.0, 24)
    # Half-width along the blade: wide near its base, pointed at the tip.
    half = 0.5 * width * np.sin(math.pi * s) ** 0.7 * (1.0 - 0.25 * s)
    along = petiole + blade * s
    stalk = max(0.06 * width, 0.6)
    u = np.concatenate([[0.0], along, along[::-1], [0.0]])
    v = np.concatenate([[stalk], np.maximum(half, stalk), -np.maximum(half, stalk)[::-1], [-stalk]])
    cos, sin = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + u * cos - v * sin, centre[1] + u * sin + v * cos], axis=1)


def render_leaves(
    rng: np.random.Generator, size: tuple[int, int], num_leaves: int, shade_jitter: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a rosette of ``num_leaves`` leaves on soil.

    Args:
        rng: the sample's generator.
        size: (H, W).
        num_leaves: leaves drawn (some may end up fully hidden and are dropped).
        shade_jitter: spread of the per-leaf green shade; 0 gives every leaf the same colour.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool, oldest leaf first.
    """
    h, w = size
    scale = min(h, w)
    img = render_soil(rng, size)
    labels = np.zeros((h, w), np.int32)
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.08, 0.08, 2) * scale
    hue0 = rng.uniform(38, 48)  # OpenCV hue (0-180): a yellowish to pure green plant
    phase = rng.uniform(0, 2 * math.pi)
    for i in range(num_leaves):
        age = 1.0 - i / max(num_leaves, 1)  # the first leaves are the oldest and longest
        length = scale * rng.uniform(0.24, 0.34) * (0.55 + 0.45 * age)
        width = length * rng.uniform(0.3, 0.5)
        angle = phase + i * _GOLDEN_ANGLE + rng.normal(0, 0.15)
        outline = _leaf_outline(centre, angle, length, width)
        hsv = np.array(
            [
                [
                    [
                        hue0 + shade_jitter * rng.normal(0, 3),
                        np.clip(150 + shade_jitter * rng.normal(0, 25), 60, 255),
                        np.clip(120 + 50 * age + shade_jitter * rng.normal(0, 20), 40, 255),
                    ]
                ]
            ],
            np.float32,
        )
        colour = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        leaf = np.zeros((h, w), np.uint8)
        cv2.fillPoly(leaf, [_polygon(outline)], 1, cv2.LINE_8, _SUBPIXEL)
        inside = leaf.astype(bool)
        # Shading: lighter towards the tip, a darker rim so touching leaves stay distinguishable.
        yy, xx = np.nonzero(inside)
        dist = np.hypot(xx - centre[0], yy - centre[1]) / max(length, 1.0)
        img[yy, xx] = colour * (0.85 + 0.25 * np.clip(dist, 0, 1))[:, None]
        rim = np.zeros((h, w), np.uint8)
        cv2.polylines(rim, [_polygon(outline)], True, 1, 1, cv2.LINE_8, _SUBPIXEL)
        img[rim.astype(bool)] *= 0.7
        labels[inside] = i + 1
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    masks = labels[None] == np.arange(1, num_leaves + 1)[:, None, None]
    return np.clip(img, 0, 255).astype(np.uint8), masks


def render_shapes(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_shapes: int,
    kinds: Sequence[str] = ("circle",),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the authors' toy shapes: green, red-bordered, later ones occluding earlier ones.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool in drawing order.
    """
    h, w = size
    k = min(h, w) / 224.0  # the authors' toy sizes are for 224x224
    img = np.full((h, w, 3), 100, np.uint8)
    labels = np.zeros((h, w), np.int32)
    border = max(1, round(3 * k))
    for i in range(num_shapes):
        radius = rng.uniform(15, 45) * k
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "circle":
            t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        elif kind == "square":
            t = math.pi / 4 + np.arange(4) * math.pi / 2
        else:
            t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        poly = _polygon(np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1))
        shape = np.zeros((h, w), np.uint8)
        cv2.fillPoly(shape, [poly], 1, cv2.LINE_8, _SUBPIXEL)
        img[shape.astype(bool)] = (0, 255, 0)
        cv2.polylines(img, [poly], True, (255, 0, 0), border, cv2.LINE_8, _SUBPIXEL)
        labels[shape.astype(bool)] = i + 1
    masks = labels[None] == np.arange(1, num_shapes + 1)[:, None, None]
    return img, masks


class SyntheticInstances(Sequence[RawSample]):
    """A fixed, seeded split of synthetic images, rendered on access.

    Args:
        style: "leaves" or "shapes".
        size: (H, W) the images are drawn at.
        length: images in the split.
        seed: dataset seed; with ``split`` and the index it fixes each image.
        split: "train", "val" or "test".
        min_objects, max_objects: objects drawn per image, uniform over this inclusive range.
        shade_jitter: per-leaf colour spread (``leaves``).
        kinds: shape kinds to draw from (``shapes``).
    """

    def __init__(
        self,
        *,
        style: str,
        size: tuple[int, int],
        length: int,
        seed: int,
        split: str,
        min_objects: int,
        max_objects: int,
        shade_jitter: float = 1.0,
        kinds: Sequence[str] = ("circle",),
    ) -> None:
        self.style, self.size, self.length = style, size, length
        self.seed, self.split_id = seed, SPLITS.index(split)
        self.min_objects, self.max_objects = min_objects, max_objects
        self.shade_jitter, self.kinds = shade_jitter, tuple(kinds)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RawSample:  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.split_id, index])
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        if self.style == "leaves":
            image, masks = render_leaves(rng, self.size, count, self.shade_jitter)
        else:
            image, masks = render_shapes(rng, self.size, count, self.kinds)
        meta: dict[str, Any] = {
            "id": f"{self.style}_{SPLITS[self.split_id]}_{index:06d}",
            "source": None,
            "orig_size": self.size,
        }
        return RawSample(image, masks, meta)


class SyntheticDataModule(InstanceDataModule):
    """The embedded synthetic dataset (``dataset=synthetic``), no downloads.

    Args:
        style: "leaves" (CVPPP-like rosettes) or "shapes" (the authors' toy circles).
        min_objects, max_objects: objects drawn per image (inclusive range, 0 allowed).
        num_train, num_val, num_test: split sizes.
        seed: the dataset seed (independent of the run seed, so the data stay fixed across runs).
        shade_jitter: per-leaf colour spread for ``leaves``; 0 for a single green.
        kinds: shape kinds for ``shapes`` (circle, square, triangle).
        **kwargs: the :class:`InstanceDataModule` arguments (resolution, max_instances, ...).
    """

    paper_table = "cvppp"  # the results table eval prints (recattend.report.TABLES)

    def __init__(
        self,
        *,
        style: str = "leaves",
        min_objects: int = 2,
        max_objects: int = 10,
        num_train: int = 1000,
        num_val: int = 64,
        num_test: int = 128,
        seed: int = 0,
        shade_jitter: float = 1.0,
        kinds: Sequence[str] = ("circle",),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if style not in STYLES:
            raise ValueError(f"dataset.style='{style}' must be one of {list(STYLES)}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(
                f"dataset.min_objects={min_objects}, dataset.max_objects={max_objects}: "
                "need 0 <= min_objects <= max_objects"
            )
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"dataset.{key}={value} must be >= 1")
        unknown = sorted(set(kinds) - set(SHAPE_KINDS))
        if unknown or not kinds:
            raise ValueError(
                f"dataset.kinds={list(kinds)} must be a non-empty subset of {list(SHAPE_KINDS)}"
            )
        self.style, self.seed = style, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.lengths = {"train": num_train, "val": num_val, "test": num_test}
        self.shade_jitter, self.kinds = shade_jitter, tuple(kinds)

    def build_source(self, split: str) -> SyntheticInstances:
        return SyntheticInstances(
            style=self.style,
            size=self.resolution,
            length=self.lengths[split],
            seed=self.seed,
            split=split,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            shade_jitter=self.shade_jitter,
            kinds=self.kinds,
        )
