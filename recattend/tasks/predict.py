"""Prediction task: ``python predict.py ckpt_path=... input=<folder or image> output=<folder>``.

For every image: the segmenter runs at its network resolution (the image is resized to it), the
soft masks are upsampled back to the image's size and post-processed into one label per pixel
by the checkpoint's post-processing, the path evaluation uses
(:meth:`recattend.lit.SegmenterModule.instances`), and the output folder receives
``<stem>_labels.png`` (8-bit, or 16-bit above 255 instances), ``<stem>_overlay.png`` (instances
tinted and outlined, the count written on it) and a row of ``counts.csv``; ``coco_json=true`` adds
``results.json`` (COCO results, RLE). Files that are not images, unreadable, or larger than
``max_pixels`` (decompression bombs) are listed in ``skipped.csv`` and skipped; the output folder
is checked to be writable before any work.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import track

from recattend import ops
from recattend.data.files import READ_ERRORS
from recattend.evaluation.export import coco_results, overlay, write_json, write_label_png
from recattend.lit import SegmenterModule
from recattend.utils.checkpoint import load_module
from recattend.utils.config import process_settings, require_writable_dir

log = logging.getLogger(__name__)


def list_images(source: Path, max_pixels: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The readable images of a file or folder (not recursive), and the skipped files with why.

    Only headers are read here: a file is an image when PIL recognises it; an image with more
    than ``max_pixels`` pixels is refused without decoding it.

    Raises:
        FileNotFoundError: ``source`` does not exist.
    """
    if not source.exists():
        raise FileNotFoundError(f"input={source}: no such file or folder")
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    images, skipped = [], []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    pixels = image.width * image.height
        except READ_ERRORS as err:
            skipped.append((path, f"not a readable image ({type(err).__name__}: {err})"))
            continue
        if pixels > max_pixels:
            skipped.append(
                (
                    path,
                    f"{pixels} pixels > max_pixels={max_pixels} (raise it if the image is trusted)",
                )
            )
            continue
        images.append(path)
    return images, skipped


def _read(path: Path, max_pixels: int) -> np.ndarray:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses anything larger while decoding too
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def run(cfg: DictConfig) -> dict[str, int]:
    """Predict every image of ``cfg.input`` into ``cfg.output``; returns {file name: count}."""
    output = require_writable_dir(cfg.output, "output")
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint file")
    images, skipped = list_images(Path(cfg.input), int(cfg.max_pixels))
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else
        ("cpu" if cfg.device == "auto" else cfg.device)
    )  # fmt: skip
    threshold = {} if cfg.threshold is None else {"threshold": float(cfg.threshold)}
    module = load_module(SegmenterModule, ckpt, threshold, map_location=device)
    module.eval()
    steps, compiled = module.net.steps, module.hparams.compile
    ops.configure(**process_settings(cfg, device.type, steps, compiled, training=False))
    height, width = module.net.image_size
    counts: dict[str, int] = {}
    results = []
    for path in track(images, description="predicting", disable=not cfg.progress):
        try:
            rgb = _read(path, int(cfg.max_pixels))
        except READ_ERRORS as err:
            skipped.append((path, f"cannot decode ({type(err).__name__}: {err})"))
            continue
        resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(resized).permute(2, 0, 1).float().div(255)[None].to(device)
        with torch.no_grad():
            result = module.instances(module(x), x, tuple(rgb.shape[:2]))[0]
        labels, scores = result.labels.cpu().numpy(), result.scores
        write_label_png(labels, output / f"{path.stem}_labels.png")
        Image.fromarray(overlay(rgb, labels)).save(output / f"{path.stem}_overlay.png")
        counts[path.name] = int(labels.max(initial=0))
        if cfg.coco_json:
            results += coco_results(labels, scores.tolist(), path.stem)
    with (output / "counts.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "instances"])
        writer.writerows(counts.items())
    if skipped:
        with (output / "skipped.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "reason"])
            writer.writerows((str(p), why) for p, why in skipped)
        log.warning(
            "skipped %d file(s) (listed in %s):\n  %s",
            len(skipped), output / "skipped.csv", "\n  ".join(f"{p}: {why}" for p, why in skipped),
        )  # fmt: skip
    if cfg.coco_json:
        write_json(results, output / "results.json")
    log.info("%d image(s) predicted into %s", len(counts), output)
    return counts


main = hydra.main(version_base="1.3", config_path="pkg://recattend.conf", config_name="predict")(
    run
)
