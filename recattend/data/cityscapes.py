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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from recattend.data.files import Entry, FileDataModule, Instances, layout_error

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
        **kwargs: :class:`~recattend.data.files.FileDataModule` arguments (root, resolution, ...).
    """

    paper_table = "cityscapes"  # the results table eval prints (recattend.report.TABLES)

    def __init__(self, *, splits: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.splits = {"train": "train", "val": "val", "test": "val", **(splits or {})}

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
            entries.append(Entry(stem, image, label))
        if not entries:
            raise layout_error("Cityscapes", self.root, EXAMPLES, SOURCE, f"no images in {images}")
        return entries

    def original_instance_ids(self, meta: dict[str, Any]) -> np.ndarray:
        """The raw instanceIds map of a sample at full resolution (for Cityscapes AP): (H, W)
        int64, ``label_id * 1000 + k`` on instances, the plain label id elsewhere."""
        with Image.open(meta["label"]) as label:
            label.load()
            return np.asarray(label).astype(np.int64)

    def read_instances(self, entry: Entry) -> Instances:
        with Image.open(entry.label) as label:
            label.load()
            return decode_instance_ids(np.asarray(label))
