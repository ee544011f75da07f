"""The training rollout (paper 2.6): T steps of the segmenter with teacher forcing, which ground
truth is fed back, when, and with what noise.

:func:`rollout` runs the T steps of a training batch: each step locates its box, segments (in the
``full`` stage) and writes its mask, or the fed ground truth, on the canvas (eq. 1).

At each timestep t two independent Bernoulli switches per image decide whether the segmentation
network reads its patch from a ground-truth box (the box "knob") and whether the canvas receives a
ground-truth mask instead of the prediction (the mask "knob"). How often they fire is set from
outside: :class:`~recattend.callbacks.sampling.ScheduledSampling` sets
:attr:`TeacherForcing.probabilities` before every training batch, and the bootstrap ``box`` stage
(:class:`~recattend.callbacks.bootstrap.BootstrapStages`) always feeds ground-truth masks and
never boxes. The module's ``teacher_forcing`` setting decides how the schedule is used in the
``full`` stage: ``scheduled`` (the paper's scheduled sampling) follows it; ``ground_truth`` (the
paper's "no scheduled sampling" ablation, Table 4 and section 4.1: "at training time, always use
the maximally overlapped ground-truth") feeds the ground-truth mask at every step and timestep,
so the model reads its own masks only at test time, boxes still by the schedule; ``predictions``
(not in the paper, the opposite extreme) never feeds ground truth.

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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from recattend import ops
from recattend.losses import box_iou, pad_boxes, padded_gt_boxes, supervised_counts
from recattend.models.filterbank import box_edges_to_center_size
from recattend.models.network import SegmenterNetwork
from recattend.models.segmenter import BoxState, RecurrentSegmenter, StepOutput
from recattend.models.timestep import TimestepConvStack, TimestepDeconvStack

MASK_NOISE = 0.3  # fed masks are y* (1 - U(0, MASK_NOISE))
BOX_PAD_RATIO = (0.1, 0.3)  # fed boxes are padded by U(low, high) of their tight size
BOX_SHIFT = 0.05  # ... and their centre shifted by U(-BOX_SHIFT, BOX_SHIFT) of a size (jitter)
JITTERS = ("padded", "tight")  # module.fed_box_jitter: the size that scales the centre shift
MODES = ("scheduled", "ground_truth", "predictions")  # module.teacher_forcing


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
        mode: how the schedule is used (``module.teacher_forcing``, module docstring):
            ``"scheduled"``, ``"ground_truth"`` or ``"predictions"``.

    Attributes:
        probabilities: per kind (``"box"``, ``"mask"``) the (T,) probability at each timestep of
            feeding ground truth in the ``full`` stage, on the model's device; None (the
            default, and outside the full stage) feeds none. Set through :meth:`schedule`.
    """

    def __init__(self, box_iou: str = "soft", jitter: str = "padded", mode: str = "scheduled"):
        self.box_iou, self.jitter, self.mode = box_iou, jitter, mode
        self.probabilities: dict[str, Tensor] | None = None

    def schedule(self, probabilities: dict[str, Tensor] | None) -> None:
        """Take the scheduled probabilities (per kind, (T,)) as :attr:`mode` uses them:
        unchanged (``scheduled``), the mask's all 1 (``ground_truth``) or all 0
        (``predictions``); None feeds no ground truth."""
        if probabilities is not None and self.mode != "scheduled":
            probabilities = dict(probabilities)
            for kind, value in probabilities.items():
                if self.mode == "predictions":
                    probabilities[kind] = torch.zeros_like(value)
                elif kind == "mask":
                    probabilities[kind] = torch.ones_like(value)
        self.probabilities = probabilities

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


def rollout(
    net: SegmenterNetwork,
    batch: dict[str, Any],
    stage: str,
    min_pad: float,
    box_iou: str = "soft",
    forcing: TeacherForcing | None = None,
    recompute: bool | str = False,
    compiled: bool = False,
) -> list[StepOutput]:
    """All T training steps of a batch, with teacher forcing (eq. 1: canvas = max of the masks
    written so far, no gradient across steps).

    Args:
        net: the network; its segmenter runs the steps on x (:meth:`SegmenterNetwork.inputs`).
        batch: the batch contract's ``image``, ``masks``, ``boxes`` and ``num_instances``.
        stage: the bootstrap stage: ``"box"`` (the box network alone, every canvas write the
            noised ground truth) or ``"full"``.
        min_pad: the stage's minimum ground-truth box padding (px).
        box_iou: the losses' box IoU (``module.box_iou``), for which the padded ground-truth
            boxes are prepared: ``"soft"`` or ``"coordinates"`` (whose losses read the box
            edges too).
        forcing: the teacher forcing; None feeds no ground truth.
        recompute: what the backward pass recomputes (``module.recompute``): False
            nothing, ``"full_resolution"`` the box CNN's full-resolution layers, True each step.
        compiled: the step functions are ``torch.compile`` d (no parallel backward then).

    Returns:
        The T :class:`~recattend.models.segmenter.StepOutput` s; on the CPU fast path their
        tensors are joined so that the backward runs the steps in parallel
        (:func:`recattend.ops.join_step_outputs`).
    """
    model = net.segmenter
    if model.box_net is not None:
        model.box_net.cnn.recompute_full_resolution = recompute == "full_resolution"
    step = _recomputed_steps(model) if recompute is True and torch.is_grad_enabled() else None
    shared = model.prepare(net.inputs(batch["image"]))
    workers = ops.backward_workers(model, model.steps, compiled)
    x = shared if workers == 1 else shared.detach().requires_grad_(shared.requires_grad)
    counts = supervised_counts(batch["num_instances"], batch["boxes"])
    padded = padded_gt_boxes(box_iou, batch["boxes"], counts, min_pad, model.image_size)
    canvas = x.new_zeros(x.shape[0], 1, *model.image_size)
    outs = []
    for t in range(model.steps):
        box = step(model.locate, x, canvas, t) if step else model.locate(x, canvas, t)
        knob = None
        if forcing is not None:
            knob = forcing.knob(model, t, box, batch, padded, stage, min_pad)
        if stage == "box":
            out = model.box_only(box)
            written = torch.zeros_like(canvas[:, 0])  # every image takes ground truth below
        else:
            patch_box = None if knob is None else knob.patch_box(box)
            args = (x, canvas, t, box, patch_box)
            out = step(model.segment, *args) if step else model.segment(*args)
            written = out.mask.detach()
        outs.append(out)
        if knob is not None:
            written = knob.write(written)
        canvas = torch.maximum(canvas, written[:, None])  # eq. (1), no gradient across steps
    if workers == 1:
        return outs
    parameters = [p for p in model.parameters() if p.requires_grad]
    read = ("mask", "soft_box", "score")  # by the losses, and the box edges by coordinates
    read += ("box_edges",) if box_iou == "coordinates" else ()
    return ops.join_step_outputs(outs, read, parameters, x, shared, workers)


def _recomputed_steps(model: RecurrentSegmenter) -> Callable[..., Any]:
    """``run(function, x, canvas, t, *args)``: step t's ``function`` keeping only its inputs and
    outputs, recomputed in backward with step t's BatchNorm statistics restored after the
    recomputation (:func:`recattend.ops.recomputed`)."""
    stacks = [
        m for m in model.modules() if isinstance(m, TimestepConvStack | TimestepDeconvStack)
    ]  # DDP's SyncBatchNorm conversion replaces their layers, not them

    def run(function: Callable[..., Any], x: Tensor, canvas: Tensor, t: int, *args: Any) -> Any:
        norms = [norm for stack in stacks for norm in stack.norms[t]]
        return ops.recomputed(function, norms, x, canvas, t, *args)

    return run
