"""Teacher forcing during a training rollout (paper 2.6): which ground truth is fed back, when,
and with what noise.

At each timestep t two independent Bernoulli switches per image decide whether the segmentation
network reads its patch from a ground-truth box (the box "knob") and whether the canvas receives a
ground-truth mask instead of the prediction (the mask "knob"). How often they fire is set from
outside: :class:`~recattend.callbacks.sampling.ScheduledSampling` sets
:attr:`TeacherForcing.probabilities` before every training batch, and the bootstrap ``box`` stage
(:class:`~recattend.callbacks.bootstrap.BootstrapStages`) always feeds ground-truth masks and
never boxes.

What is fed is the maximally overlapping instance: the slot whose padded ground-truth box has the
highest box IoU with the predicted box, chosen with replacement among all T slots, so the model
learns to continue from wherever its own box went. The box IoU is the loss's
(``module.box_iou``, :func:`recattend.losses.box_iou`): by default the soft IoU with the predicted
soft box b_t (eq. 25); with ``coordinates`` (the authors' Cityscapes run) the coordinate IoU of
the predicted box with the padded ground-truth box. The noise keeps the model from trusting the fed
ground truth blindly: masks are y* (1 - U(0, 0.3)); boxes are padded by U(0.1, 0.3) of the tight
box's size per image (at least the stage's minimum padding) and their centre shifted per axis by
U(-0.05, 0.05) of a size that ``module.fed_box_jitter`` chooses: ``padded`` (the default) the
padded box's, ``tight`` (the authors') the tight box's, less for a small instance, whose padding is
the minimum (3x less for one as small as the minimum padding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from recattend.losses import box_iou, pad_boxes
from recattend.models.filterbank import box_edges_to_center_size
from recattend.models.segmenter import BoxState, RecurrentSegmenter

MASK_NOISE = 0.3  # fed masks are y* (1 - U(0, MASK_NOISE))
BOX_PAD_RATIO = (0.1, 0.3)  # fed boxes are padded by U(low, high) of their tight size
BOX_SHIFT = 0.05  # ... and their centre shifted by U(-BOX_SHIFT, BOX_SHIFT) of a size (jitter)
JITTERS = ("padded", "tight")  # module.fed_box_jitter: the size that scales the centre shift


@dataclasses.dataclass
class StepForcing:
    """Teacher forcing at one step: which images use a ground-truth box / canvas mask, and what.

    Shapes: ``use_box``, ``use_mask`` (B,) bool; ``center``, ``size`` (B, 2) float pixels (y, x)
    of the box to extract the patch from; ``mask`` (B, H, W) float in [0, 1], the noised mask.
    """

    use_box: Tensor
    center: Tensor
    size: Tensor
    use_mask: Tensor
    mask: Tensor

    def patch_box(self, box: BoxState) -> BoxState | None:
        """``box`` with the ground-truth centre and size where ``use_box``; None when no image
        uses one (the segmentation network then reads the predicted box)."""
        if not self.use_box.any():
            return None
        use = self.use_box[:, None]
        return dataclasses.replace(
            box,
            center=torch.where(use, self.center, box.center),
            size=torch.where(use, self.size, box.size),
        )

    def write(self, written: Tensor) -> Tensor:
        """What the canvas receives, (B, H, W): the noised ground truth where ``use_mask``,
        ``written`` (the prediction) elsewhere."""
        return torch.where(self.use_mask[:, None, None], self.mask, written)


class TeacherForcing:
    """The switches and the fed ground truth of one rollout's steps (module docstring).

    Args:
        box_iou: how the maximally overlapping instance is chosen, the loss's box IoU
            (``module.box_iou``): ``"soft"`` or ``"coordinates"``.
        jitter: the size that scales the fed box's centre shift (``module.fed_box_jitter``):
            ``"padded"`` or ``"tight"``.

    Attributes:
        probabilities: per kind (``"box"``, ``"mask"``) the (T,) probability at each timestep of
            feeding ground truth in the ``full`` stage, on the model's device; None (the
            default, and what :class:`~recattend.callbacks.sampling.ScheduledSampling` sets
            outside the full stage) feeds none.
    """

    def __init__(self, box_iou: str = "soft", jitter: str = "padded") -> None:
        self.box_iou, self.jitter = box_iou, jitter
        self.probabilities: dict[str, Tensor] | None = None

    def draw(self, kind: str, t: int, b: int, stage: str, device: torch.device) -> Tensor:
        """(B,) bool switches: feed ground truth of ``kind`` (``"box"`` or ``"mask"``) at step t.

        In the ``box`` stage the canvas always receives ground truth and the patch never comes
        from a ground-truth box (the box network is what is trained).
        """
        if stage == "box":
            return torch.full((b,), kind == "mask", dtype=torch.bool, device=device)
        if self.probabilities is None:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.rand(b, device=device) < self.probabilities[kind][t]

    def knob(
        self,
        model: RecurrentSegmenter,
        t: int,
        box: BoxState,
        batch: dict[str, Any],
        padded: Tensor,
        stage: str,
        min_pad: float,
    ) -> StepForcing | None:
        """Draw step t's switches and pick the ground truth to feed (module docstring).

        Args:
            model: the segmenter (its :meth:`~RecurrentSegmenter.soft_box` gives b_t, read by the
                soft box IoU).
            box: step t's predicted box; without a box network (``box.z`` None) the attention
                covers the whole image and no instance overlaps best, so the slot fed is the
                step's own (t), largest instances first, and no box is ever fed.
            batch: the batch contract's ``image`` (B, C, H, W), ``masks`` (B, T, H, W) and
                ``boxes`` (B, T, 4) pixel edges.
            padded: the padded ground-truth boxes in the form the box IoU reads
                (:func:`~recattend.losses.padded_gt_boxes`): (B, T, H, W) rasters (``soft``) or
                (B, T, 4) pixel edges (``coordinates``).
            stage: the bootstrap stage, ``"box"`` or ``"full"``.
            min_pad: the stage's minimum ground-truth box padding (px).

        Returns:
            The :class:`StepForcing`, or None when no image is teacher-forced at this step.
        """
        x = batch["image"]
        b, device = x.shape[0], x.device
        use_box = self.draw("box", t, b, stage, device)
        use_mask = self.draw("mask", t, b, stage, device)
        if box.z is None:
            use_box = torch.zeros_like(use_box)
        if not (use_box.any() or use_mask.any()):
            return None
        rows = torch.arange(b, device=device)
        if box.z is None:
            m = torch.full((b,), t, device=device)
        else:
            with torch.no_grad():  # b_t only where the box IoU reads it
                soft_box = model.soft_box(box)[:, None] if self.box_iou == "soft" else None
                iou = box_iou(self.box_iou, soft_box, box.edges()[:, None], padded)
            m = iou[:, 0].argmax(1)  # (B,)
        low, high = BOX_PAD_RATIO
        tight = batch["boxes"][rows, m]  # (B, 4)
        ratio = low + (high - low) * torch.rand(b, 1, device=device, dtype=tight.dtype)
        center, size = box_edges_to_center_size(pad_boxes(tight, min_pad, ratio))
        # The shift's scale: the padded box's size delta, or the tight box's y1 - y0, x1 - x0
        # (the size its padding ratio multiplies, as the authors shift it before padding).
        scale = size if self.jitter == "padded" else tight[:, 2:] - tight[:, :2]
        center = center + BOX_SHIFT * (2 * torch.rand_like(center) - 1) * scale
        noise = 1 - MASK_NOISE * torch.rand_like(batch["masks"][:, 0])
        return StepForcing(use_box, center, size, use_mask, batch["masks"][rows, m] * noise)
