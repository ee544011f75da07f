"""Training augmentation policies: ``dataset.augment`` and the batch transforms it names.

A policy has two parts:

- **Per image** (``per_image``): an albumentations mapping applied to every training image on its
  own, before the targets are built (:mod:`recattend.data.transforms`).
- **Per batch** (``shift``, ``flips``, ``flip_stages``): one random draw for the whole batch,
  applied to the collated batch by the DataModule. The authors' policy (``dataset/augment=paper``)
  is of this kind: every image of a batch is zero-padded by ``shift`` pixels per side and cropped
  back to its size at one random offset in [0, 2 shift)^2, so the whole batch moves by the same
  (dy, dx) in [-shift, shift)^2; horizontal and vertical flips and the transpose, each with
  probability 1/2 per batch, only in the bootstrap stages listed in ``flip_stages`` (the authors
  flipped in the box stage only).

After a batch transform the contract's targets are made true again: instances are re-sorted by
area, those moved entirely out of the image are dropped (``num_instances`` counts them out), boxes
are recomputed from the masks, angle classes are mapped through the flip (the angle of a pixel to
its instance centroid is mirrored with the image). The angle map is otherwise moved as it is: the
few pixels of an instance cut by the image border keep the angle to the uncut centroid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from recattend.data.targets import tight_boxes
from recattend.structures import ANGLE_IGNORE, NUM_ANGLE_CLASSES

FLIPS = ("horizontal", "vertical", "transpose")
POLICY_KEYS = ("per_image", "shift", "flips", "flip_stages")

# Angle class k is centred on theta_k = -pi + k pi / 4 (x right, y down). Mirroring x maps theta
# to pi - theta, i.e. k -> 4 - k; mirroring y maps theta to -theta, k -> -k; the transpose swaps
# x and y, theta -> pi / 2 - theta, k -> 2 - k (all mod 8).
_ANGLE_MAPS = {
    "horizontal": [(4 - k) % NUM_ANGLE_CLASSES for k in range(NUM_ANGLE_CLASSES)],
    "vertical": [(-k) % NUM_ANGLE_CLASSES for k in range(NUM_ANGLE_CLASSES)],
    "transpose": [(2 - k) % NUM_ANGLE_CLASSES for k in range(NUM_ANGLE_CLASSES)],
}
# Per-pixel maps of the batch contract and the value that fills what a shift uncovers.
_PIXEL_MAPS = {"image": 0, "masks": 0, "foreground": 0, "angles": ANGLE_IGNORE, "semantic": 0}


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """A parsed ``dataset.augment`` (module docstring).

    Attributes:
        per_image: albumentations transform name -> keyword arguments.
        shift: the largest batch-shared translation, in pixels (0: none).
        flips: batch flips drawn with probability 1/2 each: any of ``horizontal``, ``vertical``,
            ``transpose``.
        flip_stages: the bootstrap stages (``box``, ``full``) in which ``flips`` apply; None: in
            every stage and without stages (e.g. the pre-processor's training).
    """

    per_image: dict[str, Any] = dataclasses.field(default_factory=dict)
    shift: int = 0
    flips: tuple[str, ...] = ()
    flip_stages: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, augment: Mapping[str, Any] | None, resolution: Sequence[int]) -> AugmentPolicy:
        """Read ``dataset.augment``; None is no augmentation.

        Raises:
            ValueError: an unknown key (an albumentations name at the top level is pointed to
                ``per_image``), a negative shift, an unknown flip, or the transpose of a
                non-square resolution.
        """
        augment = dict(augment or {})
        unknown = sorted(set(augment) - set(POLICY_KEYS))
        if unknown:
            raise ValueError(
                f"dataset.augment: unknown keys {unknown}; a policy has {list(POLICY_KEYS)}. "
                "Albumentations transforms go under dataset.augment.per_image (e.g. "
                "dataset.augment.per_image.HorizontalFlip.p=0.5); or pick a policy: "
                "dataset/augment=paper|strong|street|flips|none"
            )
        shift = int(augment.get("shift") or 0)
        if shift < 0:
            raise ValueError(f"dataset.augment.shift={shift} must be >= 0 pixels")
        flips = tuple(augment.get("flips") or ())
        bad = [f for f in flips if f not in FLIPS]
        if bad:
            raise ValueError(f"dataset.augment.flips: unknown {bad}; known: {list(FLIPS)}")
        if "transpose" in flips and resolution[0] != resolution[1]:
            raise ValueError(
                f"dataset.augment.flips has transpose but dataset.resolution={list(resolution)} "
                "is not square: a transposed batch would not fit; remove transpose"
            )
        stages = augment.get("flip_stages")
        return cls(
            per_image=dict(augment.get("per_image") or {}),
            shift=shift,
            flips=flips,
            flip_stages=None if stages is None else tuple(stages),
        )

    @property
    def batched(self) -> bool:
        """Whether there is anything to do per batch."""
        return bool(self.shift or self.flips)

    def __call__(self, batch: dict[str, Any], stage: str | None) -> dict[str, Any]:
        """One random draw of the batch part, applied to ``batch`` (a new dict is returned).

        Args:
            batch: a training batch of the contract, on any device.
            stage: the current bootstrap stage (None without stages).
        """
        geometry = []
        flipping = self.flip_stages is None or stage in self.flip_stages
        for flip in self.flips if flipping else ():
            if torch.rand(()) < 0.5:
                geometry.append(flip)
        offset = None
        if self.shift:
            dy, dx = torch.randint(0, 2 * self.shift, (2,)).tolist()
            offset = (dy - self.shift, dx - self.shift)
        return transform_batch(batch, geometry, offset)


def transform_batch(
    batch: dict[str, Any], flips: Sequence[str] = (), offset: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Flip, then translate, every per-pixel map of a batch alike, and refresh its targets.

    Args:
        batch: the batch contract; ``image`` (B, 3, H, W), ``masks`` (B, T, H, W), ``foreground``
            (B, 1, H, W), ``angles`` (B, H, W) and optionally ``semantic`` (B, H, W) and
            ``instance_classes`` (B, T).
        flips: applied in order, each of :data:`FLIPS` (the transpose needs H == W).
        offset: (dy, dx) pixels the content moves down and right (negative: up, left); what is
            uncovered is filled with 0 (255 in the angle map, its ignore value).

    Returns:
        A new batch dict with every map moved, the instances re-sorted by area (largest first),
        instances moved out of the image dropped from the slots and from ``num_instances``, and
        ``boxes`` recomputed; other entries (``meta``) are passed through.
    """
    out = dict(batch)
    for flip in flips:
        for key in _PIXEL_MAPS.keys() & out.keys():
            x = out[key]
            if flip == "horizontal":
                out[key] = x.flip(-1)
            elif flip == "vertical":
                out[key] = x.flip(-2)
            else:
                out[key] = x.transpose(-1, -2)
        table = torch.tensor(_ANGLE_MAPS[flip], device=out["angles"].device)
        angles = out["angles"]
        on = angles != ANGLE_IGNORE
        out["angles"] = torch.where(on, table[angles.clamp(max=NUM_ANGLE_CLASSES - 1)], angles)
    if offset is not None and any(offset):
        for key in _PIXEL_MAPS.keys() & out.keys():
            out[key] = _translate(out[key], *offset, _PIXEL_MAPS[key])
    return _refresh_instances(out, batch["masks"])


def _translate(x: Tensor, dy: int, dx: int, fill: int) -> Tensor:
    """(..., H, W) moved by (dy, dx) pixels; uncovered pixels take ``fill``."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def _refresh_instances(batch: dict[str, Any], before: Tensor) -> dict[str, Any]:
    """Re-sort slots by area, count out vanished instances and recompute the tight boxes."""
    masks = batch["masks"]
    areas = masks.sum((2, 3))  # (B, T)
    vanished = ((before.sum((2, 3)) > 0) & (areas == 0)).sum(1)
    order = torch.sort(-areas, dim=1, stable=True).indices
    batch["masks"] = masks.gather(1, order[:, :, None, None].expand_as(masks))
    if "instance_classes" in batch:
        classes = batch["instance_classes"].gather(1, order)
        batch["instance_classes"] = torch.where(areas.gather(1, order) > 0, classes, 0)
    batch["num_instances"] = batch["num_instances"] - vanished
    batch["boxes"] = tight_boxes(batch["masks"])
    return batch
