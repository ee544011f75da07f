"""A picture of the synthetic rosettes: each drawn image beside its label map (``make gallery``).

``python -m recattend.tasks.gallery [--out FILE] [--knob name=value ...]`` draws ``--num``
rosettes at a real photo's size (500 x 530 by default) with any generator setting (the knobs of
``dataset.rosette``, as ``rosette_stats`` takes them) and writes them as a grid of pairs, image
left and leaves right (each leaf its own colour, oldest first in the palette's order,
background black), scaled by ``--scale``. The docs' picture is
``make gallery ARGS="--out docs/images/rosettes.jpg"`` with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from recattend.data.rosette import RosetteOptions
from recattend.tasks.rosette_stats import draws, parse_knobs
from recattend.visualise import PALETTE

DEFAULT_OUT = Path("outputs/gallery/rosettes.jpg")


def label_image(masks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB of (N, H, W) bool masks: mask k in ``PALETTE[k % 20]``, else black."""
    out = np.zeros((*masks.shape[1:], 3), np.uint8)
    for k, mask in enumerate(masks):
        out[mask] = PALETTE[k % len(PALETTE)]
    return out


def gallery(
    num: int,
    size: tuple[int, int],
    leaves: tuple[int, int],
    seed: int,
    options: RosetteOptions,
    columns: int = 2,
    scale: float = 0.4,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB grid of ``num`` (image, labels) pairs, ``columns`` pairs a row, of
    :func:`~recattend.tasks.rosette_stats.draws`' rosettes (those it measures)."""
    h, w = round(size[0] * scale), round(size[1] * scale)
    tiles = []
    for image, masks in draws(num, size, leaves, seed, options):
        pair = np.concatenate([image, label_image(masks)], axis=1)
        tiles.append(cv2.resize(pair, (2 * w, h), interpolation=cv2.INTER_AREA))
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m recattend.tasks.gallery",
        description="Synthetic rosettes beside their labels, as one picture.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--num", type=int, default=6, help="rosettes drawn (default 6)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 530), metavar=("H", "W"))
    parser.add_argument("--leaves", type=int, nargs=2, default=(11, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=2, help="pairs per row")
    parser.add_argument("--scale", type=float, default=0.4, help="of the drawn size")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_intermixed_args(argv)
    if args.num < 1 or args.columns < 1 or not 0 < args.scale <= 4 or min(args.size) < 8:
        parser.error("--num >= 1, --columns >= 1, 0 < --scale <= 4, --size of at least 8 px")
    if not 0 <= args.leaves[0] <= args.leaves[1]:
        parser.error(f"--leaves {args.leaves[0]} {args.leaves[1]}: need 0 <= MIN <= MAX")
    if not cv2.haveImageWriter(str(args.out)):
        parser.exit(2, f"error: --out {args.out}: not an image file type (use .jpg or .png)\n")
    try:
        options = parse_knobs(args.knob)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    picture = gallery(
        args.num, tuple(args.size), tuple(args.leaves), args.seed, options, args.columns, args.scale
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        parser.exit(2, f"error: --out {args.out}: the picture could not be written there\n")
    print(f"{args.num} rosettes and their labels: {args.out}")
    return args.out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
