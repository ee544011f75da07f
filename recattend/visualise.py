"""Pictures of what the models do, for people as much as for the paper: Figure 1 (the segmenter's
steps) and Figure 3 (the pre-processor's outputs) as uint8 RGB arrays (H, W, 3).

The bare tile grids (:func:`figure1_tiles`, :func:`figure3_row`) hold only what the model drew.
The figures a person reads (:func:`figure1_grid`, :func:`figure1`, :func:`figure3`) add white
strips around them: row names on the left, column names (timestep, score) above and a legend
below, so that no label covers a pixel of a tile. Text is drawn with cv2's Hershey font at
:func:`text_scale` of the tile height, at least 0.45 (about 12 px high, legible on 128 x 128
tiles). Tiles smaller than :data:`MIN_TILE` pixels (tiny test networks) are enlarged by a whole
factor, each pixel repeated, so that their labels fit beside them.

The two figures share the palette, the strip layout and the text metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from torch import Tensor

from recattend.data.targets import angle_classes
from recattend.structures import NUM_ANGLE_CLASSES

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

BOX_COLOUR = (255, 0, 0)  # the step's box in Figure 1
ATTENTION_COLOUR = (255, 255, 0)  # the glimpses' attention heat in Figure 1
FONT = cv2.FONT_HERSHEY_SIMPLEX
STRIP = 255  # grey level of the label strips and legends (black text on white)
# Where each angle class points, as seen from its instance's centre (image y points down):
# class k is centred on theta = -pi + k pi / 4 (recattend.data.targets.angle_classes).
DIRECTIONS = ("left", "up-left", "up", "up-right", "right", "down-right", "down", "down-left")

MIN_TILE = 96  # the smallest tile side the labels fit beside (two 18-px lines, "s_t = 0.93")
FIGURE1_ROWS = ("attention", "box", "soft mask\ny_t", "instances\nso far")
FIGURE3_COLUMNS = ("input", "foreground", "angle classes")


# ------------------------------------------------------------------------------------ Figure 1
def figure1_tiles(
    image: Tensor, masks: Tensor, scores: Tensor, boxes: Tensor, attention: Tensor | None
) -> np.ndarray:
    """One image's steps as a bare grid of tiles, like the paper's Figure 1.

    Columns are the steps that produced something (score > 0, at least one); rows are: the
    glimpses' soft attention over the box network's feature map (mean over glimpses, upsampled,
    in :data:`ATTENTION_COLOUR` over the image; only with ``attention``), the predicted box in
    :data:`BOX_COLOUR` on the image, the step's soft segmentation y_t (grey, white = 1), and all
    segmentations so far (y > 0.5, one :data:`PALETTE` colour per step, over the darkened image).
    Non-finite outputs (a diverged model) are drawn as nothing rather than stopping the run.

    Args:
        image: (3, H, W) in [0, 1]. masks: (T, H, W) in [0, 1]. scores: (T,).
        boxes: (T, 4) as pixel edges (y0, x0, y1, x1). attention: (T, K, H', W') or None.

    Returns:
        (rows * H, steps * W, 3) uint8 RGB, rows 4 with attention, else 3.
    """
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    masks, scores = masks.nan_to_num(0.0, 0.0, 0.0), scores.nan_to_num(0.0, 0.0, 0.0)
    boxes = boxes.nan_to_num(0.0, 0.0, 0.0).clamp(-1, max(h, w) + 1)
    if attention is not None:
        attention = attention.nan_to_num(0.0, 0.0, 0.0)
    labels = np.zeros((h, w), np.int64)
    columns = []
    for t in range(_shown_steps(scores)):
        mask = masks[t].cpu().numpy()
        rows = []
        if attention is not None:
            heat = cv2.resize(
                attention[t].mean(0).cpu().numpy(), (w, h), interpolation=cv2.INTER_NEAREST
            )
            heat = heat / max(float(heat.max()), 1e-8)
            rows.append(
                (0.4 * rgb + 0.6 * heat[..., None] * np.array(ATTENTION_COLOUR)).astype(np.uint8)
            )
        boxed = rgb.copy()
        y0, x0, y1, x1 = (int(round(v)) for v in boxes[t].tolist())
        cv2.rectangle(boxed, (x0, y0), (x1 - 1, y1 - 1), BOX_COLOUR, 1)
        rows.append(boxed)
        rows.append(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2))
        labels[mask > 0.5] = t + 1
        so_far = rgb // 3
        so_far[labels > 0] = PALETTE[(labels[labels > 0] - 1) % len(PALETTE)]
        rows.append(so_far)
        columns.append(np.concatenate(rows, axis=0))
    return np.concatenate(columns, axis=1)


def figure1_grid(
    image: Tensor,
    masks: Tensor,
    scores: Tensor,
    boxes: Tensor,
    attention: Tensor | None,
    legend: bool = True,
) -> np.ndarray:
    """:func:`figure1_tiles` with its rows and columns named, and a legend: the figure a person
    reads for one image (the validation figures and the demo draw it through :func:`figure1`).

    Row names on the left (:data:`FIGURE1_ROWS`, ``attention`` only with ``attention``), above
    each column its timestep ``t = 1, 2, ...`` and score ``s_t = 0.93``, and with ``legend`` the
    colours and numbers explained below (:func:`figure1_legend`). The tiles keep their pixels.

    Args:
        image, masks, scores, boxes, attention: as :func:`figure1_tiles`.
        legend: add the legend below (:func:`figure1` draws one for a whole batch instead).

    Returns:
        (top + rows * H' [+ legend], left + steps * W', 3) uint8 RGB, the tiles (:func:`enlarged`
        to H' x W' when small) at (top, left).
    """
    h, w = image.shape[-2:]
    bare = figure1_tiles(image, masks, scores, boxes, attention)
    steps = bare.shape[1] // w
    tiles, (h, w) = enlarged(bare, (h, w))
    names = FIGURE1_ROWS if attention is not None else FIGURE1_ROWS[1:]
    score_values = scores.nan_to_num(0.0, 0.0, 0.0).tolist()
    columns = [f"t = {t + 1}\ns_t = {score_values[t]:.2f}" for t in range(steps)]
    grid = label_grid(tiles, (h, w), names, columns)
    if not legend:
        return grid
    key = figure1_legend(grid.shape[1], steps, attention is not None, text_scale(h))
    return np.concatenate([grid, key], axis=0)


def figure1(images: Tensor, out: dict[str, Tensor]) -> np.ndarray:
    """:func:`figure1_grid` of every image of a batch, stacked (:func:`stack_rows`), with one
    legend at the bottom.

    Args:
        images: (B, 3, H, W) in [0, 1].
        out: the segmenter's inference outputs for them: ``masks`` (B, T, H, W), ``scores``
            (B, T), ``boxes`` (B, T, 4), optionally ``attention`` (B, T, K, H', W').

    Returns:
        (height, width, 3) uint8 RGB.
    """
    attention = out.get("attention")
    grids = [
        figure1_grid(
            image,
            out["masks"][i],
            out["scores"][i],
            out["boxes"][i],
            None if attention is None else attention[i],
            legend=False,
        )
        for i, image in enumerate(images)
    ]
    steps = max(_shown_steps(s.nan_to_num(0.0, 0.0, 0.0)) for s in out["scores"])
    width = max(g.shape[1] for g in grids)
    h = images.shape[-2] * enlargement(tuple(images.shape[-2:]))
    key = figure1_legend(width, steps, attention is not None, text_scale(h))
    return stack_rows([*grids, key])


def figure1_legend(width: int, steps: int, attention: bool, scale: float) -> np.ndarray:
    """What Figure 1's colours and numbers mean, as a white strip ``width`` pixels wide.

    Args:
        width: the strip's width (the figure's).
        steps: the steps shown: that many :data:`PALETTE` swatches, numbered, explain the last
            row's colours.
        attention: explain the attention row too.
        scale: text scale (:func:`text_scale`).

    Returns:
        (height, width, 3) uint8 RGB.
    """
    entries: list[tuple[list[tuple[int, int, int]], str]] = [
        ([BOX_COLOUR], "box: the region step t attends to"),
        ([], "s_t: score, the step's confidence that it found an object (0-1); only steps "
             "with s_t > 0 are shown"),
        ([], "soft mask y_t: the step's segmentation, white = 1, black = 0"),
        ([tuple(int(c) for c in PALETTE[t % len(PALETTE)]) for t in range(steps)],
         "instances so far: one colour per step t = 1, 2, ... (y_t > 0.5)"),
    ]  # fmt: skip
    if attention:
        entries.insert(0, ([ATTENTION_COLOUR], "attention: where the glimpses look"))
    return legend_strip(width, entries, scale)


# ------------------------------------------------------------------------------------ Figure 3
def figure3_row(image: Tensor, foreground: Tensor, angles: Tensor) -> np.ndarray:
    """Input, predicted foreground and colour-coded angle map side by side (paper Figure 3),
    as bare tiles.

    Args:
        image: (3, H, W) in [0, 1]. foreground: (H, W) probability. angles: (8, H, W) class
            probabilities; each pixel gets its most likely class's :data:`PALETTE` colour,
            weighted by the foreground probability.

    Returns:
        (H, 3 W, 3) uint8 RGB.
    """
    rgb = _rgb(image)
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


def figure3(images: Tensor, foreground: Tensor, angles: Tensor) -> np.ndarray:
    """The pre-processor's Figure 3 for a batch: one :func:`figure3_row` per image, the columns
    named (:data:`FIGURE3_COLUMNS`) above them and the angle classes' colours below
    (:func:`figure3_legend`).

    Args:
        images: (B, 3, H, W) in [0, 1]. foreground: (B, H, W) probability. angles: (B, 8, H, W)
            class probabilities.

    Returns:
        (height, max(3 W', legend width), 3) uint8 RGB, the rows :func:`enlarged` to tiles of
        H' x W' when small.
    """
    tiles = [
        enlarged(figure3_row(image, foreground[i], angles[i]), tuple(images.shape[-2:]))
        for i, image in enumerate(images)
    ]
    h, w = tiles[0][1]
    scale = text_scale(h)
    rows = stack_rows([row for row, _ in tiles])
    header = label_grid(np.zeros((0, 3 * w, 3), np.uint8), (h, w), [], FIGURE3_COLUMNS, scale)
    return stack_rows([header, rows, figure3_legend(3 * w, scale)], gap=0)


def figure3_legend(width: int, scale: float) -> np.ndarray:
    """The angle classes' colours as a wheel (each pixel coloured by the class of its direction
    from the wheel's centre, exactly as an instance's pixels are classed), with the directions
    written around it and a short explanation beside it, on a white strip.

    Args:
        width: the strip's width (at least the wheel's).
        scale: text scale (:func:`text_scale`).

    Returns:
        (height, at least ``width``, 3) uint8 RGB; the wheel's centre is at
        :func:`wheel_centre`.
    """
    radius = wheel_radius(scale)
    (cy, cx), size = wheel_centre(scale), 2 * wheel_margin(scale) + 2 * radius + 1
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    wheel = np.full((size, size, 3), STRIP, np.uint8)
    # The data pipeline's own rule (the disc's centroid is its centre), so the wheel cannot
    # disagree with the training targets.
    wheel[disc] = PALETTE[angle_classes(disc[None])[disc]]
    for k in (0, 2, 4, 6):  # left, up, right, down, written just outside the rim
        theta = -math.pi + k * math.pi / 4
        (tw, th), _ = cv2.getTextSize(DIRECTIONS[k], FONT, 0.8 * scale, 1)
        x = int(cx + (radius + 3) * math.cos(theta) - tw * (1 - math.cos(theta)) / 2)
        y = int(cy + (radius + 3) * math.sin(theta) + th * (1 + math.sin(theta)) / 2)
        cv2.putText(wheel, DIRECTIONS[k], (x, y), FONT, 0.8 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    text = (
        "angle classes: the colour of a pixel is its direction from the centre of its object "
        f"({NUM_ANGLE_CLASSES} classes, as on the wheel); darker where the foreground "
        "probability is lower"
    )
    # At least ten lines' width for the text, so that narrow figures still get readable lines.
    body = legend_strip(max(width - size, 10 * line_height(scale)), [([], text)], scale)
    strip = np.full((max(size, body.shape[0]), size + body.shape[1], 3), STRIP, np.uint8)
    strip[:size, :size] = wheel
    strip[: body.shape[0], size:] = body
    return strip


def wheel_radius(scale: float) -> int:
    """The angle wheel's radius in pixels at text ``scale``."""
    return int(round(30 * scale / 0.45))


def wheel_margin(scale: float) -> int:
    """The room around the wheel for its direction words, in pixels."""
    return cv2.getTextSize("right", FONT, 0.8 * scale, 1)[0][0] + 6


def wheel_centre(scale: float) -> tuple[int, int]:
    """(y, x) of the angle wheel's centre in :func:`figure3_legend`'s strip."""
    c = wheel_margin(scale) + wheel_radius(scale)
    return c, c


# ------------------------------------------------------------------------------------- layout
def enlargement(tile_size: tuple[int, int]) -> int:
    """The smallest whole factor that makes an (h, w) tile's shorter side at least
    :data:`MIN_TILE` pixels; 1 for tiles that large already."""
    return max(1, math.ceil(MIN_TILE / min(tile_size)))


def enlarged(tiles: np.ndarray, tile_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """``tiles`` with each pixel repeated f x f times (f = :func:`enlargement`), and the new tile
    size.

    Args:
        tiles: (rows * h, columns * w, ...) array of (h, w) tiles.
        tile_size: (h, w).
    """
    f = enlargement(tile_size)
    return tiles.repeat(f, axis=0).repeat(f, axis=1), (tile_size[0] * f, tile_size[1] * f)


def text_scale(tile_height: int) -> float:
    """cv2 text scale for figures with tiles ``tile_height`` pixels high: 0.45 (12 px letters)
    up to 256-pixel tiles, growing with them above, so labels stay legible beside large tiles."""
    return max(0.45, tile_height / 256 * 0.45)


def label_grid(
    tiles: np.ndarray,
    tile_size: tuple[int, int],
    rows: Sequence[str],
    columns: Sequence[str],
    scale: float | None = None,
) -> np.ndarray:
    """``tiles`` with a white strip of row names on the left and of column names above.

    Names may hold line breaks (``\\n``). A row name is centred on its row of tiles, a column
    name on its column; the tiles' pixels are kept as they were. Without row names there is no
    left strip.

    Args:
        tiles: (len(rows) * h, len(columns) * w, 3) uint8 RGB (any number of rows when
            ``rows`` is empty).
        tile_size: (h, w) of one tile.
        rows, columns: the names, top to bottom and left to right.
        scale: text scale; None: :func:`text_scale` of ``h``.

    Returns:
        (top + tiles' height, left + tiles' width, 3) uint8 RGB, the tiles at (top, left).
    """
    h, w = tile_size
    scale = text_scale(h) if scale is None else scale
    line = line_height(scale)
    pad = line // 3
    left = max((_text_width(n, scale) for n in rows), default=-2 * pad) + 2 * pad
    top = max((n.count("\n") + 1 for n in columns), default=0) * line + pad
    out = np.full((top + tiles.shape[0], left + tiles.shape[1], 3), STRIP, np.uint8)
    out[top:, left:] = tiles
    for i, name in enumerate(rows):
        lines = name.split("\n")
        y = top + i * h + (h - len(lines) * line) // 2
        _put_lines(out, lines, pad, y, scale)
    for j, name in enumerate(columns):
        lines = name.split("\n")
        x = left + j * w + max(0, (w - _text_width(name, scale)) // 2)
        _put_lines(out, lines, x, pad // 2, scale)
    return out


def legend_strip(
    width: int, entries: Sequence[tuple[Sequence[tuple[int, int, int]], str]], scale: float
) -> np.ndarray:
    """A white strip of legend entries, one below the other: each its colour swatches (squares,
    numbered 1, 2, ... when there are several) and its text, word-wrapped to ``width``.

    Args:
        width: the strip's width in pixels.
        entries: (RGB swatch colours, text) pairs.
        scale: text scale (:func:`text_scale`).

    Returns:
        (height, width, 3) uint8 RGB.
    """
    line = line_height(scale)
    pad, swatch = line // 3, line - 4
    blocks = []
    for colours, text in entries:
        block_lines: list[str] = []
        x = pad + len(colours) * (swatch + 2) + (pad if colours else 0)
        if x + 4 * line > width:  # too many swatches beside the text: text on its own lines
            block_lines.append("")
            x = pad
        block_lines += _wrap(text, width - x - pad, scale)
        block = np.full((len(block_lines) * line, width, 3), STRIP, np.uint8)
        for k, colour in enumerate(colours):
            x0 = pad + k * (swatch + 2)
            cv2.rectangle(block, (x0, 2), (x0 + swatch - 1, 1 + swatch), colour, cv2.FILLED)
            if len(colours) > 1:
                ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
                cv2.putText(block, str(k + 1), (x0 + 2, swatch - 1), FONT, 0.7 * scale, ink, 1)
        _put_lines(block, block_lines, x, 0, scale)
        blocks.append(block)
    return np.concatenate([np.full((pad, width, 3), STRIP, np.uint8), *blocks], axis=0)


def line_height(scale: float) -> int:
    """Pixels from one line of text to the next at ``scale``."""
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    return th + base + 4


def stack_rows(rows: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Stack RGB arrays vertically, right-padding narrower ones, with a black gap between."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate(
        [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0
    )


def _rgb(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)


def _shown_steps(scores: Tensor) -> int:
    """The steps Figure 1 shows for (T,) finite scores: those with s_t > 0, at least one."""
    return max(1, int((scores > 0).sum()))


def _text_width(text: str, scale: float) -> int:
    return max(cv2.getTextSize(s, FONT, scale, 1)[0][0] for s in text.split("\n"))


def _put_lines(out: np.ndarray, lines: Sequence[str], x: int, y: int, scale: float) -> None:
    """Black text, line ``i`` in the ``i``-th line box below ``y`` (its top edge)."""
    line = line_height(scale)
    (_, th), _ = cv2.getTextSize("Ag", FONT, scale, 1)
    for i, text in enumerate(lines):
        baseline = y + i * line + 2 + th
        cv2.putText(out, text, (x, baseline), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` (a longer word keeps a line
    of its own)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and _text_width(candidate, scale) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines
