"""Hand-made batches, a fake post-processing and fake datamodules for the evaluator tests.

The fake post-processing stands for ``SegmenterModule.postprocess``: each pixel takes the slot t + 1
of its largest mask value when that value is > 0.5 (else background), nearest-upsampled to
``size``; the real :func:`~recattend.postprocess.image_instances` then numbers the instances. So a
test writes the predicted label map it wants as the outputs' masks and knows what is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recattend.postprocess import Instances, image_instances


def slots(labels: Tensor, steps: int) -> Tensor:
    """(T, H, W) float {0, 1} slots of an (H, W) label map: slot t is label t + 1."""
    ids = torch.arange(1, steps + 1)[:, None, None]
    return (labels[None] == ids).float()


class FakePostProcess:
    """The module's post-processing, by hand (module docstring); records every call.

    Args:
        classes: per call, the train ids given to the instances 1..K of each image (None: no
            classes, as without a semantic pre-processor).
    """

    def __init__(self, classes: Sequence[int] | None = None) -> None:
        self.classes = classes
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        out: dict[str, Tensor],
        size: tuple[int, int] | None = None,
        pixel_area: Tensor | float = 1.0,
    ) -> list[Instances]:
        masks = out["masks"]
        assert out["scores"].shape[0] == masks.shape[0]
        self.calls.append({"images": masks.shape[0], "size": size, "pixel_area": pixel_area})
        best, slot = masks.max(1)
        maps = torch.where(best > 0.5, slot + 1, 0)
        if size is not None:
            maps = F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0].long()
        results = [image_instances(m, s) for m, s in zip(maps, out["scores"], strict=True)]
        if self.classes is not None:
            results = [
                r._replace(classes=torch.tensor(self.classes[: len(r.scores)], dtype=torch.int64))
                for r in results
            ]
        return results


def make_batch(
    targets: Sequence[Tensor],
    preds: Sequence[Tensor],
    scores: Sequence[Sequence[float]],
    metas: Sequence[dict[str, Any]],
    steps: int = 3,
    num_instances: Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A collated batch and the module's outputs from (h, w) label maps.

    Args:
        targets: per image, the ground truth at network resolution (the batch's ``masks``).
        preds: per image, the label map the fake post-processing will find (ids <= ``steps``).
        scores: per image, the ``steps`` scores s_t.
        metas: per image, its ``meta``.
        num_instances: the true counts (default: the instances in ``targets``).
    """
    masks = torch.stack([slots(t, steps) for t in targets])
    counts = num_instances or [int(m.amax((1, 2)).sum()) for m in masks]
    batch = {
        "image": torch.zeros(len(targets), 3, *targets[0].shape),
        "masks": masks,
        "num_instances": torch.tensor(counts),
        "meta": list(metas),
    }
    outputs = {
        "masks": torch.stack([slots(p, steps) for p in preds]),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    return batch, outputs


class FileData:
    """A datamodule of files, by hand: each sample's ground truth at its original resolution.

    Args:
        targets: sample id -> (H, W) integer label map (``original_target``).
        instance_ids: sample id -> (H, W) Cityscapes instanceIds map (``original_instance_ids``).
    """

    def __init__(
        self,
        targets: dict[str, np.ndarray],
        instance_ids: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.targets = targets
        self.instance_ids = instance_ids or {}
        self.read: list[str] = []

    def original_target(self, meta: dict[str, Any]) -> np.ndarray:
        self.read.append(meta["id"])
        return self.targets[meta["id"]].astype(np.int32)


class CityscapesData(FileData):
    """:class:`FileData` with the raw instanceIds maps Cityscapes AP reads."""

    def original_instance_ids(self, meta: dict[str, Any]) -> np.ndarray:
        return self.instance_ids[meta["id"]].astype(np.int64)
