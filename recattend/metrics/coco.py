"""MS-COCO segmentation AP through pycocotools' COCOeval, the official evaluator."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def coco_segm_ap(
    ground_truth: COCO,
    results: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> dict[str, float]:
    """AP, AP50, AP75 and AR100 of segmentation results (``iouType="segm"``, maxDets 100).

    Args:
        ground_truth: the annotations, as ``pycocotools.coco.COCO``.
        results: COCO results (``image_id``, ``category_id``, RLE ``segmentation``, ``score``);
            copied before ``loadRes``, which mutates them.
        image_ids: the evaluated images (images without a result count as misses).
        category_ids: the evaluated categories.

    Returns:
        ``ap``, ``ap50``, ``ap75``, ``ar100`` as fractions (COCOeval's -1 for "no ground truth"
        becomes nan).
    """
    if not results:  # loadRes refuses an empty list; nothing detected is AP 0
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ar100": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        detections = ground_truth.loadRes(copy.deepcopy(list(results)))
        evaluator = COCOeval(ground_truth, detections, iouType="segm")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float("nan") if v < 0 else float(v) for v in evaluator.stats]
    return {"ap": stats[0], "ap50": stats[1], "ap75": stats[2], "ar100": stats[8]}
