"""The paper's Figure 1 and Figure 3 pictures: the bare tiles (also from a diverged model's
outputs), and the labels and legends around them that leave the tiles' pixels as they were."""

from __future__ import annotations

import math

import numpy as np
import torch

from recattend.visualise import (
    BOX_COLOUR,
    DIRECTIONS,
    MIN_TILE,
    PALETTE,
    STRIP,
    figure1,
    figure1_grid,
    figure1_legend,
    figure1_tiles,
    figure3,
    figure3_legend,
    figure3_row,
    label_grid,
    line_height,
    text_scale,
    wheel_centre,
    wheel_radius,
)


def _steps(h: int = 8, w: int = 8):
    """Three steps of which two are shown; the second diverged (NaN mask, non-finite box)."""
    image = torch.zeros(3, h, w)
    masks = torch.zeros(3, h, w)
    masks[0, : h // 2, : w // 2] = 1.0
    masks[1, h // 2 :, w // 2 :] = math.nan  # a diverged step: drawn as nothing
    scores = torch.tensor([0.9, 0.8, 0.0])  # two steps shown (scores > 0)
    boxes = torch.tensor(
        [[0.0, 0.0, h / 2, w / 2], [math.nan, math.inf, -math.inf, 3.0], [0.0] * 4]
    )
    attention = torch.full((3, 2, 2, 2), math.nan)
    return image, masks, scores, boxes, attention


def test_figure1_tiles_draw_the_steps_and_survive_nonfinite_outputs() -> None:
    grid = figure1_tiles(*_steps())
    # Rows: attention, box, soft mask, instances so far; one column per shown step.
    assert grid.shape == (4 * 8, 2 * 8, 3) and grid.dtype == np.uint8
    box_row = grid[8:16]
    # The box's edge, and nothing else in its column: the score is written above, not here.
    assert (box_row[0, :4] == BOX_COLOUR).all() and (box_row[4:, :8] == 0).all()
    mask_row = grid[2 * 8 : 3 * 8]
    assert (mask_row[:4, :4] == 255).all() and (mask_row[:4, 8:] == 0).all()
    so_far = grid[3 * 8 :]
    assert (so_far[:4, :4] == PALETTE[0]).all() and (so_far[4:, 12:] == 0).all()


def test_figure1_grid_names_rows_and_columns_beside_unchanged_tiles() -> None:
    steps = _steps(128, 128)
    tiles = figure1_tiles(*steps)
    bare = figure1_grid(*steps, legend=False)
    scale = text_scale(128)
    # Above: "t = 1" / "s_t = 0.90", two lines; left: the widest row name plus padding.
    top = 2 * line_height(scale) + line_height(scale) // 3
    left = bare.shape[1] - tiles.shape[1]
    assert bare.shape == (top + 4 * 128, left + 2 * 128, 3) and bare.dtype == np.uint8
    assert 40 < left < 120  # room for "instances" at 12 px letters, not more
    assert (bare[top:, left:] == tiles).all()  # the tiles' pixels, at their offset
    # Written strips: black text on white, in the row-name column and over each step's column.
    for strip in (bare[top:, :left], bare[:top, left : left + 128], bare[:top, left + 128 :]):
        assert (strip == STRIP).mean() > 0.5 and (strip < 128).any()
    assert (bare[:top, :left] == STRIP).all()  # the corner stays blank
    # Each row name sits beside its own row: ink in every row's band of the left strip.
    for r in range(4):
        assert (bare[top + r * 128 : top + (r + 1) * 128, :left] < 128).any()
    # Without attention: three rows, and the legend goes below.
    image, masks, scores, boxes, _ = steps
    with_legend = figure1_grid(image, masks, scores, boxes, None)
    assert with_legend.shape[1] == left + 2 * 128
    assert with_legend.shape[0] > top + 3 * 128
    legend = with_legend[top + 3 * 128 :]
    assert (legend == figure1_legend(legend.shape[1], 2, False, scale)).all()


def test_small_tiles_are_enlarged_whole_so_their_labels_fit() -> None:
    steps = _steps(8, 8)  # a tiny test network's 8 x 8 images
    tiles = figure1_tiles(*steps)
    grid = figure1_grid(*steps, legend=False)
    f = 12  # the smallest whole factor reaching MIN_TILE
    assert 8 * f >= MIN_TILE > 8 * (f - 1)
    big = tiles.repeat(f, axis=0).repeat(f, axis=1)  # every pixel an f x f block
    assert (grid[-big.shape[0] :, -big.shape[1] :] == big).all()
    assert grid.shape[0] - big.shape[0] == 2 * line_height(0.45) + line_height(0.45) // 3


def test_figure1_legend_shows_the_box_colour_and_one_swatch_per_step() -> None:
    scale = text_scale(128)
    legend = figure1_legend(400, 3, attention=False, scale=scale)
    assert legend.ndim == 3 and legend.shape[1] == 400 and legend.dtype == np.uint8
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert tuple(BOX_COLOUR) in colours
    assert all(tuple(PALETTE[t]) in colours for t in range(3))
    assert tuple(PALETTE[3]) not in colours  # only the steps shown
    with_attention = figure1_legend(400, 3, attention=True, scale=scale)
    assert with_attention.shape[0] > legend.shape[0]  # one entry more
    assert (255, 255, 0) in {tuple(c) for c in with_attention.reshape(-1, 3)}


def test_figure1_of_a_batch_stacks_labelled_grids_over_one_legend() -> None:
    image, masks, scores, boxes, attention = _steps(32, 32)
    out = {
        "masks": torch.stack([masks, masks]),
        "scores": torch.stack([scores, torch.tensor([0.9, 0.0, 0.0])]),
        "boxes": torch.stack([boxes, boxes]),
    }
    picture = figure1(torch.stack([image, image]), out)
    first = figure1_grid(image, masks, scores, boxes, None, legend=False)
    second = figure1_grid(image, masks, out["scores"][1], boxes, None, legend=False)
    assert second.shape[1] < first.shape[1]  # one step shown instead of two
    h1, h2, width = first.shape[0], second.shape[0], first.shape[1]
    assert picture.shape[1] == width
    assert (picture[:h1] == first).all() and (picture[h1 : h1 + 4] == 0).all()  # the gap
    assert (picture[h1 + 4 : h1 + 4 + h2, : second.shape[1]] == second).all()
    legend = figure1_legend(width, 2, False, text_scale(32))
    start = h1 + 4 + h2 + 4
    assert (picture[start : start + legend.shape[0]] == legend).all()


def test_figure3_names_columns_and_its_wheel_uses_the_angle_palette() -> None:
    h = w = 96
    images = torch.rand(2, 3, h, w)
    foreground = torch.ones(2, h, w)
    angles = torch.zeros(2, 8, h, w)
    angles[:, 5] = 1.0  # every pixel: class 5 (down-right)
    picture = figure3(images, foreground, angles)
    scale = text_scale(h)
    top = line_height(scale) + line_height(scale) // 3  # one line of column names
    rows = [figure3_row(images[i], foreground[i], angles[i]) for i in range(2)]
    assert (picture[top : top + h, : 3 * w] == rows[0]).all()
    assert (picture[top + h + 4 : top + 2 * h + 4, : 3 * w] == rows[1]).all()
    assert (rows[0][:, 2 * w :] == PALETTE[5]).all()  # the angle tile: class 5's colour
    for c in range(3):  # a name above each column
        assert (picture[:top, c * w : (c + 1) * w] < 128).any()
    legend = figure3_legend(3 * w, scale)
    assert (picture[-legend.shape[0] :, : legend.shape[1]] == legend).all()

    # The wheel: at each class's central direction, just inside the rim, the class's colour,
    # with class 0 pointing left, 2 up, 4 right and 6 down (image y points down).
    cy, cx = wheel_centre(scale)
    radius = wheel_radius(scale)
    for k in range(8):
        theta = -math.pi + k * math.pi / 4
        y = round(cy + 0.7 * radius * math.sin(theta))
        x = round(cx + 0.7 * radius * math.cos(theta))
        assert (legend[y, x] == PALETTE[k]).all(), DIRECTIONS[k]
    wheel_colours = {tuple(c) for c in legend[: 2 * cy + 1, : 2 * cx + 1].reshape(-1, 3)}
    assert {tuple(PALETTE[k]) for k in range(8)} <= wheel_colours
    assert tuple(PALETTE[8]) not in wheel_colours  # the eight classes only


def test_label_grid_keeps_tiles_and_centres_names() -> None:
    tiles = np.arange(2 * 10 * 3 * 10 * 3, dtype=np.uint8).reshape(20, 30, 3)
    out = label_grid(tiles, (10, 10), ["a", "b"], ["x", "y", "z"], scale=0.45)
    top = line_height(0.45) + line_height(0.45) // 3
    left = out.shape[1] - 30
    assert out.shape == (top + 20, left + 30, 3)
    assert (out[top:, left:] == tiles).all()
    assert (out[:top, :left] == STRIP).all()
    no_rows = label_grid(tiles, (10, 10), [], ["x", "y", "z"], scale=0.45)
    assert no_rows.shape == (top + 20, 30, 3)  # no left strip without row names
