"""MS-COCO (paper Figure 5): the instance metrics and class-agnostic segmentation AP.

:class:`CocoEvaluator` scores every test image at its original resolution with the label-map
metrics of :class:`~recattend.evaluation.instances.InstanceEvaluator`, and keeps each image's
instances as COCO results (compressed RLE, the instance's score). At the end the results of all
ranks are scored by pycocotools' COCOeval against the split's annotation file
(:func:`~recattend.metrics.coco.coco_segm_ap`: ``ap``, ``ap50``, ``ap75``, ``ar100``), also when
nothing was detected (AP 0). The segmenter does not classify, so every result takes the one chosen
category; with several categories no AP is computed and a warning says so. With ``export`` the
results are written to ``predictions/coco_results.json`` on global rank 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from torch import Tensor

from recattend.evaluation.distributed import all_gather_objects, is_global_zero
from recattend.evaluation.export import coco_results, write_json
from recattend.evaluation.instances import InstanceEvaluator
from recattend.metrics.coco import coco_segm_ap
from recattend.postprocess import Instances

log = logging.getLogger(__name__)

RESULTS_FILENAME = "coco_results.json"


class CocoEvaluator(InstanceEvaluator):
    """Instance metrics at original resolution plus COCO segm AP (module docstring).

    The datamodule must give, besides ``original_target(meta)``: ``categories`` (the chosen
    names), ``category_ids`` (their COCO ids), ``annotation_file(split)`` and
    ``image_ids(split)`` (the COCO ids of the split's images), as
    :class:`~recattend.data.COCODataModule` does; every sample's ``meta`` has its ``image_id``.

    Args:
        split: the split scored (its annotation file and images; ``test``).
        per_image: keep one row per image and write ``per_image.csv`` (as
            :class:`InstanceEvaluator`).

    Attributes:
        detections: this rank's COCO results of the current loop, class-agnostic
            (``category_id`` 1 until :meth:`evaluate` assigns the chosen category).
    """

    def __init__(self, split: str = "test", per_image: bool = True) -> None:
        super().__init__(original_resolution=True, per_image=per_image)
        self.split = split
        self.detections: list[dict[str, Any]] = []

    def setup(self, datamodule: Any, output_dir: Path | None = None, export: bool = False) -> None:
        """See :meth:`InstanceEvaluator.setup`.

        Raises:
            ValueError: a datamodule without the accessors above.
        """
        super().setup(datamodule, output_dir, export)
        wanted = ("categories", "category_ids", "annotation_file", "image_ids")
        missing = [name for name in wanted if not hasattr(datamodule, name)]
        if missing:
            raise ValueError(
                f"CocoEvaluator reads the COCO annotations, but {type(datamodule).__name__} has "
                f"no {', '.join(missing)}: use it with dataset=coco"
            )

    def reset(self) -> None:
        super().reset()
        self.detections = []

    def process_instances(self, meta: dict[str, Any], instances: Instances) -> None:
        """Keeps the image's instances as COCO results (one per non-empty instance)."""
        super().process_instances(meta, instances)
        labels = instances.labels.cpu().numpy()
        self.detections += coco_results(labels, instances.scores.tolist(), meta["image_id"])

    def evaluate(self) -> dict[str, float | Tensor]:
        """The instance metrics and, with one chosen category, ``ap``, ``ap50``, ``ap75`` and
        ``ar100`` of all ranks' results (fractions; COCOeval's "no ground truth" is nan)."""
        values = super().evaluate()
        detections = all_gather_objects(self.detections)
        categories = list(self.datamodule.categories)
        if len(categories) == 1:  # class-agnostic results are the one chosen category
            category = self.datamodule.category_ids[0]
            detections = [{**d, "category_id": category} for d in detections]
        folder = self.predictions_dir
        if folder is not None and is_global_zero():
            folder.mkdir(parents=True, exist_ok=True)
            write_json(detections, folder / RESULTS_FILENAME)
        if len(categories) != 1:
            log.warning("COCO AP needs one category (class-agnostic segmenter); not computed")
            return values
        return values | segm_ap(self.datamodule, detections, self.split)


def segm_ap(datamodule: Any, detections: list[dict[str, Any]], split: str) -> dict[str, float]:
    """COCO segm AP, AP50, AP75 and AR100 of results of one category on ``split``.

    Args:
        datamodule: gives ``annotation_file(split)``, ``image_ids(split)`` and ``category_ids``.
        detections: COCO results whose ``category_id`` is the datamodule's category.
        split: the split scored.

    Returns:
        ``ap``, ``ap50``, ``ap75``, ``ar100`` (:func:`~recattend.metrics.coco.coco_segm_ap`) over
        every image of the split and every image with a result (images without any result count
        as misses).
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = COCO(str(datamodule.annotation_file(split)))
    image_ids = sorted({int(d["image_id"]) for d in detections} | datamodule.image_ids(split))
    return coco_segm_ap(ground_truth, detections, image_ids, datamodule.category_ids)
