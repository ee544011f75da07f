"""Losses of the recurrent segmenter (paper section 2.5, eq. 21-27).

The total loss is eq. (21): L = L_y + lambda_b L_b + lambda_s L_s, with

- L_y, the matching IoU loss: a soft-IoU matrix between the T predicted masks and the ground-truth
  slots (eq. 22), a maximum-weight bipartite matching computed without gradient, and minus the mean
  matched IoU (eq. 23-24);
- L_b, the box IoU loss: the same on the re-projected soft boxes b_t (eq. 25) against binary
  rasters of padded ground-truth boxes, with its own matching (eq. 26); or, with
  ``module.box_iou=coordinates``, on the predicted boxes' coordinates (below);
- L_s, the monotonic score loss on the scores s_t, whose target s*_t is 1 for the predictions the
  segmentation matching paired with an instance (eq. 27).

Everything is batched over images; the only per-image Python work is the Hungarian assignment.

Choices, and where this port departs from the authors' code or the text:

- **Matching only the first n_b predictions.** As in the authors' code, the matching runs on the
  top-left n_b x n_b block of the IoU matrix (the first n_b predictions against the n_b real
  instances). The code masks the full matrix by s* on both axes instead; the two are equivalent
  because block-internal assignments always weakly dominate cross-block ones. Consequently
  predictions t >= n_b get no segmentation or box loss: contrary to the paper's remark that the
  matching penalises false positives directly, they are pushed down only by the score loss.
- **Normalisation.** Eq. (24) divides by N; here N = n_b per image, clamped to [1, min(T, N_slots)]
  so an image without instances contributes 0 to L_y and L_b (it still gets the score loss).
- **Logs.** Eq. (27) is written without a stabiliser; as in the code, 1e-5 is added inside both
  logs. Its 1/T is averaged over the batch too, i.e. 1/(B T).
- **Padded GT boxes.** Boxes use the batch contract's pixel edges (y1, x1 exclusive), so a side's
  size is ``y1 - y0`` pixels; the authors' code uses the difference of inclusive indices (one
  less). Each side grows by max(ratio * size, min_pad); the caller passes the current bootstrap
  stage's ``min_pad`` (the paper recipes: 10 px in the box stage, 20 px in the full stage, at
  224x224). The authors' code rasterises inclusive integer corners; here a pixel is inside when its
  centre (y + 0.5, x + 0.5) lies in the half-open padded box, i.e. each real-valued edge is rounded
  to the nearest integer (halves down), so both sides of an axis grow by the same whole number of
  pixels. The raster covers only image pixels, which is the clipping to the image.
- **Box IoU** (``module.box_iou``, :data:`BOX_IOUS`). ``soft`` (the default): the soft-map IoU of
  eq. (25-26). ``coordinates``: the authors' ``--use_iou_box`` of their Cityscapes run, the IoU of
  the predicted box's coordinates with those of the padded ground-truth box
  (:func:`coordinate_iou`), for both the matching and L_b (and teacher forcing's choice of the
  instance to feed); it is 0 with no gradient when the boxes do not overlap, the paper's argument
  for the soft version. The predicted box (centre g, size delta, eq. 7-10) has the pixel edges
  g - delta/2 and g + delta/2 + 1, so that, as the ground-truth box, it is one pixel larger per
  axis than in the authors' inclusive coordinates. The coordinates are not clipped to the image
  (the raster of ``soft`` is), and an empty slot's box is (0, 0)-(2 min_pad, 2 min_pad) as in the
  authors' code (:func:`padded_box_edges`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

BOX_IOUS = ("soft", "coordinates")
"""The kinds of box IoU (``module.box_iou``): the soft-map IoU of eq. (25-26) or the coordinate IoU
(module docstring)."""


def soft_iou(pred: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Pairwise soft IoU between predicted and ground-truth maps (eq. 22).

    Args:
        pred: float (B, T, H, W) in [0, 1], the predictions y_i.
        target: (B, N, H, W) in [0, 1], the ground truth y*_j (cast to ``pred``'s dtype).
        eps: added to the denominator so two empty maps have IoU 0, not 0/0.

    Returns:
        (B, T, N) matrix M with M[b, i, j] = sum(y_i y*_j) / (sum(y_i + y*_j - y_i y*_j) + eps),
        in [0, 1), differentiable in both arguments.
    """
    p = pred.flatten(2)
    t = target.flatten(2).to(p.dtype)
    # sum(p * t) for every pair (i, j) at once: a batched matmul over the flattened pixels.
    intersection = torch.bmm(p, t.transpose(1, 2))
    # sum(p + t - p t) = sum(p) + sum(t) - sum(p t), by linearity.
    union = p.sum(-1).unsqueeze(2) + t.sum(-1).unsqueeze(1) - intersection
    return intersection / (union + eps)  # eq. (22)


def coordinate_iou(pred: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Pairwise IoU of axis-aligned boxes from their coordinates (the authors' ``--use_iou_box``).

    IoU = intersection area / union area. Unlike :func:`soft_iou` on the soft boxes (eq. 25-26),
    it is 0 for boxes that do not overlap, and then has no gradient: a predicted box far from
    every ground-truth box is not pulled towards any (the paper's argument for the soft version).

    Args:
        pred: float (B, T, 4) boxes (y0, x0, y1, x1) as pixel edges, y0 <= y1 and x0 <= x1.
        target: (B, N, 4) boxes alike (cast to ``pred``'s dtype).
        eps: added to the union so two empty boxes have IoU 0, not 0/0.

    Returns:
        (B, T, N) matrix in [0, 1), differentiable in both arguments where the boxes overlap.
    """
    p, t = pred[:, :, None], target.to(pred.dtype)[:, None]  # (B, T, 1, 4), (B, 1, N, 4)
    lo = torch.maximum(p[..., :2], t[..., :2])
    hi = torch.minimum(p[..., 2:], t[..., 2:])
    intersection = (hi - lo).clamp(min=0).prod(-1)  # 0 along an axis where they are disjoint
    area_p = (p[..., 2:] - p[..., :2]).prod(-1)
    area_t = (t[..., 2:] - t[..., :2]).prod(-1)
    return intersection / (area_p + area_t - intersection + eps)


def _matched_counts(num_valid: Tensor, iou: Tensor) -> Tensor:
    """n_b clamped to [0, min(T, N)]: there cannot be more matched pairs than rows or columns."""
    return num_valid.clamp(min=0, max=min(iou.shape[1], iou.shape[2]))


def hungarian_match(iou: Tensor, num_valid: Tensor) -> Tensor:
    """Maximum-IoU bipartite matching of the first n_b predictions to the n_b real instances.

    Per image, ``scipy.optimize.linear_sum_assignment`` maximises the summed IoU on the top-left
    n_b x n_b block (rows: predictions 0..n_b-1; columns: ground-truth slots 0..n_b-1), as the
    authors' masked matching does (module docstring). No gradient flows through it (paper 2.5a).

    Args:
        iou: (B, T, N) IoU matrix from :func:`soft_iou`.
        num_valid: int64 (B,) number n_b of real ground-truth instances per image; clamped to
            [0, min(T, N)].

    Returns:
        (B, T, N) assignment in {0, 1} with ``iou``'s dtype and device, no gradient: exactly n_b
        ones per image, one per row and column of the block, zeros elsewhere (all zero if n_b = 0).
    """
    weights = iou.detach().to("cpu", torch.float64).numpy()
    counts = _matched_counts(num_valid, iou).tolist()
    match = np.zeros(weights.shape, dtype=np.float32)
    for b, n in enumerate(counts):
        if n > 0:
            rows, cols = linear_sum_assignment(weights[b, :n, :n], maximize=True)
            match[b, rows, cols] = 1.0
    return torch.from_numpy(match).to(device=iou.device, dtype=iou.dtype)


def matched_iou_loss(iou: Tensor, match: Tensor, num_valid: Tensor) -> Tensor:
    """Minus the mean matched IoU (eq. 23-24), averaged over the batch.

    Args:
        iou: (B, T, N) IoU matrix M; the gradient flows through it only.
        match: (B, T, N) assignment in {0, 1} from :func:`hungarian_match` (treated as constant).
        num_valid: int64 (B,) instance counts n_b, clamped to [1, min(T, N)] for the division.

    Returns:
        Scalar -mean_b [ sum_ij match_bij M_bij / max(1, n_b) ] in [-1, 0].
    """
    n = _matched_counts(num_valid, iou).clamp(min=1).to(device=iou.device, dtype=iou.dtype)
    per_image = (match.detach() * iou).sum(dim=(1, 2)) / n  # eq. (24)
    return -per_image.mean()  # eq. (23)


def pad_boxes(boxes: Tensor, min_pad: float, ratio: float | Tensor = 0.2) -> Tensor:
    """Grow each side of pixel-edge boxes (..., 4) = (y0, x0, y1, x1) by max(ratio * size, min_pad).

    ``ratio`` may be a tensor broadcasting against (..., 2), e.g. (B, 1) for one ratio per box.

    The padding of the soft box targets (eq. 26, Pad(b*)) and of the ground-truth boxes fed by
    teacher forcing; ``min_pad`` is the current stage's (:attr:`SegmenterModule.box_min_pad`).
    """
    lo, hi = boxes[..., :2], boxes[..., 2:]
    pad = (ratio * (hi - lo)).clamp(min=min_pad)
    return torch.cat([lo - pad, hi + pad], dim=-1)


def padded_box_masks(
    boxes: Tensor,
    size: tuple[int, int],
    num_valid: Tensor,
    min_pad: float,
    ratio: float = 0.2,
) -> Tensor:
    """Binary rasters of padded ground-truth boxes, Pad(b*) of eq. (26).

    Each side of a box grows by max(ratio * size along that axis, min_pad) pixels. A pixel (y, x)
    is inside when its centre lies in the padded box: y0' <= y + 0.5 < y1' and
    x0' <= x + 0.5 < x1', i.e. every padded edge rounded to the nearest integer (halves down) and
    then y0' <= y < y1'. Only image pixels are rasterised, which clips the box to the image.

    Args:
        boxes: float (B, N, 4) tight boxes (y0, x0, y1, x1) as pixel edges, y1/x1 exclusive
            (rows 2..4 give y0 = 2, y1 = 5); padded slots are zero.
        size: image (H, W).
        num_valid: int64 (B,) number n_b of real boxes; slots j >= n_b are all zero.
        min_pad: smallest growth of a side, in pixels (the paper recipes: 10 in the box stage,
            20 in the full stage).
        ratio: growth as a fraction of the box's height (top, bottom) or width (left, right).

    Returns:
        (B, N, H, W) float in {0, 1}, ``boxes``' dtype and device.
    """
    h, w = size
    y0, x0, y1, x1 = pad_boxes(boxes, min_pad, ratio).unbind(-1)  # each (B, N)
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5  # pixel centres
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    in_y = (ys >= y0.unsqueeze(-1)) & (ys < y1.unsqueeze(-1))  # (B, N, H)
    in_x = (xs >= x0.unsqueeze(-1)) & (xs < x1.unsqueeze(-1))  # (B, N, W)
    valid = _valid_slots(boxes, num_valid)
    inside = in_y.unsqueeze(-1) & in_x.unsqueeze(-2) & valid[..., None, None]
    return inside.to(boxes.dtype)


def padded_box_edges(
    boxes: Tensor, num_valid: Tensor, min_pad: float, ratio: float = 0.2
) -> Tensor:
    """Padded ground-truth boxes as coordinates, Pad(b*) for :func:`coordinate_iou`.

    A real box grows as in :func:`pad_boxes`, unclipped; an empty slot becomes the box
    (0, 0)-(2 min_pad, 2 min_pad) in the image's top-left corner, as the authors' code gives it.

    Args:
        boxes: float (B, N, 4) tight boxes (y0, x0, y1, x1) as pixel edges; padded slots zero.
        num_valid: int64 (B,) number n_b of real boxes; slots j >= n_b are empty.
        min_pad: smallest growth of a side, in pixels.
        ratio: growth as a fraction of the box's height (top, bottom) or width (left, right).

    Returns:
        (B, N, 4) edges (y0, x0, y1, x1), ``boxes``' dtype and device.
    """
    empty = boxes.new_tensor([0.0, 0.0, 2 * min_pad, 2 * min_pad])
    valid = _valid_slots(boxes, num_valid)[..., None]
    return torch.where(valid, pad_boxes(boxes, min_pad, ratio), empty)


def _valid_slots(boxes: Tensor, num_valid: Tensor) -> Tensor:
    """(B, N) bool on ``boxes``' device: slot j < n_b, a real instance."""
    slots = torch.arange(boxes.shape[1], device=boxes.device)
    return slots < num_valid.to(boxes.device).unsqueeze(-1)


def padded_gt_boxes(
    kind: str, boxes: Tensor, num_valid: Tensor, min_pad: float, size: tuple[int, int]
) -> Tensor:
    """Pad(b*) of eq. (26) in the form the box IoU ``kind`` (:data:`BOX_IOUS`) reads.

    Args:
        kind: ``"soft"`` or ``"coordinates"``.
        boxes: float (B, N, 4) tight GT boxes (y0, x0, y1, x1), pixel edges, y1/x1 exclusive.
        num_valid: int64 (B,) number n_b of real instances.
        min_pad: smallest padding of a GT box side, in pixels.
        size: image (H, W), the rasters' size.

    Returns:
        ``"soft"``: (B, N, H, W) rasters in {0, 1} (:func:`padded_box_masks`); ``"coordinates"``:
        (B, N, 4) edges (:func:`padded_box_edges`); ``boxes``' dtype and device.
    """
    if kind == "coordinates":
        return padded_box_edges(boxes, num_valid, min_pad)
    return padded_box_masks(boxes, size, num_valid, min_pad)


def box_iou(
    kind: str, soft_boxes: Tensor | None, box_edges: Tensor | None, padded: Tensor
) -> Tensor:
    """The box IoU of ``kind`` between the T predicted boxes and the padded GT boxes.

    Args:
        kind: ``"soft"`` (eq. 26: :func:`soft_iou` of the soft boxes) or ``"coordinates"``
            (:func:`coordinate_iou` of the boxes' edges); the input it does not read may be None.
        soft_boxes: float (B, T, H, W) in [0, 1], the re-projected soft boxes b_t (eq. 25).
        box_edges: float (B, T, 4) the predicted boxes as pixel edges (y0, x0, y1, x1).
        padded: Pad(b*) from :func:`padded_gt_boxes` with the same ``kind``.

    Returns:
        (B, T, N) IoU matrix in [0, 1).
    """
    if kind == "coordinates":
        return coordinate_iou(box_edges, padded)
    return soft_iou(soft_boxes, padded)


def box_loss(
    soft_boxes: Tensor,
    boxes: Tensor,
    num_valid: Tensor,
    min_pad: float,
    *,
    box_edges: Tensor | None = None,
    kind: str = "soft",
) -> tuple[Tensor, Tensor]:
    """Box IoU loss L_b (eq. 26): the matched box IoU of ``kind`` against the padded GT boxes.

    The matching is the boxes' own (as in the authors' code), not the segmentation's; it matches
    on the same IoU the loss maximises.

    Args:
        soft_boxes: float (B, T, H, W) in [0, 1], the re-projected soft boxes b_t (eq. 25); their
            (H, W) is the rasters' size.
        boxes: float (B, N, 4) tight GT boxes (y0, x0, y1, x1), pixel edges, y1/x1 exclusive.
        num_valid: int64 (B,) number n_b of real instances.
        min_pad: smallest padding of a GT box side, in pixels.
        box_edges: float (B, T, 4) the predicted boxes as pixel edges, read by ``"coordinates"``.
        kind: the box IoU, ``"soft"`` or ``"coordinates"`` (:func:`box_iou`).

    Returns:
        L_b, a scalar in [-1, 0], and the detached (B, T, N) box matching in {0, 1}.
    """
    size = (soft_boxes.shape[-2], soft_boxes.shape[-1])
    padded = padded_gt_boxes(kind, boxes, num_valid, min_pad, size)  # Pad(b*) of eq. (26)
    iou = box_iou(kind, soft_boxes, box_edges, padded)
    match = hungarian_match(iou, num_valid)
    return matched_iou_loss(iou, match, num_valid), match  # eq. (26)


def monotonic_score_loss(scores: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Monotonic score loss L_s (eq. 27).

    A step with target 1 is judged by the lowest score so far, min_{t' <= t} s_t'; a step with
    target 0 by the highest score to come, max_{t' >= t} s_t'. A sequence thus costs little only
    if its scores decrease, so cutting off at the first s_t < 0.5 keeps every confident step.

    Args:
        scores: float (B, T) in (0, 1), the scores s_t.
        target: (B, T) in {0, 1}, the targets s*_t (see :func:`score_target`).
        eps: added inside both logs.

    Returns:
        Scalar (1 / (B T)) sum_{b, t} [-s*_t log(min_{t'<=t} s_t' + eps)
        - (1 - s*_t) log(1 - max_{t'>=t} s_t' + eps)], >= 0 up to eps.
    """
    target = target.to(scores.dtype)
    past_min = torch.cummin(scores, dim=1).values
    future_max = torch.cummax(scores.flip(1), dim=1).values.flip(1)
    loss = -target * torch.log(past_min + eps) - (1 - target) * torch.log(1 - future_max + eps)
    return loss.mean()  # eq. (27)


def score_target(match: Tensor) -> Tensor:
    """Score targets s*_t: 1 for the predictions that the matching paired with an instance.

    Args:
        match: (B, T, N) assignment in {0, 1} from :func:`hungarian_match`.

    Returns:
        (B, T) in {0, 1}, same dtype, no gradient.
    """
    return match.detach().sum(-1).clamp(0, 1)


def supervised_counts(num_instances: Tensor, gt_boxes: Tensor) -> Tensor:
    """n_b = min(num_instances_b, filled slots of image b): the instances that have a slot.

    The batch contract keeps the largest instances in the first slots and leaves the rest empty
    (an all-zero box). By default the last slot is always empty, so n_b <= T - 1 and every image
    has a stop target; with ``dataset.empty_last_slot=false`` (the authors' Cityscapes setting)
    all T slots can be filled and a crowded image has none.

    Args:
        num_instances: int64 (B,) true instance counts (may exceed the slots).
        gt_boxes: float (B, T, 4) tight boxes (y0, x0, y1, x1); empty slots are all zero.

    Returns:
        int64 (B,) in [0, T].
    """
    filled = (gt_boxes[..., 2] > gt_boxes[..., 0]).sum(1)
    return torch.minimum(num_instances.clamp(min=0), filled)


def segmenter_losses(
    masks: Tensor,
    scores: Tensor,
    soft_boxes: Tensor | None,
    gt_masks: Tensor,
    gt_boxes: Tensor,
    num_instances: Tensor,
    lambda_box: float = 1.0,
    lambda_score: float = 1.0,
    *,
    min_pad: float,
    box_edges: Tensor | None = None,
    box_iou: str = "soft",
) -> dict[str, Tensor]:
    """The joint loss of eq. (21) on one batch of the contract.

    The number of supervised instances n_b is that of the filled ground-truth slots
    (:func:`supervised_counts`).

    Args:
        masks: float (B, T, H, W) in [0, 1], the predicted soft masks y_t (eq. 19).
        scores: float (B, T) in (0, 1), the scores s_t (eq. 20).
        soft_boxes: float (B, T, H, W) in [0, 1], the soft boxes b_t (eq. 25), or None for the
            "no box net" ablation (then ``loss_box`` is 0).
        gt_masks: float (B, T, H, W) in {0, 1}, instances sorted by area (largest first),
            zero-padded.
        gt_boxes: float (B, T, 4) tight boxes (y0, x0, y1, x1), pixel edges, y1/x1 exclusive.
        num_instances: int64 (B,) true instance counts (may exceed T - 1).
        lambda_box: lambda_b of eq. (21).
        lambda_score: lambda_s of eq. (21).
        min_pad: smallest padding of a GT box side, in pixels.
        box_edges: float (B, T, 4) the predicted boxes as pixel edges (y0, x0, y1, x1), read by
            ``box_iou="coordinates"``.
        box_iou: the box IoU of L_b and its matching, ``"soft"`` or ``"coordinates"``
            (:func:`box_iou`).

    Returns:
        ``loss_segm`` (L_y, in [-1, 0]), ``loss_box`` (L_b, in [-1, 0]), ``loss_score`` (L_s,
        >= 0) and ``loss`` = loss_segm + lambda_box loss_box + lambda_score loss_score, all
        scalars; and ``match``, the detached (B, T, T) segmentation matching in {0, 1}
        (match[b, t, j] = 1 when prediction t is paired with GT slot j), from which the score
        target is derived and which callers can reuse, e.g. for metrics or visualisation.
    """
    num_valid = supervised_counts(num_instances, gt_boxes)
    iou = soft_iou(masks, gt_masks)
    match = hungarian_match(iou, num_valid)
    loss_segm = matched_iou_loss(iou, match, num_valid)  # eq. (23-24)
    if soft_boxes is None:
        loss_box = masks.new_zeros(())
    else:
        loss_box = box_loss(
            soft_boxes, gt_boxes, num_valid, min_pad, box_edges=box_edges, kind=box_iou
        )[0]  # eq. (25-26)
    loss_score = monotonic_score_loss(scores, score_target(match))  # eq. (27)
    return {
        "loss_segm": loss_segm,
        "loss_box": loss_box,
        "loss_score": loss_score,
        "loss": loss_segm + lambda_box * loss_box + lambda_score * loss_score,  # eq. (21)
        "match": match,
    }


def box_stage_losses(
    soft_boxes: Tensor,
    scores: Tensor,
    gt_boxes: Tensor,
    num_instances: Tensor,
    lambda_box: float = 1.0,
    lambda_score: float = 1.0,
    *,
    min_pad: float,
    box_edges: Tensor | None = None,
    box_iou: str = "soft",
) -> dict[str, Tensor]:
    """The loss of the bootstrap ``box`` stage (the authors' first stage): no segmentation network.

    L = lambda_b L_b + lambda_s L_s: the box IoU loss (eq. 25-26) and the monotonic score loss
    (eq. 27) whose targets come from the box matching, as in the authors' box pre-training.

    Args:
        soft_boxes: float (B, T, H, W) in [0, 1], the soft boxes b_t.
        scores: float (B, T) in (0, 1), the box-stage scores.
        gt_boxes: float (B, T, 4) tight boxes (y0, x0, y1, x1), pixel edges.
        num_instances: int64 (B,) true instance counts (may exceed T - 1).
        lambda_box, lambda_score: weights of the two terms.
        min_pad: smallest padding of a GT box side, in pixels.
        box_edges: float (B, T, 4) the predicted boxes as pixel edges, read by
            ``box_iou="coordinates"``.
        box_iou: the box IoU, ``"soft"`` or ``"coordinates"`` (:func:`box_iou`).

    Returns:
        ``loss_box`` in [-1, 0], ``loss_score`` >= 0, ``loss`` and the detached (B, T, T) box
        ``match``.
    """
    num_valid = supervised_counts(num_instances, gt_boxes)
    loss_box, match = box_loss(
        soft_boxes, gt_boxes, num_valid, min_pad, box_edges=box_edges, kind=box_iou
    )
    loss_score = monotonic_score_loss(scores, score_target(match))
    return {
        "loss_box": loss_box,
        "loss_score": loss_score,
        "loss": lambda_box * loss_box + lambda_score * loss_score,
        "match": match,
    }
