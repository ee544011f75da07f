"""Cityscapes fine annotations (paper Table 3), class-agnostic instances of the 8 instance classes.

``dataset.root`` holds ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png`` (16-bit). An instanceIds
pixel is ``class_id * 1000 + k`` on an instance and a plain label id elsewhere, including crowd /
group regions of instance classes (e.g. 26 for a group of cars).

* Instances: the 8 classes person 24, rider 25, car 26, truck 27, bus 28, train 31,
  motorcycle 32, bicycle 33 (caravan 29 and trailer 30 are ignored, as the authors did). The model
  is class-agnostic; each instance's class is kept in ``instance_classes`` as the authors' train
  id (person 1, rider 2, car 3, truck 4, bus 5, train 6, motorcycle 7, bicycle 8).
* Crowd / group regions are not instances (they are part of the semantic map).
* ``semantic``: the same ids per pixel, 0 for everything else.
* T = 20 as the authors (a fixed cap, ``max_instances: 19``); an image with more instances keeps
  the largest (the batch contract's rule; a warning says so once).

Splits map to the official folders by ``dataset.splits`` (default train -> train, val -> val,
test -> val: the official test labels are not public).

External semantic predictions (``preprocessors.semantic_dir=<folder>``, the authors' LRR input for
Table 3) are one label PNG of Cityscapes label ids per image,
``<folder>/<split>/<city>/<city>_<seq>_<frame>_<anything>.png``. Each image of the evaluated splits
(val, test) gets its file when the split is listed (:func:`find_semantic_prediction`), read by
:meth:`CityscapesDataModule.semantic_map`; the evaluation then takes the foreground and each
instance's class from it instead of the pre-processor's maps
(:class:`~recattend.postprocess.PostProcess`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recattend.data.files import Entry, FileDataModule, Instances, layout_error

# The config key of the external semantic predictions, named in their errors.
SEMANTIC_KEY = "preprocessors.semantic_dir"
SOURCE = "https://www.cityscapes-dataset.com (registration; leftImg8bit_trainvaltest and gtFine)"
EXAMPLES = (
    "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
    "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png",
)
# Cityscapes label id -> the authors' train id of the 8 instance classes.
INSTANCE_CLASSES = {24: 1, 25: 2, 26: 3, 27: 4, 28: 5, 31: 6, 32: 7, 33: 8}
CLASS_NAMES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
_LOOKUP = np.zeros(256, np.int64)
for _label_id, _train_id in INSTANCE_CLASSES.items():
    _LOOKUP[_label_id] = _train_id


def decode_instance_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances, their classes and the semantic map from an instanceIds array.

    Args:
        ids: (H, W) integer instanceIds.

    Returns:
        masks (N, H, W) bool in increasing id order, classes (N,) train ids 1..8, semantic
        (H, W) int64 train ids (0 elsewhere).
    """
    ids = ids.astype(np.int64)
    label_ids = np.where(ids >= 1000, ids // 1000, ids)
    semantic = _LOOKUP[np.clip(label_ids, 0, 255)]
    instance_ids = np.unique(ids[(ids >= 1000) & (semantic > 0)])
    masks = ids[None] == instance_ids[:, None, None]
    return masks, _LOOKUP[instance_ids // 1000], semantic


def find_semantic_prediction(folder: Path, split: str, image: Path) -> Path:
    """The external semantic prediction of one image: the one PNG of ``folder / split / <city>``
    whose name is the image's ``<city>_<seq>_<frame>`` followed by ``_<anything>.png`` (or
    ``.png``).

    Args:
        folder: the predictions' root (``preprocessors.semantic_dir``).
        split: the official split folder (train, val, test).
        image: a ``<city>/<city>_<seq>_<frame>_leftImg8bit.png`` image path.

    Raises:
        FileNotFoundError: no such file (names the image and the expected path).
        ValueError: several candidates (names them).
    """
    stem = image.name.removesuffix("_leftImg8bit.png")
    where = folder / split / image.parent.name
    found = sorted(
        path
        for path in (where.glob("*.png") if where.is_dir() else ())
        if path.stem == stem or path.name.startswith(f"{stem}_")
    )
    if not found:
        raise FileNotFoundError(
            f"{SEMANTIC_KEY}={folder}: no semantic prediction for {image}; expected one label PNG "
            f"of Cityscapes label ids at {where / stem}_*.png (<folder>/<split>/<city>/"
            "<city>_<seq>_<frame>_<anything>.png, one per leftImg8bit image)"
        )
    if len(found) > 1:
        raise ValueError(
            f"{SEMANTIC_KEY}={folder}: {len(found)} files could be the semantic prediction of "
            f"{image}: {', '.join(str(p) for p in found)}; keep one PNG per image whose name "
            f"starts with {stem}_"
        )
    return found[0]


def label_ids(train_ids: torch.Tensor) -> torch.Tensor:
    """The official Cityscapes label ids of the authors' train ids.

    Args:
        train_ids: integer tensor of any shape, values 0..8 (person 1 ... bicycle 8; 0 no class).

    Returns:
        int64 tensor of the same shape and device: person 24, rider 25, car 26, truck 27, bus 28,
        train 31, motorcycle 32, bicycle 33; 0 stays 0.
    """
    lookup = torch.zeros(len(CLASS_NAMES) + 1, dtype=torch.int64, device=train_ids.device)
    for label_id, train_id in INSTANCE_CLASSES.items():
        lookup[train_id] = label_id
    return lookup[train_ids.long()]


class CityscapesDataModule(FileDataModule):
    """``dataset=cityscapes`` (module docstring).

    Args:
        splits: our split -> official folder name (train, val, test).
        semantic: the folder of external semantic predictions (``preprocessors.semantic_dir``,
            module docstring), or None: the evaluation uses the pre-processor's maps.
        **kwargs: :class:`~recattend.data.files.FileDataModule` arguments (root, resolution, ...).

    Raises:
        FileNotFoundError: ``semantic`` is not a folder.
    """

    paper_table = "cityscapes"  # the results table eval prints (recattend.report.TABLES)
    main_metric = "mask_ap"  # class-agnostic, at network resolution: validation's stand-in for AP

    def __init__(
        self,
        *,
        splits: Mapping[str, str] | None = None,
        semantic: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits = {"train": "train", "val": "val", "test": "val", **(splits or {})}
        self.semantic = None if semantic is None else Path(semantic).expanduser()
        if self.semantic is not None and not self.semantic.is_dir():
            raise FileNotFoundError(
                f"{SEMANTIC_KEY}={semantic}: no such folder; give the folder of the semantic "
                "predictions (e.g. LRR's), one label PNG of Cityscapes label ids per image at "
                "<folder>/<split>/<city>/<city>_<seq>_<frame>_<anything>.png"
            )

    def entries(self, split: str) -> list[Entry]:
        folder = self.splits[split]
        images = self.root / "leftImg8bit" / folder
        if not images.is_dir():
            why = "no such folder" if not self.root.is_dir() else f"no leftImg8bit/{folder}/"
            raise layout_error("Cityscapes", self.root, EXAMPLES, SOURCE, why)
        entries = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            label = (
                self.root / "gtFine" / folder / image.parent.name / f"{stem}_gtFine_instanceIds.png"
            )
            extra = {}
            # Only the evaluated splits need predictions (LRR's cover val and test, not train).
            if self.semantic is not None and split != "train":
                found = find_semantic_prediction(self.semantic, folder, image)
                extra = {"meta": {"semantic": str(found)}}
            entries.append(Entry(stem, image, label, extra))
        if not entries:
            raise layout_error("Cityscapes", self.root, EXAMPLES, SOURCE, f"no images in {images}")
        return entries

    def original_instance_ids(self, meta: dict[str, Any]) -> np.ndarray:
        """The raw instanceIds map of a sample at full resolution (for Cityscapes AP): (H, W)
        int64, ``label_id * 1000 + k`` on instances, the plain label id elsewhere."""
        with Image.open(meta["label"]) as label:
            label.load()
            return np.asarray(label).astype(np.int64)

    def semantic_map(self, meta: dict[str, Any]) -> np.ndarray | None:
        """A sample's external semantic prediction at full resolution, or None without one
        (no ``semantic`` folder, or the train split).

        Returns:
            (H, W) int64 train ids (person 1 ... bicycle 8; every other label id 0), the size of
            the image (``meta["orig_size"]``).

        Raises:
            ValueError: the PNG is not a one-channel map of the image's size.
        """
        if meta.get("semantic") is None:
            return None
        with Image.open(meta["semantic"]) as png:
            png.load()
            ids = np.asarray(png)
        size = tuple(int(s) for s in meta["orig_size"])
        if ids.shape != size:
            raise ValueError(
                f"{SEMANTIC_KEY}: {meta['semantic']} is {'x'.join(map(str, ids.shape))} but its "
                f"image {meta['image']} is {size[0]}x{size[1]}; give one-channel label-id maps at "
                "the images' full resolution"
            )
        return _LOOKUP[np.clip(ids.astype(np.int64), 0, 255)]

    def read_instances(self, entry: Entry) -> Instances:
        with Image.open(entry.label) as label:
            label.load()
            return decode_instance_ids(np.asarray(label))
