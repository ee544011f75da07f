"""Writing predictions: label PNGs, colour overlays, COCO results JSON, Cityscapes result files.

All writers take one image's instance label map (0 = background, instances 1..K) at the image's
original resolution, as :func:`recattend.postprocess.label_map` gives after upsampling. The
evaluators' ``export`` (``eval.py export=true``) and ``predict.py`` both write through them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from recattend.visualise import PALETTE


def write_label_png(labels: np.ndarray, path: Path) -> None:
    """Save a label map losslessly: 8-bit grey when ids fit in 0..255, else 16-bit.

    Args:
        labels: (H, W) integer label map, 0 = background, ids < 65536.
        path: the PNG to write.

    Raises:
        ValueError: ids that do not fit in 16 bits.
    """
    top = int(labels.max(initial=0))
    if top > 65535:
        raise ValueError(f"{top} instances do not fit in a 16-bit PNG")
    dtype = np.uint8 if top <= 255 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(path)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Instances tinted in distinct colours with white outlines, and the count written top-left.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer label map of the same size.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    out = image.astype(np.float32)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    for k in ids:
        mask = labels == k
        colour = PALETTE[(k - 1) % len(PALETTE)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    out = out.astype(np.uint8)
    # Outlines: pixels whose 3x3 neighbourhood holds another label.
    grown = cv2.dilate(labels.astype(np.float32), np.ones((3, 3), np.uint8))
    shrunk = cv2.erode(labels.astype(np.float32), np.ones((3, 3), np.uint8))
    out[(grown != shrunk) & (labels > 0)] = 255
    scale = max(0.4, min(image.shape[:2]) / 400)
    text = f"{len(ids)} instance{'s' if len(ids) != 1 else ''}"
    org = (4, int(20 * scale) + 4)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def coco_results(
    labels: np.ndarray, scores: Sequence[float], image_id: int | str, category_id: int = 1
) -> list[dict[str, Any]]:
    """COCO results entries (one per instance, segmentation as compressed RLE) for one image.

    Args:
        labels: (H, W) label map with instances 1..K.
        scores: confidence of instance k at index k - 1.
        image_id: the image's COCO id (or file stem when there is none).
        category_id: category of every instance (the segmenter is class-agnostic).

    Returns:
        Dicts with ``image_id``, ``category_id``, ``segmentation`` ({size, counts: str}) and
        ``score``, as ``COCO.loadRes`` reads them.
    """
    entries = []
    for k in range(1, int(labels.max(initial=0)) + 1):
        mask = labels == k
        if not mask.any():
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        entries.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": rle,
                "score": float(scores[k - 1]),
            }
        )
    return entries


def write_json(entries: list[dict[str, Any]], path: Path) -> None:
    """Write a list of results as JSON."""
    path.write_text(json.dumps(entries))


def write_cityscapes_results(
    labels: np.ndarray,
    scores: Sequence[float],
    label_ids: Sequence[int],
    stem: str,
    folder: Path,
) -> Path:
    """One image's instances in the result format the official ``cityscapesscripts`` evaluator
    reads (``csEvalInstanceLevelSemanticLabeling`` with ``CITYSCAPES_RESULTS=folder``).

    Writes ``<folder>/<stem>_pred.txt`` with one line per instance,
    ``masks/<stem>_<kkk>.png <labelId> <confidence>`` (the mask path relative to the txt file, k
    zero-padded to three digits), and each mask as an 8-bit PNG, 255 on the instance and 0
    elsewhere. The confidence is written as ``repr(float(score))``, the shortest text that reads
    back as the same float64, so the evaluator sees exactly the scores given here and ranks close
    scores (e.g. differing in the 8th decimal) in the same order; rounding to a fixed number of
    decimals could tie or flip them.

    The format allows overlapping masks, but this writer takes one label map, so its masks are the
    disjoint instances of that map: each pixel belongs to at most one written instance. Overlapping
    soft outputs of the model are resolved into one label per pixel before export
    (:func:`recattend.postprocess.label_map`); the evaluator therefore scores the post-processed
    segmentation, not the overlapping per-step masks.

    Args:
        labels: (H, W) integer label map at the image's original size, 0 = background, instances
            1..K (ids without a pixel are skipped).
        scores: finite confidence of instance k at index k - 1 (at least K entries); higher is
            more confident.
        label_ids: Cityscapes label id (24 person ... 33 bicycle) of instance k at index k - 1;
            0 (no class) leaves the instance out.
        stem: ``<city>_<seq>_<frame>`` of the image.
        folder: the results folder (created with its ``masks`` subfolder if missing).

    Returns:
        The txt file.
    """
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(1, int(labels.max(initial=0)) + 1):
        mask = labels == k
        if not mask.any() or not label_ids[k - 1]:  # empty, or no class (label id 0): no line
            continue
        relative = f"masks/{stem}_{k:03d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / relative)
        # Full precision: a fixed number of decimals could tie or reorder close scores.
        lines.append(f"{relative} {int(label_ids[k - 1])} {float(scores[k - 1])!r}")
    path = folder / f"{stem}_pred.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path
