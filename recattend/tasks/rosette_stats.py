"""How much do the synthetic rosettes look like real ones? Aggregate statistics, side by side.

``python -m recattend.tasks.rosette_stats [--knob name=value ...] [--cvppp FOLDER]`` draws
``--num`` rosettes at a real photo's size (500 x 530 by default) with any generator setting and
prints, for each statistic, its 10th percentile, median and 90th percentile over images beside
the same figures of the 96 CVPPP A1 training plants (``REAL_A1``). ``--cvppp`` adds a column
measured on a folder in the CVPPP layout (``plantNNN_rgb.png`` + ``plantNNN_label.png``), e.g.
your own labelled plants.

The statistics (per image; leaf figures over its visible leaves):

* leaves: visible leaves; plant fraction: leaf pixels over image pixels;
* extent: the largest side of the plant's bounding box over the image width;
* smallest / median / largest leaf: leaf pixels over image pixels;
* elongation: the median over leaves of sqrt(l1 / l2), l1 >= l2 the eigenvalues of the covariance
  of a leaf's pixel coordinates (1 for a disc, 2 for a 2:1 ellipse);
* leaf / background colour: mean RGB over the leaf / other pixels.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from recattend.data.cvppp import read_label
from recattend.data.files import READ_ERRORS
from recattend.data.images import read_image
from recattend.data.rosette import RosetteOptions, render_rosette

# CVPPP A1, its 96 training plants: (p10, median, p90) of each statistic; colours are means.
REAL_A1: dict[str, tuple[float, ...]] = {
    "leaves": (14, 16, 18),
    "plant fraction": (0.075, 0.138, 0.217),
    "extent / width": (0.46, 0.66, 0.81),
    "smallest leaf": (0.0005, 0.0008, 0.0018),
    "median leaf": (0.0044, 0.0076, 0.0118),
    "largest leaf": (0.0115, 0.0176, 0.0257),
    "elongation": (1.57, 1.76, 1.97),
    "leaf colour": (106, 164, 36),
    "background colour": (137, 87, 55),
}
COLOURS = ("leaf colour", "background colour")
MAX_PIXELS = 100_000_000  # larger photos are refused while decoding


def elongation(mask: np.ndarray) -> float:
    """sqrt(l1 / l2) of a mask's pixel-coordinate covariance; nan below 3 pixels or a line."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return float("nan")
    low, high = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64)))
    return float(np.sqrt(high / low)) if low > 1e-9 else float("nan")


def image_statistics(image: np.ndarray, masks: np.ndarray) -> dict[str, object]:
    """One image's statistics (module docstring) from (H, W, 3) uint8 RGB and (N, H, W) bool
    visible leaf masks (empty masks are ignored)."""
    h, w = image.shape[:2]
    masks = masks[masks.reshape(len(masks), -1).any(1)] if len(masks) else masks
    plant = masks.any(0) if len(masks) else np.zeros((h, w), bool)
    areas = np.sort(masks.reshape(len(masks), -1).sum(1)) / (h * w)
    stats: dict[str, object] = {"leaves": len(masks), "plant fraction": plant.mean()}
    if len(masks):
        ys, xs = np.nonzero(plant)
        stats["extent / width"] = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / w
        stats["smallest leaf"] = areas[0]
        stats["median leaf"] = float(np.median(areas))
        stats["largest leaf"] = areas[-1]
        stats["elongation"] = float(np.nanmedian([elongation(m) for m in masks]))
        stats["leaf colour"] = image[plant].mean(0)
    if (~plant).any():
        stats["background colour"] = image[~plant].mean(0)
    return stats


def summarise(per_image: Iterable[dict[str, object]]) -> dict[str, tuple[float, ...]]:
    """(p10, median, p90) of every statistic over images; the mean RGB for the colours."""
    rows = list(per_image)
    out = {}
    for key in REAL_A1:
        values = [r[key] for r in rows if key in r]
        if not values:
            continue
        if key in COLOURS:
            out[key] = tuple(np.mean(np.stack(values), 0))  # type: ignore[arg-type]
        else:
            out[key] = tuple(np.percentile(np.asarray(values, float), [10, 50, 90]))
    return out


def draws(
    num: int,
    size: tuple[int, int],
    leaves: tuple[int, int],
    seed: int,
    options: RosetteOptions,
    shade_jitter: float = 1.0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``num`` rosettes (image, masks) drawn at ``size`` (H, W) with ``leaves`` (min, max)
    leaves; rosette ``i`` from ``default_rng([seed, i])``."""
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        count = int(rng.integers(leaves[0], leaves[1] + 1))
        yield render_rosette(rng, size, count, shade_jitter, options=options)


def synthetic(*args: Any, **kwargs: Any) -> list[dict[str, object]]:
    """The statistics of each of :func:`draws`' rosettes (same arguments)."""
    return [image_statistics(image, masks) for image, masks in draws(*args, **kwargs)]


def folder(root: Path) -> list[dict[str, object]]:
    """Statistics of every ``plantNNN_rgb.png`` with its ``plantNNN_label.png`` in ``root``."""
    rows = []
    for rgb in sorted(root.glob("plant*_rgb.png")):
        label = rgb.with_name(rgb.name.replace("_rgb.png", "_label.png"))
        if not label.exists():
            continue
        try:
            image, masks = read_image(rgb, MAX_PIXELS), read_label(label)
        except READ_ERRORS as error:
            raise ValueError(
                f"--cvppp: {rgb.name} or {label.name} is unreadable: {error}"
            ) from error
        if image.shape[:2] != masks.shape[1:]:
            raise ValueError(
                f"--cvppp: {rgb.name} is {image.shape[1]}x{image.shape[0]} but {label.name} "
                f"{masks.shape[2]}x{masks.shape[1]}: an image and its label must be the same size"
            )
        if image.dtype != np.uint8:  # 16-bit photos read as floats in [0, 1]
            image = np.round(image * 255).astype(np.uint8)
        rows.append(image_statistics(image, masks))
    if not rows:
        raise FileNotFoundError(
            f"--cvppp {root}: no plantNNN_rgb.png with its plantNNN_label.png in this folder"
        )
    return rows


def _format(key: str, values: Sequence[float]) -> str:
    if key in COLOURS:
        return ", ".join(f"{v:.0f}" for v in values)
    digits = 0 if key == "leaves" else 2 if key in ("elongation", "extent / width") else 4
    if key == "plant fraction":
        digits = 3
    return " / ".join(f"{v:.{digits}f}" for v in values)


def table(columns: dict[str, dict[str, tuple[float, ...]]]) -> str:
    """A markdown table: one row per statistic, one column per source."""
    names = list(columns)
    lines = [
        "| statistic (p10 / median / p90; colours: mean RGB) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key in REAL_A1:
        cells = [_format(key, col[key]) if key in col else "" for col in columns.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_knobs(pairs: Sequence[str]) -> RosetteOptions:
    """``name=value`` strings (values in YAML: ``plant_extent=[0.4,0.8]``) as options."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--knob {pair!r}: write name=value, e.g. --knob moss=0.2")
        # OmegaConf's YAML, as Hydra's command line: 1e-3 is a number, not a string.
        try:
            values[name.strip()] = OmegaConf.to_container(OmegaConf.create(f"v: {value}"))["v"]
        except Exception as error:  # the YAML parser's own error types
            raise ValueError(f"--knob {pair!r}: {value!r} is not a YAML value") from error
    return RosetteOptions.from_config(values)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m recattend.tasks.rosette_stats",
        description="The synthetic rosettes' statistics beside real CVPPP A1 plants'.",
    )
    parser.add_argument("--num", type=int, default=96, help="rosettes drawn (default 96)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 530), metavar=("H", "W"))
    parser.add_argument("--leaves", type=int, nargs=2, default=(11, 20), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shade-jitter", type=float, default=1.0)
    parser.add_argument(
        "--knob", action="append", default=[], metavar="NAME=VALUE",
        help="a dataset.rosette knob, e.g. --knob plant_extent=[0.4,0.8] (repeatable)",
    )  # fmt: skip
    parser.add_argument("--cvppp", type=Path, help="also measure this CVPPP-layout folder")
    args = parser.parse_intermixed_args(argv)
    if args.num < 1 or min(args.size) < 8 or not 0 <= args.leaves[0] <= args.leaves[1]:
        parser.error("--num >= 1, --size of at least 8 px, --leaves MIN <= MAX")
    try:
        options = parse_knobs(args.knob)
        columns = {"real A1 (96 plants)": dict(REAL_A1)}
        rows = synthetic(
            args.num, tuple(args.size), tuple(args.leaves), args.seed, options, args.shade_jitter
        )
        columns[f"generator ({args.num} at {args.size[0]}x{args.size[1]})"] = summarise(rows)
        if args.cvppp is not None:
            columns[str(args.cvppp)] = summarise(folder(args.cvppp))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    out = table(columns)
    print(out)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
