"""Prediction task: ``python predict.py ckpt_path=... input=<folder or image> output=<folder>``;
``weights=<name>`` instead of ``ckpt_path`` uses shipped weights (:mod:`recattend.pretrained`).

Every image is read faithfully (:func:`recattend.data.images.read_image`: each PIL mode scaled
to [0, 1] by its real range, 16-bit included; alpha dropped) and segmented at the network's
resolution (the image is resized to it); the soft masks are upsampled back to the image's size
and post-processed into one label per pixel by the checkpoint's post-processing, the path
evaluation uses (:attr:`recattend.lit.SegmenterModule.postprocess`), whose settings the
``postprocess`` node may override one by one. The reading, the network and the post-processing
are the Python API's (:class:`recattend.api.Segmenter`).

The output folder receives, per input file ``<name>`` (its whole file name, extension included,
so that ``x.png`` and ``x.jpg`` never share outputs): ``<name>_labels.png`` (8-bit, or 16-bit
above 255 instances) and ``<name>_overlay.png`` (instances tinted and outlined, the count in a
white strip below the image, which covers none of its pixels); and for the run: ``counts.csv``
(``image,instances,unlike_training``: the input's file name, its count, and why the image looks
unlike the model's training data, empty when it does not), ``skipped.csv`` (``file,reason``:
files that are not images, unreadable, without a known value range, or larger than
``max_pixels``; only the header when none) and, with ``coco_json=true``, ``results.json`` (COCO
results, RLE, ``image_id`` = the file name).

The output folder is checked to be writable before any work, and must not be the input folder
(refused: the outputs would mix with the images and a rerun would read them back); a folder
inside it is fine, the input is not searched recursively. ``counts.csv``, ``skipped.csv`` and
``results.json`` left there by an earlier run are removed before predicting and written anew,
each atomically (a temporary file renamed), so they always describe the last run; per-image
outputs of images not in this run are left as they are.

Inputs unlike the training data are warned about, never refused
(:mod:`recattend.evaluation.statistics`): each image's size, its appearance at the network's
resolution (channel means, contrast, colourfulness, edge strength) and simple statistics of the
model's output on it (foreground fraction, instance count, mean score) are compared with those
the checkpoint recorded on its last validation (``output_statistics``). An image is marked when
its area is more than 64x (8x per side) larger or smaller than the validation images' (the
network's resolution for a checkpoint without statistics), its aspect ratio more than 2x off, or
an output or appearance statistic more than 3 standard deviations from the validation mean. One
warning at the end names the marked images and why; ``counts.csv`` lists the reasons in its
``unlike_training`` column.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.progress import track

from recattend import pretrained
from recattend.api import Segmenter, exported_metadata
from recattend.data.files import READ_ERRORS
from recattend.data.images import read_image, to_display
from recattend.evaluation.export import coco_results, overlay, write_json, write_label_png
from recattend.evaluation.statistics import (
    image_statistics,
    reference_summary,
    saved_statistics,
    unlike_training,
)
from recattend.utils.atomic import write_atomically
from recattend.utils.checkpoint import read_checkpoint
from recattend.utils.cli import hydra_main
from recattend.utils.config import require_writable_dir
from recattend.utils.log_filters import silence_known_noise

log = logging.getLogger(__name__)

# The run's summaries in the output folder: replaced by every run, never left from an earlier one.
SUMMARIES = ("counts.csv", "skipped.csv", "results.json")


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


def run(cfg: DictConfig) -> dict[str, int]:
    """Predict every image of ``cfg.input`` into ``cfg.output``; returns {file name: count}.

    Raises:
        ValueError: ``output`` is the input folder, or ``ckpt_path`` is not a segmenter
            checkpoint (:func:`~recattend.lit.load_module` names what it holds).
        PermissionError, FileNotFoundError: an unwritable output, a missing checkpoint or input.
    """
    silence_known_noise()
    source = Path(cfg.input)
    folder = source if source.is_dir() else source.parent  # where the inputs are read from
    if source.exists() and folder.resolve() == Path(cfg.output).resolve():
        raise ValueError(
            f"output={cfg.output} is the input folder: the predictions would mix with the images "
            "and a rerun would read them back; pick another folder (a subfolder, e.g. "
            f"output={folder / 'predictions'}, is fine)"
        )
    output = require_writable_dir(cfg.output, "output")
    key, name = pretrained.chosen(cfg.get("ckpt_path"), cfg.get("weights"))
    ckpt = pretrained.checkpoint_file(name, key)
    images, skipped = list_images(source, int(cfg.max_pixels))
    node = cfg.get("postprocess")
    segmenter = Segmenter.load(
        ckpt, device=cfg.device, key=key, cpu_fast_path=bool(cfg.get("cpu_fast_path", True)),
        postprocess=OmegaConf.to_container(node, resolve=True) if node is not None else None,
    )  # fmt: skip
    network_size = segmenter.image_size
    # An exported file (recattend.export) records no training statistics.
    exported = exported_metadata(ckpt) is not None
    checkpoint = {} if exported else read_checkpoint(ckpt, key, mmap=True)  # tensors on disk
    reference = saved_statistics(checkpoint)
    if reference is None:
        log.info(
            "%s holds no output statistics (%s): only image sizes are compared with the "
            "training data's",
            ckpt, "an exported model" if exported else "written before they were recorded",
        )  # fmt: skip
    for name in SUMMARIES:  # an interrupted run must not leave an earlier run's summaries
        (output / name).unlink(missing_ok=True)
    counts: dict[str, int] = {}
    unlike: dict[str, list[str]] = {}  # file name -> why it looks unlike the training data
    results = []
    for path in track(images, description="predicting", disable=not cfg.progress):
        try:
            image = read_image(path, int(cfg.max_pixels))
        except READ_ERRORS as err:
            skipped.append((path, f"cannot read ({type(err).__name__}: {err})"))
            continue
        image, x = segmenter.network_input(image)
        [result] = segmenter.instances(x[None], [image.shape[:2]])
        labels, scores = result.labels.cpu().numpy(), result.scores
        write_label_png(labels, output / f"{path.name}_labels.png")
        Image.fromarray(overlay(to_display(image), labels)).save(
            output / f"{path.name}_overlay.png"
        )
        counts[path.name] = int(labels.max(initial=0))
        stats = image_statistics(result.labels, scores, image.shape[:2], x)
        unlike[path.name] = unlike_training(stats, reference, network_size)
        if cfg.coco_json:
            results += coco_results(labels, scores.tolist(), path.name)
    _write_csv(
        output / "counts.csv",
        ["image", "instances", "unlike_training"],
        ((name, count, "; ".join(unlike[name])) for name, count in counts.items()),
    )
    _warn_unlike(unlike, reference, network_size, checkpoint.get("dataset"), output)
    _write_csv(output / "skipped.csv", ["file", "reason"], ((str(p), w) for p, w in skipped))
    if skipped:
        log.warning(
            "skipped %d file(s) (listed in %s):\n  %s",
            len(skipped), output / "skipped.csv", "\n  ".join(f"{p}: {why}" for p, why in skipped),
        )  # fmt: skip
    if cfg.coco_json:
        write_atomically(output / "results.json", lambda tmp: write_json(results, tmp))
    log.info("%d image(s) predicted into %s", len(counts), output)
    return counts


def _warn_unlike(
    unlike: dict[str, list[str]],
    reference: dict[str, float] | None,
    network_size: tuple[int, int],
    dataset: Any,
    output: Path,
) -> None:
    """One warning for every image that looks unlike the training data, with why, what the
    model was trained on (the checkpoint's ``dataset`` config when it records one) and its
    validation images' statistics."""
    marked = {name: why for name, why in unlike.items() if why}
    if not marked:
        return
    shown = list(marked.items())[:10]
    more = f"\n  ... and {len(marked) - len(shown)} more" if len(marked) > len(shown) else ""
    trained = f" ({_describe_dataset(dataset)})" if isinstance(dataset, dict) else ""
    log.warning(
        "%d of %d image(s) look unlike the data the model was trained on%s (compared with its %s); "
        "results on them may be meaningless (reasons in %s, column unlike_training):\n  %s%s",
        len(marked), len(unlike), trained, reference_summary(reference, network_size),
        output / "counts.csv", "\n  ".join(f"{n}: {'; '.join(w)}" for n, w in shown), more,
    )  # fmt: skip


def _describe_dataset(dataset: dict[str, Any]) -> str:
    """A recorded dataset config in a few words, e.g. ``SyntheticDataModule (style=leaves)``."""
    name = str(dataset.get("_target_", "an unnamed dataset")).rsplit(".", 1)[-1]
    details = [f"{k}={dataset[k]}" for k in ("style", "root") if k in dataset]
    return f"{name} ({', '.join(details)})" if details else name


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    write_atomically(path, write)


main = hydra_main("predict", f"{__name__}:run")  # the recattend-predict command
