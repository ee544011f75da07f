"""Gaussian filterbank attention (paper eq. 6-16, 19, 25, as the authors' code computed them).

A box is given by its centre ``g`` and size ``delta`` in pixels (y, x) and a per-axis variance.
Along one axis of length L, patch position i in 0..F-1 has kernel centre
``mu_i = g + (delta + 1) * (i - F/2 + 0.5) / F`` (eq. 11-12) and
``F[a, i] = N(a; mu_i, var)`` for pixel index a in 0..L-1 (eq. 13-14), an unnormalised Gaussian
pdf as in the authors' code (rows are not renormalised as in DRAW). Pixel a is the pixel *centre*;
a box covering pixels y0..y1-1 (edges y0, y1) has g = (y0 + y1 - 1) / 2 and delta = y1 - y0 - 1,
so ``delta + 1`` is its extent in pixels.

``extract`` reads a patch ``F_Y^T x F_X`` (eq. 16); ``reproject`` writes one back ``F_Y p F_X^T``
(eq. 19, 25). Inside the box the re-projected density is about F / (delta + 1) per axis, which the
learned gains compensate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def filterbank(
    center: Tensor,
    size: Tensor,
    var: Tensor,
    image_size: tuple[int, int],
    patch_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Build F_Y and F_X for a batch of boxes.

    Args:
        center: (B, 2) box centres (y, x) in pixel coordinates (pixel centres at integers).
        size: (B, 2) box sizes delta (y, x) in pixels (extent minus one, see module docstring).
        var: (B, 2) positive kernel variances (y, x) in squared pixels.
        image_size: (H, W).
        patch_size: (h, w) of the extracted patch.

    Returns:
        F_Y (B, H, h) and F_X (B, W, w), float32, non-negative.
    """
    out = []
    for axis in range(2):
        length, points = image_size[axis], patch_size[axis]
        i = torch.arange(points, dtype=center.dtype, device=center.device)
        a = torch.arange(length, dtype=center.dtype, device=center.device)
        mu = center[:, axis, None] + (size[:, axis, None] + 1) * (i - points / 2 + 0.5) / points
        v = var[:, axis, None, None]
        # eq. (13-14): (B, L, F)
        out.append(
            torch.exp(-((a[None, :, None] - mu[:, None, :]) ** 2) / (2 * v))
            / torch.sqrt(2 * math.pi * v)
        )
    return out[0], out[1]


def extract(x: Tensor, f_y: Tensor, f_x: Tensor) -> Tensor:
    """Read a patch: ``F_Y^T x F_X`` (eq. 16), per channel.

    Two batched matrix products, rows first. The first reads x as (B, H, C W): free when x is in
    the :func:`rows_layout` memory layout, a copy of x otherwise.

    Args:
        x: (B, C, H, W).
        f_y, f_x: (B, H, h), (B, W, w) from :func:`filterbank`.

    Returns:
        (B, C, h, w).
    """
    b, c, height, width = x.shape
    h, w = f_y.shape[2], f_x.shape[2]
    rows = torch.bmm(f_y.transpose(1, 2), x.permute(0, 2, 1, 3).reshape(b, height, c * width))
    patch = torch.bmm(rows.view(b, h * c, width), f_x)  # (B, h C, w)
    return patch.view(b, h, c, w).permute(0, 2, 1, 3)


def rows_layout(x: Tensor) -> Tensor:
    """x (B, C, H, W) with the same values, stored as (B, H, C, W): :func:`extract` then reads it
    without copying (worth it when one image is read by all T steps)."""
    return x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)


def reproject(p: Tensor, f_y: Tensor, f_x: Tensor) -> Tensor:
    """Write a patch back onto the image: ``F_Y p F_X^T`` (eq. 19, 25), per channel.

    Args:
        p: (B, C, h, w).
        f_y, f_x: (B, H, h), (B, W, w).

    Returns:
        (B, C, H, W).
    """
    return torch.einsum("bHh,bchw,bWw->bcHW", f_y, p, f_x)


def box_edges_to_center_size(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-edge boxes (..., 4) as (y0, x0, y1, x1) -> centre (..., 2) and size delta (..., 2)."""
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return (lo + hi - 1) / 2, hi - lo - 1


def box_center_size_to_edges(center: Tensor, size: Tensor) -> Tensor:
    """Inverse of :func:`box_edges_to_center_size`: centre and delta (..., 2) -> (..., 4) edges."""
    return torch.cat([center - size / 2, center + size / 2 + 1], dim=-1)
