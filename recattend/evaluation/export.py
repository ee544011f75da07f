"""Writing predictions: label PNGs, colour overlays, COCO results JSON, Cityscapes result files.

All writers take one image's instance label map (0 = background, instances 1..K) at the image's
original resolution, as :class:`recattend.postprocess.PostProcess` gives after upsampling. The
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
    """Instances tinted in distinct colours with white outlines, and the count in a strip below.

    The count ("3 instances") is written on a white strip under the image, never on it, so that
    no pixel of a small image is hidden: the first H rows are the image, each pixel either as it
    was (background), tinted (instances) or white (their outlines). The text is scaled to the
    image's width: about 12 px high up to 640-pixel-wide images, larger above; on narrow images
    it shortens ("3 inst.", then "3") before it shrinks.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer label map of the same size, 0 = background.
        alpha: the tint's weight in [0, 1].

    Returns:
        (H + strip, W, 3) uint8 RGB, the strip ``count_strip_height(W)`` rows high.
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
    return np.concatenate([out, count_strip(len(ids), image.shape[1])], axis=0)


def count_strip_height(width: int) -> int:
    """Rows of the count strip :func:`overlay` puts under a ``width``-pixel-wide image."""
    scale = _count_scale(width)
    (_, th), base = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, _thickness(scale))
    return th + base + 2 * max(2, th // 3)


def count_strip(count: int, width: int) -> np.ndarray:
    """A white (count_strip_height(width), width, 3) uint8 strip reading "``count`` instances"
    in black, left-aligned; the longest of "N instances", "N inst." and "N" that fits the width,
    shrunk to fit when even "N" does not."""
    scale, thickness = _count_scale(width), _thickness(_count_scale(width))
    height = count_strip_height(width)
    pad = max(2, (height - 2) // 6)
    words = (f"{count} instance{'s' if count != 1 else ''}", f"{count} inst.", f"{count}")
    font = cv2.FONT_HERSHEY_SIMPLEX
    fits = [t for t in words if cv2.getTextSize(t, font, scale, thickness)[0][0] <= width - 2 * pad]
    text = fits[0] if fits else words[-1]
    if not fits:  # a very narrow image: the number alone, shrunk to the width
        scale *= max(width - 2 * pad, 1) / cv2.getTextSize(text, font, scale, thickness)[0][0]
    strip = np.full((height, width, 3), 255, np.uint8)
    (_, th), base = cv2.getTextSize(text, font, scale, thickness)
    org = (pad, (height + th) // 2 - base // 2)
    cv2.putText(strip, text, org, font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def _count_scale(width: int) -> float:
    # 0.45 (12 px letters) up to 640 px, then growing with the image so a 4000-px photo's count
    # stays readable when the overlay is viewed scaled down.
    return max(0.45, width / 640 * 0.45)


def _thickness(scale: float) -> int:
    return max(1, int(round(scale * 2)))


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
    (:class:`recattend.postprocess.PostProcess`); the evaluator therefore scores the post-processed
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
