"""The two facts about ranks the evaluators need: every rank's items, and who writes files.

Tensor metrics (torchmetrics) gather themselves in ``compute()``; these helpers serve the plain
Python records (per-image rows, COCO results). Each works, as a no-op, without a process group.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's items, concatenated in rank order, under DDP (``items`` itself otherwise).

    A collective: under DDP every rank must call it, in the same order as the other collectives.

    Args:
        items: this rank's picklable items.

    Returns:
        A list holding rank 0's items, then rank 1's, and so on.
    """
    if not _distributed():
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def is_global_zero() -> bool:
    """Whether this process writes the run's files: global rank 0, or the only process."""
    return not _distributed() or dist.get_rank() == 0
