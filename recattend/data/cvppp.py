"""CVPPP 2017 LSC, subset A1 (Arabidopsis rosettes; paper Table 1), in its folder layout.

``dataset.root`` is the A1 training folder: ``plantNNN_rgb.png`` (RGB or RGBA photos),
``plantNNN_label.png`` (palette PNG: the index is the leaf id, 0 background) and ``A1.csv``
(``plantNNN_rgb.png,<leaf count>``). Plant ids have gaps; images are listed by their files.

Splits: ``train`` and ``val`` are a seeded shuffle of the training folder (the authors:
``RandomState(2)``, 80 % train, i.e. 103 / 25 of 128); ``test`` reads ``dataset.test_root`` (the
same layout) when set, else the ``val`` split. A test folder without label files (the official
testing set) is unlabelled: it serves prediction, and evaluating on it is refused.

Labels colour-coded as RGB instead of palette indices are read too (one leaf per non-black colour),
as the authors' loader did.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recattend.data.files import Entry, FileDataModule, Instances, colour_instances, layout_error

SOURCE = "https://www.plant-phenotyping.org/CVPPP2017 (registration; the LSC training set, A1)"
EXAMPLES = ("plant001_rgb.png", "plant001_label.png", "A1.csv")


def read_label(path: Path) -> np.ndarray:
    """(N, H, W) bool leaf masks of a CVPPP label PNG (palette indices or RGB colours)."""
    with Image.open(path) as label:
        label.load()
        if label.mode in ("P", "L", "I", "I;16"):
            return colour_instances(np.asarray(label))
        return colour_instances(np.asarray(label.convert("RGB")))


def split_ids(ids: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Seeded train/val split as the authors': shuffle with ``RandomState(seed)``, the first
    ``ceil((1 - val_fraction) n)`` are train (103 of 128 at 0.2)."""
    order = np.random.RandomState(seed).permutation(len(ids))
    n_train = math.ceil((1 - val_fraction) * len(ids))
    return {
        "train": sorted(ids[i] for i in order[:n_train]),
        "val": sorted(ids[i] for i in order[n_train:]),
    }


class CVPPPDataModule(FileDataModule):
    """``dataset=cvppp``: CVPPP A1 from its folder (module docstring).

    Args:
        val_fraction: share of the training folder held out for validation (0 <= f < 1).
        split_seed: seed of the train/val shuffle (the authors': 2).
        test_root: a folder in the same layout for the test split (labelled: scored by
            ``eval.py``; unlabelled: prediction only); None uses the val split.
        **kwargs: :class:`~recattend.data.files.FileDataModule` arguments (root, resolution, ...).
    """

    paper_table = "cvppp"  # the results table eval prints (recattend.report.TABLES)

    def __init__(
        self,
        *,
        val_fraction: float = 0.2,
        split_seed: int = 2,
        test_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"dataset.val_fraction={val_fraction} must be in [0, 1)")
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.test_root = Path(test_root).expanduser() if test_root else None
        self._counts: dict[Path, dict[str, int]] = {}

    def _plants(self, folder: Path) -> list[str]:
        if not folder.is_dir():
            raise layout_error("CVPPP A1", folder, EXAMPLES, SOURCE, "no such folder")
        plants = sorted(p.name[: -len("_rgb.png")] for p in folder.glob("plant*_rgb.png"))
        if not plants:
            raise layout_error("CVPPP A1", folder, EXAMPLES, SOURCE, "no plantNNN_rgb.png in it")
        return plants

    def _entry(self, folder: Path, plant: str) -> Entry:
        return Entry(plant, folder / f"{plant}_rgb.png", folder / f"{plant}_label.png")

    def entries(self, split: str) -> list[Entry]:
        if split == "test" and self.test_root is not None:
            return [self._entry(self.test_root, p) for p in self._plants(self.test_root)]
        split = "val" if split == "test" else split
        ids = split_ids(self._plants(self.root), self.val_fraction, self.split_seed)[split]
        return [self._entry(self.root, p) for p in ids]

    def labelled(self, split: str) -> bool:
        if split == "test" and self.test_root is not None:
            return any(self.test_root.glob("plant*_label.png"))
        return True

    def read_instances(self, entry: Entry) -> Instances:
        return read_label(entry.label), None, None

    def expected_count(self, entry: Entry) -> int | None:
        """The leaf count ``A1.csv`` (beside the images) gives for ``entry``, if any."""
        folder = entry.image.parent
        if folder not in self._counts:
            self._counts[folder] = read_counts(folder / "A1.csv")
        return self._counts[folder].get(entry.id)


def read_counts(csv: Path) -> dict[str, int]:
    """``A1.csv`` as {plant id: leaf count}; empty when the file is absent."""
    if not csv.exists():
        return {}
    counts = {}
    for line in csv.read_text().splitlines():
        name, _, count = (part.strip() for part in line.partition(","))
        if name.endswith("_rgb.png") and count.isdigit():
            counts[name[: -len("_rgb.png")]] = int(count)
    return counts
