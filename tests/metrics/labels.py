"""Shared 4x4 label maps, metric values and the 2-process DDP check of the metric tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import Metric


def columns(*ids: int) -> torch.Tensor:
    """(4, 4) int64 label map whose column c is ``ids[c]`` on every row (4 pixels per column)."""
    return torch.tensor(ids, dtype=torch.int64).expand(4, 4).clone()


# Ground truth: instance 1 on columns 0..2 (12 px), instance 2 on column 3 (4 px).
GT_TWO = columns(1, 1, 1, 2)
# Ground truth with instance 1 only (12 px), column 3 background.
GT_ONE = columns(1, 1, 1, 0)
EMPTY = columns(0, 0, 0, 0)


def metric_values(metrics: Sequence[Metric], pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Every metric updated once with a (B, H, W) batch, computed, merged into plain floats."""
    values: dict[str, float] = {}
    for metric in metrics:
        metric.update(pred, target)
        values |= {k: v.item() for k, v in metric.compute().items()}
    return values


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """Five (pred, target) images: perfect, merged, dropped, extra, empty."""
    pred = torch.stack([GT_TWO, columns(1, 1, 1, 1), GT_ONE, columns(1, 1, 1, 2), EMPTY])
    target = torch.stack([GT_TWO, GT_TWO, GT_TWO, GT_ONE, GT_TWO])
    return pred, target


def _ddp_worker(
    rank: int, world_size: int, folder: Path, make: Callable[[], Sequence[Metric]]
) -> None:
    init_method = f"file://{folder / 'process_group'}"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        pred, target = dataset()
        # Uneven shards (3 + 2 images) check that every image counts exactly once.
        shard = slice(0, 3) if rank == 0 else slice(3, 5)
        got = metric_values(make(), pred[shard], target[shard])
        (folder / f"rank{rank}.json").write_text(json.dumps(got))
    finally:
        # Gloo threads alive at exit abort the process (see recattend.callbacks.teardown).
        dist.barrier()
        dist.destroy_process_group()


def ddp_and_single_process_values(
    make: Callable[[], Sequence[Metric]], tmp_path: Path
) -> tuple[list[dict], dict]:
    """What each of two gloo processes computes on :func:`dataset`, and the single-process values
    (``make`` must be a module-level function, so the spawned processes can import it)."""
    mp.spawn(_ddp_worker, args=(2, tmp_path, make), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, metric_values(make(), *dataset())
