"""The demo: ``make demo`` or ``python -m recattend.tasks.demo [predict.py overrides]``.

Renders ``demo.num_images`` synthetic rosettes with the generator settings the shipped weights
were trained on (their recorded ``dataset``) but their own seed and size, segments them with
:func:`recattend.tasks.predict.run` (overlays, label maps, ``counts.csv``), draws the first
``demo.figure_images`` step by step as the paper's Figure 1 (``figure1.png``), and prints where
everything is. No data, no training, no network access.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import torch
from omegaconf import DictConfig

from recattend import pretrained
from recattend.api import Segmenter
from recattend.data.rosette import RosetteOptions
from recattend.data.synthetic import SyntheticInstances
from recattend.tasks import predict
from recattend.utils.checkpoint import read_checkpoint
from recattend.utils.cli import hydra_main
from recattend.visualise import figure1

log = logging.getLogger(__name__)


def render_images(
    dataset: dict, folder: Path, num_images: int, size: list[int], seed: int
) -> list[Path]:
    """Write ``num_images`` rosettes drawn like ``dataset`` (a recorded synthetic dataset config)
    at ``size`` (H, W) as ``demo_<i>.png`` in ``folder``; returns their paths."""
    source = SyntheticInstances(
        style=dataset["style"],
        size=(int(size[0]), int(size[1])),
        length=num_images,
        seed=seed,
        split="test",
        min_objects=dataset["min_objects"],
        max_objects=dataset["max_objects"],
        shade_jitter=dataset["shade_jitter"],
        rosette=RosetteOptions.from_config(dataset.get("rosette")),
        kinds=dataset["kinds"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(source):
        path = folder / f"demo_{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def run(cfg: DictConfig) -> Path:
    """Render, predict and draw; returns the Figure 1 file."""
    key, name = pretrained.chosen(cfg.get("ckpt_path"), cfg.get("weights"))
    checkpoint = read_checkpoint(name, key, mmap=True)
    dataset = checkpoint.get("dataset") or {}
    if not str(dataset.get("_target_", "")).endswith("SyntheticDataModule"):
        raise ValueError(
            f"{key}={name}: the demo renders the synthetic data its weights were trained on, and "
            "this checkpoint records none; use shipped weights (weights=leaves)"
        )
    demo = cfg.demo
    images = render_images(dataset, Path(cfg.input), demo.num_images, demo.size, demo.seed)
    counts = predict.run(cfg)
    segmenter = Segmenter.load(
        pretrained.checkpoint_file(name, key), device=cfg.device, key=key,
        cpu_fast_path=bool(cfg.get("cpu_fast_path", True)),
    )  # fmt: skip
    x = torch.stack([segmenter.network_input(p)[1] for p in images[: demo.figure_images]])
    with torch.no_grad():
        out = {k: v.cpu() for k, v in segmenter.module(x).items()}
    grid = figure1(x.cpu(), out)
    figure = Path(cfg.paths.output_dir) / "figure1.png"
    cv2.imwrite(str(figure), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    found = ", ".join(f"{n}: {c}" for n, c in counts.items())
    print(
        f"\nDemo done ({key}={name}). Instances found: {found}\n"
        f"  images    {cfg.input}\n"
        f"  overlays  {cfg.output}/*_overlay.png\n"
        f"  Figure 1  {figure}\n"
        f"Your own images: python predict.py {key}={name} input=<folder> output=<folder>"
    )
    return figure


main = hydra_main("demo", f"{__name__}:run")

if __name__ == "__main__":
    main()
