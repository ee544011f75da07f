"""KITTI car instances (Zhang et al. ICCV 2015 / CVPR 2016 labels; paper Tables 2 and 4).

Not the standard KITTI download: the car instance labels come from the authors of those papers, in
the layout the rec-attend code reads. ``dataset.root`` holds ``images/NNNNNN.png`` (KITTI left
colour images), ``gt/NNNNNN.png`` (instance colour maps: each non-black colour is one car),
``gt_man/NNNNNN.png`` (the manually annotated validation and test labels) and the split files
``train.txt`` (3712 ids), ``valid_man.txt`` (120) and ``test_man.txt`` (144), one id per line.
Training labels come from ``gt/``, validation and test labels from ``gt_man/``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from recattend.data.files import Entry, FileDataModule, Instances, colour_instances, layout_error

SOURCE = (
    "the authors of Zhang et al., 'Instance-level segmentation for autonomous driving with deep "
    "densely connected MRFs' (CVPR 2016) for the car instance labels, and "
    "https://www.cvlibs.net/datasets/kitti/ for the images"
)
EXAMPLES = ("images/000000.png", "gt/000000.png", "train.txt")
SPLIT_FILES = {"train": ("train.txt", "gt"), "val": ("valid_man.txt", "gt_man"),
               "test": ("test_man.txt", "gt_man")}  # fmt: skip


class KITTIDataModule(FileDataModule):
    """``dataset=kitti``: KITTI car instances in the authors' layout (module docstring).

    Args:
        **kwargs: :class:`~recattend.data.files.FileDataModule` arguments (root, resolution, ...).
    """

    paper_table = "kitti"  # the results table eval prints (recattend.report.TABLES)
    main_metric = "mwcov"  # Table 2's first column

    def entries(self, split: str) -> list[Entry]:
        listing, labels = SPLIT_FILES[split]
        path = self.root / listing
        if not path.is_file():
            why = "no such folder" if not self.root.is_dir() else f"no split file {listing}"
            raise layout_error("KITTI (car instances)", self.root, EXAMPLES, SOURCE, why)
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [
            Entry(i, self.root / "images" / f"{i}.png", self.root / labels / f"{i}.png")
            for i in ids
        ]

    def read_instances(self, entry: Entry) -> Instances:
        with Image.open(entry.label) as label:
            label.load()
            return colour_instances(np.asarray(label.convert("RGB"))), None, None
