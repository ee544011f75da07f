"""The paper's Figure 1 grid, also from a diverged model's outputs."""

from __future__ import annotations

import math

import numpy as np
import torch

from recattend.visualise import PALETTE, figure1_grid


def test_figure1_grid_draws_the_steps_and_survives_nonfinite_outputs() -> None:
    image = torch.zeros(3, 8, 8)
    masks = torch.zeros(3, 8, 8)
    masks[0, :4, :4] = 1.0
    masks[1, 4:, 4:] = math.nan  # a diverged step: drawn as nothing
    scores = torch.tensor([0.9, 0.8, 0.0])  # two steps shown (scores > 0)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [math.nan, math.inf, -math.inf, 3.0], [0.0] * 4])
    attention = torch.full((3, 2, 2, 2), math.nan)
    grid = figure1_grid(image, masks, scores, boxes, attention)
    # Rows: attention, box + score, soft mask, instances so far; one column per shown step.
    assert grid.shape == (4 * 8, 2 * 8, 3) and grid.dtype == np.uint8
    mask_row = grid[2 * 8 : 3 * 8]
    assert (mask_row[:4, :4] == 255).all() and (mask_row[:4, 8:] == 0).all()
    so_far = grid[3 * 8 :]
    assert (so_far[:4, :4] == PALETTE[0]).all() and (so_far[4:, 12:] == 0).all()
