"""What every per-image label-map metric shares: the input check and the mean / std summary.

The CVPPP (:mod:`recattend.metrics.cvppp`) and KITTI (:mod:`recattend.metrics.kitti`) metrics
take batches of integer label maps, keep one value per image and report the mean and population
standard deviation over images; these helpers do both the same way for all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The dtypes a label map may have (0 = background, instance ids > 0).
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_label_maps(pred: Tensor, target: Tensor) -> None:
    """Check that ``pred`` and ``target`` are integer (B, H, W) label maps of one shape.

    Args:
        pred: (B, H, W) predicted label maps, any of :data:`LABEL_DTYPES`.
        target: (B, H, W) ground-truth label maps, any of :data:`LABEL_DTYPES` (it may differ
            from ``pred``'s).

    Raises:
        ValueError: another number of dimensions, shapes that differ, or a non-integer dtype;
            the message gives the shapes or dtypes.
    """
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            "expected pred and target label maps of one shape (B, H, W), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dtype not in LABEL_DTYPES or target.dtype not in LABEL_DTYPES:
        raise ValueError(f"label maps must be integer tensors, got {pred.dtype} and {target.dtype}")


def mean_std(name: str, values: Tensor) -> dict[str, Tensor]:
    """The summary of per-image values: ``{name: mean, name + "_std": population std}``.

    Args:
        name: the metric's key, e.g. ``"sbd"``.
        values: (N,) float per-image values, N >= 1 (all ranks' images after a DDP sync).

    Returns:
        Two 0-d tensors of ``values``' dtype; the std is 0 for a single image.
    """
    return {name: values.mean(), f"{name}_std": values.std(correction=0)}
