"""Targets of the batch contract, computed once in the data pipeline from instance masks.

The contract (docs/design.md, "The batch contract") asks every DataModule for instances sorted by
area, largest first, padded to T = max_instances + 1 slots, with tight boxes, the foreground and an
8-way angle map. All of it derives from the post-augmentation instance masks, so it lives here and
nowhere else (a batch transform re-derives it: :mod:`recattend.data.augment`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from recattend.structures import ANGLE_IGNORE, NUM_ANGLE_CLASSES

log = logging.getLogger(__name__)

_warned_truncation = False


def angle_classes(masks: np.ndarray) -> np.ndarray:
    """Quantised direction of every instance pixel as seen from its instance centroid.

    The FCN pre-processor's angle target (paper section 2, Figure 3; the authors'
    ``data_api/orientation.py``): theta = atan2(dy, dx) with y pointing down, and class
    ``floor((theta + pi/8 + pi) * 8 / (2 pi)) mod 8``, so class k is centred on theta = -pi + k pi/4
    (class 0 points left, 2 up, 4 right, 6 down).

    Args:
        masks: (N, H, W) binary masks. Where masks overlap, the later one is on top and wins,
            the same painter's order the images were drawn in.

    Returns:
        (H, W) int64 map with classes in [0, 8) on instance pixels and 255 elsewhere.
    """
    n, h, w = masks.shape
    out = np.full((h, w), ANGLE_IGNORE, dtype=np.int64)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        if ys.size == 0:
            continue
        theta = np.arctan2(ys - ys.mean(), xs - xs.mean())
        bins = np.floor((theta + math.pi / 8 + math.pi) * NUM_ANGLE_CLASSES / (2 * math.pi))
        out[ys, xs] = bins.astype(np.int64) % NUM_ANGLE_CLASSES
    return out


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks as pixel edges ``(y0, x0, y1, x1)``, y1/x1 exclusive.

    A mask covering rows 2..4 has y0 = 2 and y1 = 5, so ``y1 - y0`` is its height in pixels.
    Empty masks get an all-zero box. Used for one sample's slots here and for whole batches after
    a batch transform (:mod:`recattend.data.augment`).

    Args:
        masks: (..., H, W) in {0, 1}, any float or bool dtype, any device.

    Returns:
        (..., 4) float32 boxes on the masks' device.
    """
    h, w = masks.shape[-2:]
    rows, cols = masks.amax(-1) > 0, masks.amax(-2) > 0  # (..., H), (..., W)

    def edges(line: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The first and one past the last True index along the line.
        return line.int().argmax(-1), size - line.flip(-1).int().argmax(-1)

    y0, y1 = edges(rows, h)
    x0, x1 = edges(cols, w)
    boxes = torch.stack([y0, x0, y1, x1], -1).float()
    return torch.where(rows.any(-1)[..., None], boxes, torch.zeros_like(boxes))


def instance_targets(
    image: np.ndarray,
    masks: np.ndarray,
    max_instances: int,
    meta: dict[str, Any],
    classes: np.ndarray | None = None,
    semantic: np.ndarray | None = None,
    empty_last_slot: bool = True,
) -> dict[str, Any]:
    """Build one sample of the batch contract from an image and its instance masks.

    Instances that are empty (e.g. cropped away by augmentation) are dropped; the rest are sorted
    by area, largest first (stable for ties). With ``empty_last_slot`` (the default) only the
    ``max_instances`` largest get a slot, so the last of the T = max_instances + 1 slots is always
    empty and gives the model its stop target; without it all T slots take instances (the
    authors' Cityscapes training: the T largest are supervised and a crowded image has no stop).
    ``num_instances`` keeps the true count, which may exceed ``max_instances``; the foreground and
    the angle map cover every instance, kept or not, since they describe the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) binary instance masks, N >= 0, in painter's order (later on top).
        max_instances: T - 1 (>= 1).
        meta: per-sample facts passed through (id, source path, original size, ...).
        classes: (N,) class of each instance (1..K), for multi-class data.
        semantic: (H, W) per-pixel class map, for multi-class data.
        empty_last_slot: keep the last slot empty (see above).

    Returns:
        ``image`` float32 (3, H, W) in [0, 1]; ``masks`` float32 (T, H, W) in {0, 1};
        ``num_instances`` int64 scalar; ``boxes`` float32 (T, 4); ``foreground`` float32 (1, H, W);
        ``angles`` int64 (H, W); ``meta`` the dict given; with ``classes``, ``instance_classes``
        int64 (T,) in slot order (0 for empty slots); with ``semantic``, ``semantic`` int64 (H, W).
    """
    global _warned_truncation
    h, w = image.shape[:2]
    masks = np.asarray(masks, dtype=bool).reshape(-1, h, w)
    areas = masks.sum(axis=(1, 2))
    present = areas > 0
    order = np.argsort(-areas[present], kind="stable")
    masks = masks[present][order]
    num = masks.shape[0]
    capacity = max_instances if empty_last_slot else max_instances + 1
    if num > capacity and not _warned_truncation:
        _warned_truncation = True
        log.warning(
            "an image has %d instances but only %d slots: the largest are kept "
            "(raise dataset.max_instances to keep more); this warning is shown once",
            num,
            capacity,
        )
    kept = masks[:capacity]
    slots = np.zeros((max_instances + 1, h, w), dtype=np.float32)
    slots[: kept.shape[0]] = kept
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0,
        "masks": torch.from_numpy(slots),
        "num_instances": torch.tensor(num, dtype=torch.int64),
        "boxes": tight_boxes(torch.from_numpy(slots)),  # empty slots: all-zero boxes
        "foreground": torch.from_numpy(masks.any(axis=0, keepdims=True).astype(np.float32))
        if num
        else torch.zeros(1, h, w),
        # Largest first means smaller instances are painted last, i.e. on top where masks overlap.
        "angles": torch.from_numpy(angle_classes(masks)),
        "meta": meta,
    }
    if classes is not None:
        slot_classes = np.zeros(max_instances + 1, dtype=np.int64)
        kept_classes = np.asarray(classes, dtype=np.int64)[present][order][:capacity]
        slot_classes[: kept_classes.shape[0]] = kept_classes
        sample["instance_classes"] = torch.from_numpy(slot_classes)
    if semantic is not None:
        sample["semantic"] = torch.from_numpy(np.asarray(semantic, dtype=np.int64))
    return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of the contract into a batch; ``meta`` stays a list of dicts."""
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "meta"}
    batch["meta"] = [s["meta"] for s in samples]
    return batch
