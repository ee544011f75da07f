"""Embedded synthetic instance data: generated from a seed, no files, the default dataset.

Two styles:

* ``leaves``: CVPPP-like rosettes. Elongated leaves of varied length, width and green shade radiate
  from a centre at the golden angle (as real phyllotaxis does); younger, shorter leaves are drawn
  last, on top of the older ones, over a textured soil-like background.
* ``shapes``: the authors' toy data: grey (100, 100, 100) background, green shapes with a red
  border (3 px at 224x224), radius U(15, 45) px at 224x224, later shapes occluding earlier ones.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``, so a dataset
is the same on every run, in every worker and on every rank, and splits never share an image.

A scene is laid out in the pixel frame of a *layout size* (the dataset's resolution) and may be
drawn at another size (``dataset.render_size``): the random draws, and so the scene, do not depend
on the drawn size; only the sharpness and the per-pixel sensor noise do. The pipeline then resizes
the drawn image to the network's resolution as it does a file dataset's, and
:meth:`SyntheticDataModule.original_target` draws the sample again for scoring at the drawn size.

One module (about 460 lines) because the renderers, the seeded split and the DataModule share one
contract, the scene a seed draws at any size; splitting them would spread that contract over files.
"""

from __future__ import annotations

import math
import numbers
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


def _frame(
    size: tuple[int, int], layout_size: tuple[int, int] | None
) -> tuple[int, int, float, float]:
    """The layout's (H0, W0) and the drawn image's pixels per layout pixel (sy, sx)."""
    h0, w0 = layout_size if layout_size is not None else size
    return int(h0), int(w0), size[0] / h0, size[1] / w0


def _to_drawn(points: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Layout (x, y) pixel coordinates (..., 2) to the drawn image's, float64.

    Layout pixel i covers [i - 0.5, i + 0.5] (OpenCV puts pixel centres on integers), so x maps
    to (x + 0.5) sx - 0.5; a plain x sx would shift the scene by (sx - 1) / 2 drawn pixels.
    """
    return (np.asarray(points, np.float64) + 0.5) * np.array([sx, sy]) - 0.5


def _fill(canvas: np.ndarray, polygon: np.ndarray, edge: int) -> None:
    """Fill a polygon (``_polygon`` points) with 1; ``edge`` > 1 also draws its outline that
    many pixels wide.

    ``fillPoly`` takes every pixel its outline touches, so a shape covers about half a pixel
    more than its polygon on every side; at the layout size that is half a layout pixel. Drawn
    larger, an outline one layout pixel wide (``edge`` drawn pixels) keeps that margin, so a
    mask is the same shape at every size.
    """
    cv2.fillPoly(canvas, [polygon], 1, cv2.LINE_8, _SUBPIXEL)
    if edge > 1:
        cv2.polylines(canvas, [polygon], True, 1, edge, cv2.LINE_8, _SUBPIXEL)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, size[::-1], interpolation=cv2.INTER_CUBIC), -1, 1)


def render_soil(
    rng: np.random.Generator, size: tuple[int, int], layout_size: tuple[int, int] | None = None
) -> np.ndarray:
    """A soil-like background: brown with mottling, grain and a few pebbles.

    Args:
        rng: the sample's generator.
        size: (H, W) drawn.
        layout_size: (H0, W0) the scene is laid out in (module docstring); None: ``size``.

    Returns:
        (H, W, 3) float32 RGB, about 0-255 (not clipped).
    """
    h, w = size
    h0, w0, sy, sx = _frame(size, layout_size)
    scaled = (h0, w0) != (h, w)
    base = np.array([96, 72, 52], np.float32) * rng.uniform(0.8, 1.15)
    mottling = 18 * _smooth_noise(rng, size, 6) + 8 * _smooth_noise(rng, size, 24)
    # One grain per layout pixel: drawn at the drawn size, its H W draws would move every later
    # draw (the leaves) with the size. Nearest-upsampled, a layout-size resize gives it back.
    grain = rng.normal(0, 6, (h0, w0)).astype(np.float32)
    if scaled:
        grain = cv2.resize(grain, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    img = base[None, None, :] + (mottling + grain)[..., None]
    for _ in range(int(rng.integers(5, 15))):
        centre = (float(rng.uniform(0, w0)), float(rng.uniform(0, h0)))
        radius = float(rng.uniform(0.005, 0.02)) * min(h0, w0)
        shade = base * rng.uniform(0.6, 1.4)
        if not scaled:
            cv2.circle(
                img,
                _polygon(np.array(centre))[0, 0],
                int(radius * (1 << _SUBPIXEL)),
                shade.tolist(),
                -1,
                cv2.LINE_8,
                _SUBPIXEL,
            )
            continue
        axes = (int(radius * sx * (1 << _SUBPIXEL)), int(radius * sy * (1 << _SUBPIXEL)))
        cv2.ellipse(
            img,
            _polygon(_to_drawn(np.array(centre), sy, sx))[0, 0],
            axes,
            0,
            0,
            360,
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
    rng: np.random.Generator,
    size: tuple[int, int],
    num_leaves: int,
    shade_jitter: float = 1.0,
    layout_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a rosette of ``num_leaves`` leaves on soil.

    Args:
        rng: the sample's generator.
        size: (H, W) drawn.
        num_leaves: leaves drawn (some may end up fully hidden: their masks are empty).
        shade_jitter: spread of the per-leaf green shade; 0 gives every leaf the same colour.
        layout_size: (H0, W0) the scene is laid out in: the same generator state gives the same
            scene at every ``size``, stretched by H / H0 and W / W0 (module docstring); None:
            ``size``.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool, oldest leaf first (N =
        ``num_leaves``).
    """
    h, w = size
    h0, w0, sy, sx = _frame(size, layout_size)
    scaled = (h0, w0) != (h, w)
    scale = min(h0, w0)
    img = render_soil(rng, size, (h0, w0))
    labels = np.zeros((h, w), np.int32)
    # The rim, and the margin of the masks (_fill), are one layout pixel wide.
    edge = max(1, round(min(sx, sy))) if scaled else 1
    centre = np.array([w0 / 2, h0 / 2]) + rng.uniform(-0.08, 0.08, 2) * scale
    hue0 = rng.uniform(38, 48)  # OpenCV hue (0-180): a yellowish to pure green plant
    phase = rng.uniform(0, 2 * math.pi)
    for i in range(num_leaves):
        age = 1.0 - i / max(num_leaves, 1)  # the first leaves are the oldest and longest
        length = scale * rng.uniform(0.24, 0.34) * (0.55 + 0.45 * age)
        width = length * rng.uniform(0.3, 0.5)
        angle = phase + i * _GOLDEN_ANGLE + rng.normal(0, 0.15)
        outline = _leaf_outline(centre, angle, length, width)
        drawn = _to_drawn(outline, sy, sx) if scaled else outline
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
        _fill(leaf, _polygon(drawn), edge)
        inside = leaf.astype(bool)
        # Shading: lighter towards the tip, a darker rim so touching leaves stay distinguishable.
        yy, xx = np.nonzero(inside)
        if scaled:  # the distance from the centre in layout pixels
            dist = np.hypot((xx + 0.5) / sx - 0.5 - centre[0], (yy + 0.5) / sy - 0.5 - centre[1])
        else:
            dist = np.hypot(xx - centre[0], yy - centre[1])
        dist = dist / max(length, 1.0)
        img[yy, xx] = colour * (0.85 + 0.25 * np.clip(dist, 0, 1))[:, None]
        rim = np.zeros((h, w), np.uint8)
        cv2.polylines(rim, [_polygon(drawn)], True, 1, edge, cv2.LINE_8, _SUBPIXEL)
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
    layout_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the authors' toy shapes: green, red-bordered, later ones occluding earlier ones.

    Args:
        rng: the sample's generator.
        size: (H, W) drawn.
        num_shapes: shapes drawn (some may end up fully hidden: their masks are empty).
        kinds: the kinds each shape is drawn from (circle, square, triangle).
        layout_size: (H0, W0) the scene is laid out in, as in :func:`render_leaves`; None:
            ``size``.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool in drawing order.
    """
    h, w = size
    h0, w0, sy, sx = _frame(size, layout_size)
    scaled = (h0, w0) != (h, w)
    k = min(h0, w0) / 224.0  # the authors' toy sizes are for 224x224
    img = np.full((h, w, 3), 100, np.uint8)
    labels = np.zeros((h, w), np.int32)
    border = max(1, round(3 * k * min(sx, sy))) if scaled else max(1, round(3 * k))
    edge = max(1, round(min(sx, sy))) if scaled else 1  # the masks' margin (_fill)
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
        poly = _polygon(_to_drawn(points, sy, sx) if scaled else points)
        shape = np.zeros((h, w), np.uint8)
        _fill(shape, poly, edge)
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
        kinds: Sequence[str] = ("circle",),
        layout_size: tuple[int, int] | None = None,
    ) -> None:
        self.style, self.size, self.length = style, (int(size[0]), int(size[1])), length
        self.seed, self.split_id = seed, SPLITS.index(split)
        self.min_objects, self.max_objects = min_objects, max_objects
        self.shade_jitter, self.kinds = shade_jitter, tuple(kinds)
        self.layout_size = self.size if layout_size is None else tuple(map(int, layout_size))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RawSample:  # type: ignore[override]
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.split_id, index])
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        if self.style == "leaves":
            image, masks = render_leaves(
                rng, self.size, count, self.shade_jitter, layout_size=self.layout_size
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
        style: "leaves" (CVPPP-like rosettes) or "shapes" (the authors' toy circles).
        min_objects, max_objects: objects drawn per image (inclusive range, 0 allowed).
        num_train, num_val, num_test: split sizes.
        seed: the dataset seed (independent of the run seed, so the data stay fixed across runs).
        shade_jitter: per-leaf colour spread for ``leaves``; 0 for a single green.
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
