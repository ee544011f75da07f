"""Drawing helpers shared by the synthetic renderers: the layout frame, sub-pixel polygons, smooth
noise.

A scene is laid out in the pixel frame of a *layout size* (H0, W0) and drawn at any size (H, W):
its geometry is mapped with :func:`to_drawn`, so the same random draws give the same scene at
every drawn size (:mod:`recattend.data.synthetic`).
"""

from __future__ import annotations

import cv2
import numpy as np

SUBPIXEL = 4  # fixed-point bits for cv2 polygon drawing: smooth, anti-alias-free edges


def polygon(points: np.ndarray) -> np.ndarray:
    """(..., 2) float x, y points as the int32 (K, 1, 2) fixed-point polygon cv2 draws."""
    return np.round(points * (1 << SUBPIXEL)).astype(np.int32).reshape(-1, 1, 2)


def frame(
    size: tuple[int, int], layout_size: tuple[int, int] | None
) -> tuple[int, int, float, float]:
    """The layout's (H0, W0) and the drawn image's pixels per layout pixel (sy, sx)."""
    h0, w0 = layout_size if layout_size is not None else size
    return int(h0), int(w0), size[0] / h0, size[1] / w0


def to_drawn(points: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Layout (x, y) pixel coordinates (..., 2) to the drawn image's, float64.

    Layout pixel i covers [i - 0.5, i + 0.5] (OpenCV puts pixel centres on integers), so x maps
    to (x + 0.5) sx - 0.5; a plain x sx would shift the scene by (sx - 1) / 2 drawn pixels.
    """
    return (np.asarray(points, np.float64) + 0.5) * np.array([sx, sy]) - 0.5


def fill(canvas: np.ndarray, points: np.ndarray, edge: int) -> None:
    """Fill a polygon (:func:`polygon` points) with 1; ``edge`` > 1 also draws its outline that
    many pixels wide.

    ``fillPoly`` takes every pixel its outline touches, so a shape covers about half a pixel
    more than its polygon on every side; at the layout size that is half a layout pixel. Drawn
    larger, an outline one layout pixel wide (``edge`` drawn pixels) keeps that margin, so a
    mask is the same shape at every size.
    """
    cv2.fillPoly(canvas, [points], 1, cv2.LINE_8, SUBPIXEL)
    if edge > 1:
        cv2.polylines(canvas, [points], True, 1, edge, cv2.LINE_8, SUBPIXEL)


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically
    to ``size`` (H, W); the draws do not depend on ``size``."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, size[::-1], interpolation=cv2.INTER_CUBIC), -1, 1)
