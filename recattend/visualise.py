"""Pictures of what the models do: the paper's Figure 1 (segmenter steps) and Figure 3
(pre-processor outputs), as RGB uint8 arrays."""

from __future__ import annotations

import cv2
import numpy as np
from torch import Tensor

# 20 distinct colours (instances by step, angle classes), RGB.
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
        [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
    ],
    dtype=np.uint8,
)  # fmt: skip


def figure1_grid(
    image: Tensor, masks: Tensor, scores: Tensor, boxes: Tensor, attention: Tensor | None
) -> np.ndarray:
    """One image's steps as a grid, like the paper's Figure 1.

    Columns are the steps that produced something (score > 0); rows are: the glimpses' soft
    attention over the box network's feature map (mean over glimpses, upsampled, over the image),
    the predicted box on the image with the step's score, the step's segmentation y_t, and all
    segmentations so far (one colour per step).

    Args:
        image: (3, H, W) in [0, 1]. masks: (T, H, W) in [0, 1]. scores: (T,).
        boxes: (T, 4) as pixel edges (y0, x0, y1, x1). attention: (T, K, H', W') or None.

    Returns:
        (rows * H, steps * W, 3) uint8 RGB.
    """
    rgb = (image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    # A diverged model's NaN / inf outputs are drawn as nothing rather than stopping the run.
    masks, scores = masks.nan_to_num(0.0, 0.0, 0.0), scores.nan_to_num(0.0, 0.0, 0.0)
    boxes = boxes.nan_to_num(0.0, 0.0, 0.0).clamp(-1, max(h, w) + 1)
    if attention is not None:
        attention = attention.nan_to_num(0.0, 0.0, 0.0)
    steps = max(1, int((scores > 0).sum()))
    labels = np.zeros((h, w), np.int64)
    columns = []
    for t in range(steps):
        mask = masks[t].cpu().numpy()
        rows = []
        if attention is not None:
            heat = cv2.resize(
                attention[t].mean(0).cpu().numpy(), (w, h), interpolation=cv2.INTER_NEAREST
            )
            heat = heat / max(float(heat.max()), 1e-8)
            rows.append(
                (0.4 * rgb + 0.6 * heat[..., None] * np.array([255, 255, 0])).astype(np.uint8)
            )
        boxed = rgb.copy()
        y0, x0, y1, x1 = (int(round(v)) for v in boxes[t].tolist())
        cv2.rectangle(boxed, (x0, y0), (x1 - 1, y1 - 1), (255, 0, 0), 1)
        cv2.putText(
            boxed,
            f"{float(scores[t]):.2f}",
            (2, 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 255),
            1,
        )
        rows.append(boxed)
        rows.append(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2))
        labels[mask > 0.5] = t + 1
        so_far = rgb // 3
        so_far[labels > 0] = PALETTE[(labels[labels > 0] - 1) % len(PALETTE)]
        rows.append(so_far)
        columns.append(np.concatenate(rows, axis=0))
    return np.concatenate(columns, axis=1)


def figure1(images: Tensor, out: dict[str, Tensor]) -> np.ndarray:
    """:func:`figure1_grid` of every image of a batch, stacked (:func:`stack_rows`).

    Args:
        images: (B, 3, H, W) in [0, 1].
        out: the segmenter's inference outputs for them: ``masks`` (B, T, H, W), ``scores``
            (B, T), ``boxes`` (B, T, 4), optionally ``attention`` (B, T, K, H', W').
    """
    attention = out.get("attention")
    return stack_rows(
        [
            figure1_grid(
                image,
                out["masks"][i],
                out["scores"][i],
                out["boxes"][i],
                None if attention is None else attention[i],
            )
            for i, image in enumerate(images)
        ]
    )


def figure3_row(image: Tensor, foreground: Tensor, angles: Tensor) -> np.ndarray:
    """Input, predicted foreground and colour-coded angle map side by side (paper Figure 3).

    Args:
        image: (3, H, W) in [0, 1]. foreground: (H, W) probability. angles: (8, H, W) class
            probabilities; each pixel gets its class colour, weighted by the foreground.

    Returns:
        (H, 3 W, 3) uint8 RGB.
    """
    rgb = (image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    fg = foreground.clamp(0, 1).cpu().numpy()
    colours = PALETTE[angles.argmax(0).cpu().numpy()].astype(np.float32)
    return np.concatenate(
        [
            rgb,
            np.repeat((fg * 255).astype(np.uint8)[..., None], 3, 2),
            (colours * fg[..., None]).astype(np.uint8),
        ],
        axis=1,
    )


def stack_rows(rows: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Stack RGB arrays vertically, right-padding narrower ones, with a black gap between."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate(
        [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0
    )
