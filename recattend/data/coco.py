"""MS-COCO instances of chosen categories (paper Figure 5: zebras), read with pycocotools.

``dataset.root`` holds ``annotations/instances_<name>.json`` and the image folder ``<name>/``
(``train2017``, ``val2017``; 2014 names work the same), as distributed. Categories are chosen by
name (default ``[zebra]``); segmentations may be polygons or RLE (both decoded by pycocotools);
``iscrowd=1`` regions are not instances. Images without a chosen instance are skipped unless
``keep_empty``. ``instance_classes`` and ``semantic`` number the chosen categories 1..K in the
order given.

Splits map to the official names by ``dataset.splits`` (default train -> train2017,
val -> val2017, test -> val2017: test-dev labels are not public).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from recattend.data.files import Entry, FileDataModule, Instances, layout_error

SOURCE = "https://cocodataset.org/#download (2017 train/val images and annotations)"
EXAMPLES = ("annotations/instances_train2017.json", "train2017/000000000009.jpg")


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class COCODataModule(FileDataModule):
    """``dataset=coco`` (module docstring).

    What the COCO evaluator (:class:`recattend.evaluation.CocoEvaluator`) reads besides the
    batches: :meth:`annotation_file`, :attr:`category_ids` and :meth:`image_ids`.

    Args:
        categories: category names to segment (e.g. ``[zebra]``, ``[person]``).
        keep_empty: keep images without an instance of the chosen categories.
        splits: our split -> official name (``train2017``, ``val2017``, ...).
        **kwargs: :class:`~recattend.data.files.FileDataModule` arguments (root, resolution, ...).
    """

    paper_table = "coco"  # the results table eval prints (recattend.report.TABLES)
    main_metric = "mask_ap"  # class-agnostic, at network resolution: validation's stand-in for AP

    def __init__(
        self,
        *,
        categories: Sequence[str] = ("zebra",),
        keep_empty: bool = False,
        splits: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not categories:
            raise ValueError("dataset.categories is empty: name at least one, e.g. [zebra]")
        self.categories = list(categories)
        self.keep_empty = keep_empty
        self.splits = {"train": "train2017", "val": "val2017", "test": "val2017", **(splits or {})}
        self._category_ids: list[int] = []

    def annotation_file(self, split: str) -> Path:
        """The official annotation file of ``split``: ``root/annotations/instances_<name>.json``
        (``name`` from ``dataset.splits``; it may not exist)."""
        return self.root / "annotations" / f"instances_{self.splits[split]}.json"

    @property
    def category_ids(self) -> list[int]:
        """The COCO ids of the chosen ``categories``, in the order given (empty until a split
        was listed, e.g. by ``setup``)."""
        return list(self._category_ids)

    def image_ids(self, split: str) -> set[int]:
        """The COCO ``image_id`` of every sample of ``split``: the images kept (with a chosen
        instance unless ``keep_empty``; after ``setup``, without skipped bad files)."""
        source = self.datasets.get(split)
        entries = source.source.entries if source is not None else self.entries(split)
        return {int(e.extra["meta"]["image_id"]) for e in entries}

    def entries(self, split: str) -> list[Entry]:
        name = self.splits[split]
        annotations = self.annotation_file(split)
        if not annotations.is_file():
            why = "no such folder" if not self.root.is_dir() else f"no {annotations.name}"
            raise layout_error("COCO", self.root, EXAMPLES, SOURCE, why)
        coco = COCO(str(annotations))
        by_name = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
        unknown = [c for c in self.categories if c not in by_name]
        if unknown:
            close = {u: difflib.get_close_matches(u, by_name, n=2) for u in unknown}
            raise ValueError(
                f"dataset.categories: {unknown} not in {annotations.name} (closest: {close}); "
                f"its categories are {sorted(by_name)}"
            )
        wanted = {by_name[c]: i + 1 for i, c in enumerate(self.categories)}
        self._category_ids = list(wanted)
        entries = []
        for image_id in sorted(coco.getImgIds()):
            info = coco.loadImgs(image_id)[0]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=list(wanted)))
            instances = [a for a in anns if not a.get("iscrowd", 0)]
            if not instances and not self.keep_empty:
                continue
            extra = {
                "size": (info["height"], info["width"]),
                "segmentations": [a["segmentation"] for a in instances],
                "classes": [wanted[a["category_id"]] for a in instances],
                "meta": {"image_id": image_id},
            }
            path = self.root / name / info["file_name"]
            entries.append(Entry(str(image_id), path, annotations, extra))
        return entries

    def read_instances(self, entry: Entry) -> Instances:
        h, w = entry.extra["size"]
        masks = np.zeros((len(entry.extra["segmentations"]), h, w), dtype=bool)
        for i, segmentation in enumerate(entry.extra["segmentations"]):
            masks[i] = segmentation_mask(segmentation, h, w)
        classes = np.asarray(entry.extra["classes"], dtype=np.int64)
        semantic = np.zeros((h, w), np.int64)
        for mask, cls in zip(masks, classes, strict=True):  # painter's order, as the masks
            semantic[mask] = cls
        return masks, classes, semantic
