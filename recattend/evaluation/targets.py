"""What the evaluators read from a batch besides the network's outputs: the ground-truth label
map of its instance slots, and how many original-image pixels one network pixel stands for."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def gt_label_map(masks: Tensor) -> Tensor:
    """The label maps of a batch's instance slots.

    Args:
        masks: (B, T, H, W) float or integer {0, 1} instance slots (the batch's ``masks``).

    Returns:
        (B, H, W) int64: slot t is instance t + 1 and 0 is background; where slots overlap, the
        later slot wins.
    """
    ids = torch.arange(1, masks.shape[1] + 1, device=masks.device, dtype=masks.dtype)
    return (masks * ids[None, :, None, None]).amax(1).long()


def pixel_area(batch: dict[str, Any]) -> Tensor:
    """Original-image pixels per network pixel, for ``min_size`` at network resolution.

    Args:
        batch: with ``image`` (B, C, h, w) and ``meta`` (B dicts, ``orig_size`` (H, W) where the
            sample gives it).

    Returns:
        (B,) float32 on the images' device: H W / (h w) for a sample with ``orig_size``, else 1
        (generated data is made at network resolution).
    """
    h, w = batch["image"].shape[-2:]
    areas = [
        float(meta["orig_size"][0]) * float(meta["orig_size"][1]) / (h * w)
        if "orig_size" in meta
        else 1.0
        for meta in batch["meta"]
    ]
    return torch.tensor(areas, device=batch["image"].device)
