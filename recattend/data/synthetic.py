"""Embedded synthetic instance data: generated from a seed, no files, the default dataset.

Two styles:

* ``leaves``: top-view Arabidopsis rosettes in their pots, modelled on real phenotyping photos
  (:mod:`recattend.data.rosette`, its knobs in ``dataset.rosette``).
* ``shapes``: the authors' toy data: grey (100, 100, 100) background, green shapes with a red
  border (3 px at 224x224), radius U(15, 45) px at 224x224, later shapes occluding earlier ones.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``, so a dataset
is the same on every run, in every worker and on every rank, and splits never share an image.

A scene is laid out in the pixel frame of a *layout size* (the dataset's resolution) and may be
drawn at another size (``dataset.render_size``): the random draws, and so the scene, do not depend
on the drawn size; only the sharpness and the per-pixel sensor noise do. The pipeline then resizes
the drawn image to the network's resolution as it does a file dataset's, and
:meth:`SyntheticDataModule.original_target` draws the sample again for scoring at the drawn size.

The toy shapes' renderer lives here beside the seeded split and the DataModule; the rosettes'
(a scene model of its own, with its knobs) in :mod:`recattend.data.rosette`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from recattend.data.base import SPLITS, InstanceDataModule, RawSample
from recattend.data.drawing import SUBPIXEL, fill, frame, polygon, to_drawn
from recattend.data.rosette import RosetteOptions, render_rosette

STYLES = ("leaves", "shapes")
SHAPE_KINDS = ("circle", "square", "triangle")


def render_shapes(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_shapes: int,
    kinds: Sequence[str] = ("circle",),
    layout_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the authors' toy shapes: green, red-bordered, later ones occluding earlier ones.

    Args:
        rng: the sample's generator.
        size: (H, W) drawn.
        num_shapes: shapes drawn (some may end up fully hidden: their masks are empty).
        kinds: the kinds each shape is drawn from (circle, square, triangle).
        layout_size: (H0, W0) the scene is laid out in, as in
            :func:`~recattend.data.rosette.render_rosette`; None: ``size``.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool in drawing order.
    """
    h, w = size
    h0, w0, sy, sx = frame(size, layout_size)
    scaled = (h0, w0) != (h, w)
    k = min(h0, w0) / 224.0  # the authors' toy sizes are for 224x224
    img = np.full((h, w, 3), 100, np.uint8)
    labels = np.zeros((h, w), np.int32)
    border = max(1, round(3 * k * min(sx, sy))) if scaled else max(1, round(3 * k))
    edge = max(1, round(min(sx, sy))) if scaled else 1  # the masks' margin (drawing.fill)
    for i in range(num_shapes):
        radius = rng.uniform(15, 45) * k
        cx, cy = rng.uniform(0, w0), rng.uniform(0, h0)
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "circle":
            t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        elif kind == "square":
            t = math.pi / 4 + np.arange(4) * math.pi / 2
        else:
            t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        points = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
        poly = polygon(to_drawn(points, sy, sx) if scaled else points)
        shape = np.zeros((h, w), np.uint8)
        fill(shape, poly, edge)
        img[shape.astype(bool)] = (0, 255, 0)
        cv2.polylines(img, [poly], True, (255, 0, 0), border, cv2.LINE_8, SUBPIXEL)
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
        rosette: the rosettes' knobs (``leaves``); None: the defaults.
        kinds: shape kinds to draw from (``shapes``).
        layout_size: (H0, W0) the scenes are laid out in (module docstring): each image is the
            scene of a ``layout_size`` draw, drawn at ``size``; None: ``size``.

    Each sample's ``meta`` holds ``id`` ("<style>_<split>_<index:06d>"), ``source`` (None),
    ``orig_size`` (``size``), ``split`` and ``index`` (which draw it is, for
    :meth:`SyntheticDataModule.original_target`).
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
        rosette: RosetteOptions | None = None,
        kinds: Sequence[str] = ("circle",),
        layout_size: tuple[int, int] | None = None,
    ) -> None:
        self.style, self.size, self.length = style, (int(size[0]), int(size[1])), length
        self.seed, self.split_id = seed, SPLITS.index(split)
        self.min_objects, self.max_objects = min_objects, max_objects
        self.shade_jitter, self.kinds = shade_jitter, tuple(kinds)
        self.rosette = rosette or RosetteOptions()
        self.layout_size = self.size if layout_size is None else tuple(map(int, layout_size))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RawSample:  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.split_id, index])
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        if self.style == "leaves":
            image, masks = render_rosette(
                rng, self.size, count, self.shade_jitter, self.layout_size, self.rosette
            )
        else:
            image, masks = render_shapes(
                rng, self.size, count, self.kinds, layout_size=self.layout_size
            )
        meta: dict[str, Any] = {
            "id": f"{self.style}_{SPLITS[self.split_id]}_{index:06d}",
            "source": None,
            "orig_size": self.size,
            "split": SPLITS[self.split_id],
            "index": index,
        }
        return RawSample(image, masks, meta)


class SyntheticDataModule(InstanceDataModule):
    """The embedded synthetic dataset (``dataset=synthetic``), no downloads.

    Args:
        style: "leaves" (top-view Arabidopsis rosettes) or "shapes" (the authors' toy circles).
        min_objects, max_objects: objects drawn per image (inclusive range, 0 allowed).
        num_train, num_val, num_test: split sizes.
        seed: the dataset seed (independent of the run seed, so the data stay fixed across runs).
        shade_jitter: per-leaf colour spread for ``leaves``; 0 for a single green.
        rosette: the ``leaves`` generator's knobs, any subset of
            :class:`~recattend.data.rosette.RosetteOptions`' fields; None: their defaults.
        kinds: shape kinds for ``shapes`` (circle, square, triangle).
        render_size: (H, W) every split's images are drawn at, the scenes laid out at
            ``resolution`` (so the same scenes as without it, sharper or coarser); the pipeline
            then resizes them to ``resolution`` as it does a file dataset's images, and
            ``meta["orig_size"]`` is this size. None: drawn at ``resolution``.
        **kwargs: the :class:`InstanceDataModule` arguments (resolution, max_instances, ...).

    With :meth:`original_target`, the test split can be scored at the drawn size
    (``dataset.evaluator.original_resolution=true``), as the file datasets are.
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
        rosette: Mapping[str, Any] | None = None,
        kinds: Sequence[str] = ("circle",),
        render_size: Sequence[int] | None = None,
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
        self.rosette = RosetteOptions.from_config(rosette)
        self.render_size = _parse_render_size(render_size)

    def build_source(self, split: str) -> SyntheticInstances:
        return SyntheticInstances(
            style=self.style,
            size=self.render_size or self.resolution,
            length=self.lengths[split],
            seed=self.seed,
            split=split,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            shade_jitter=self.shade_jitter,
            rosette=self.rosette,
            kinds=self.kinds,
            layout_size=self.resolution,
        )

    def original_target(self, meta: dict[str, Any]) -> np.ndarray:
        """The ground truth of a sample at the size it is drawn at (``render_size``, else
        ``resolution``), drawn again from its seed so that batches never carry it.

        Args:
            meta: the sample's ``meta`` (``split``, ``index`` and ``id``).

        Returns:
            (H, W) int32 label map: 0 background, the visible instances 1..N in drawing order
            (later ones on top, as :meth:`FileDataModule.original_target
            <recattend.data.files.FileDataModule.original_target>` numbers them); objects hidden
            entirely take no number.

        Raises:
            ValueError: the meta is not of this dataset's samples (its id differs from the draw's).
        """
        raw = self.build_source(meta["split"])[int(meta["index"])]
        if raw.meta["id"] != meta["id"]:
            raise ValueError(
                f"original_target: sample {meta['id']!r} is not one of this dataset's "
                f"(split {meta['split']}, index {meta['index']} is {raw.meta['id']!r})"
            )
        labels = np.zeros(raw.masks.shape[1:], np.int32)
        for k, mask in enumerate((m for m in raw.masks if m.any()), start=1):
            labels[mask] = k
        return labels


def _parse_render_size(render_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``dataset.render_size`` as (H, W), or None.

    Raises:
        ValueError: not two positive integers.
    """
    if render_size is None:
        return None
    plain = isinstance(render_size, Sequence) and not isinstance(render_size, str | bytes)
    values = list(render_size) if plain else None
    if (
        values is None
        or len(values) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
        or min(values) < 1
    ):
        shown = values if values is not None else repr(render_size)
        raise ValueError(
            f"dataset.render_size={shown} must be two positive integers [H, W], e.g. "
            "dataset.render_size=[512,512], or null to draw the images at dataset.resolution"
        )
    return int(values[0]), int(values[1])
