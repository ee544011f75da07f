"""Simple statistics of the segmenter's own outputs, to tell a user when their images look unlike
the data the model was trained on.

Per image (:func:`image_statistics`), from its post-processed label map:

* ``foreground_fraction``: the share of the image's pixels given to some instance, in [0, 1];
* ``instances``: the number of instances found, K >= 0;
* ``mean_score``: the mean score s_t of those K instances, in [0, 1] (undefined when K = 0);

and of the input itself, the image as given (before the resize to the network's resolution):
``image_area`` (H W pixels) and ``aspect_ratio`` (W / H); and, from the network's input (the
image at the network's resolution, values in [0, 1]), its appearance:

* ``red``, ``green``, ``blue``: the mean of each channel;
* ``contrast``: the standard deviation of the luminance (0.299 R + 0.587 G + 0.114 B);
* ``colourfulness``: the mean over pixels of max(R, G, B) - min(R, G, B) (0 for grey);
* ``edges``: the mean absolute difference of the luminance between neighbouring pixels
  (texture: 0 for a flat image).

During each validation the :class:`~recattend.evaluation.Evaluate` callback records them for
every validation image (:class:`StatisticsRecorder`, at no extra cost: it watches the
post-processing the evaluator runs anyway) and gives the summary (:func:`summarise`: mean and
population standard deviation over the images) to the module as ``output_statistics``; the
segmenter saves it in its checkpoints as the top-level key ``"output_statistics"``, a flat dict
of plain floats (``"<name>.mean"``, ``"<name>.std"``, ``"images"``) that loads with
``weights_only=True``. :func:`output_statistics` computes the same summary from any module and
batches (e.g. for weights exported from a checkpoint written before statistics were recorded).

``predict.py`` computes each input's statistics and compares them with the checkpoint's
(:func:`unlike_training`). An image is unlike the training data when

* its area is more than :data:`AREA_FACTOR` (64) times larger or smaller than the validation
  images' mean area (the network's resolution when the checkpoint has no statistics): 8 times
  per side, so a ~500x500 plant photo for a model validated at 128x128 is fine (the network
  resizes it) and a 12-megapixel photo is not; or its aspect ratio more than
  :data:`ASPECT_FACTOR` (2) times wider or narrower; or
* one of its output or appearance statistics is more than :data:`DEVIATIONS` (3) standard
  deviations from the validation mean, the standard deviation taken at least :data:`STD_FLOORS`
  (foreground fraction 0.05, instances 1, mean score 0.05; channel means 0.03, contrast and
  colourfulness 0.02, edges 0.008), so that a small or very uniform validation set does not flag
  ordinary images. Checkpoints recorded before a statistic existed are not compared on it.

These are warnings, never refusals: the model may still do well on such an image, but nothing
measured it there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from recattend.evaluation.distributed import all_gather_objects
from recattend.evaluation.targets import pixel_area
from recattend.postprocess import Instances

CHECKPOINT_KEY = "output_statistics"
OUTPUT_STATISTICS = ("foreground_fraction", "instances", "mean_score")
APPEARANCE_STATISTICS = ("red", "green", "blue", "contrast", "colourfulness", "edges")
SIZE_STATISTICS = ("image_area", "aspect_ratio")
STATISTICS = OUTPUT_STATISTICS + APPEARANCE_STATISTICS + SIZE_STATISTICS

DEVIATIONS = 3.0
STD_FLOORS = {
    "foreground_fraction": 0.05,
    "instances": 1.0,
    "mean_score": 0.05,
    "red": 0.03,
    "green": 0.03,
    "blue": 0.03,
    "contrast": 0.02,
    "colourfulness": 0.02,
    "edges": 0.008,
}
AREA_FACTOR = 64.0
ASPECT_FACTOR = 2.0

_NAMES = {
    "foreground_fraction": "foreground fraction",
    "mean_score": "mean score",
    "red": "mean red",
    "green": "mean green",
    "blue": "mean blue",
    "edges": "edge strength",
}


def image_statistics(
    labels: Tensor, scores: Tensor, size: tuple[int, int], image: Tensor | None = None
) -> dict[str, float]:
    """One image's statistics (module docstring).

    Args:
        labels: (h, w) int64 label map, 0 = background, instances 1..K (post-processed, at any
            resolution).
        scores: (K,) float, instance k's score at index k - 1.
        size: (H, W) of the image as given to the model's user, before any resize.
        image: (3, h, w) float in [0, 1], the network's input; None: no appearance statistics.

    Returns:
        ``{name: value}`` for every name of :data:`STATISTICS` (without the appearance ones
        when ``image`` is None); ``mean_score`` is NaN when K = 0.
    """
    k = int(scores.numel())
    stats = {
        "foreground_fraction": float((labels > 0).float().mean()) if labels.numel() else 0.0,
        "instances": float(k),
        "mean_score": float(scores.float().mean()) if k else math.nan,
        "image_area": float(size[0] * size[1]),
        "aspect_ratio": float(size[1] / size[0]),
    }
    return stats if image is None else {**stats, **appearance(image)}


def appearance(image: Tensor) -> dict[str, float]:
    """The appearance statistics (module docstring) of a (3, h, w) image in [0, 1]."""
    x = image.detach().float()
    luminance = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    across = (luminance[:, 1:] - luminance[:, :-1]).abs().mean() if x.shape[2] > 1 else 0.0
    down = (luminance[1:] - luminance[:-1]).abs().mean() if x.shape[1] > 1 else 0.0
    means = x.mean(dim=(1, 2))
    return {
        "red": float(means[0]),
        "green": float(means[1]),
        "blue": float(means[2]),
        "contrast": float(luminance.std(correction=0)),
        "colourfulness": float((x.amax(0) - x.amin(0)).mean()),
        "edges": float((across + down) / 2),
    }


def summarise(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean and population standard deviation of each statistic over images.

    Args:
        rows: per-image :func:`image_statistics`.

    Returns:
        ``{"images": n, "<name>.mean": ..., "<name>.std": ...}`` as plain floats; a statistic
        without a finite value in any row (``mean_score`` when no image had an instance) is
        left out.
    """
    rows = list(rows)
    summary = {"images": float(len(rows))}
    for name in STATISTICS:
        values = np.array([row[name] for row in rows if math.isfinite(row.get(name, math.nan))])
        if values.size:
            summary[f"{name}.mean"] = float(values.mean())
            summary[f"{name}.std"] = float(values.std())
    return summary


class StatisticsRecorder:
    """Collects the statistics of every image a loop post-processes, and summarises them.

    :meth:`recording` wraps the module's post-processing for one batch: the evaluator calls the
    wrapper as it would the module's, and each image's result is recorded on its way back, so
    nothing is computed twice.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def reset(self) -> None:
        """Forget every image: called before each validation."""
        self.rows = []

    def recording(
        self, postprocess: Callable[..., list[Instances]], batch: Mapping[str, Any]
    ) -> Callable[..., list[Instances]]:
        """``postprocess`` for ``batch``, recording the statistics of each image it returns.

        The evaluators post-process a batch's images in order, all at once or one by one, so the
        n-th result returned is image n of the batch. An image's size is the ``size`` asked
        for (the original size, when the evaluator scores there), else its
        ``meta["orig_size"]``, else the network's input size (generated data is made at network
        resolution).
        """
        metas, images = batch.get("meta") or [], batch["image"]
        seen = 0  # images of the batch already returned

        def record(
            out: dict[str, Tensor], size: tuple[int, int] | None = None, **kwargs: Any
        ) -> list[Instances]:
            nonlocal seen
            results = postprocess(out, size=size, **kwargs)
            for result in results:
                if size is not None:
                    shape = tuple(size)
                elif seen < len(metas) and "orig_size" in metas[seen]:
                    shape = tuple(metas[seen]["orig_size"])
                else:
                    shape = tuple(images.shape[-2:])
                row = image_statistics(result.labels, result.scores, shape, images[seen])
                self.rows.append(row)
                seen += 1
            return results

        return record

    def summary(self) -> dict[str, float]:
        """:func:`summarise` of every rank's images (a collective under DDP: every rank calls
        it)."""
        return summarise(all_gather_objects(self.rows))


def output_statistics(
    module: L.LightningModule, batches: Iterable[Mapping[str, Any]]
) -> dict[str, float]:
    """The statistics validation records, computed from ``module`` on ``batches``.

    Runs the module and its post-processing (``module.postprocess``) at network resolution, as
    validation does, in eval mode and without gradients (the module's mode is restored).

    Args:
        module: a :class:`~recattend.lit.SegmenterModule` (anything with ``forward(image)`` and
            a ``postprocess(out, pixel_area=...)``).
        batches: batch dicts with ``image`` (B, 3, h, w) float in [0, 1] at the network's
            resolution and optionally ``meta`` (B dicts; ``orig_size`` (H, W) where the images
            were resized), e.g. ``datamodule.val_dataloader()``.

    Returns:
        The :func:`summarise` dict, to store as ``checkpoint["output_statistics"]``.
    """
    recorder = StatisticsRecorder()
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {**batch, "image": batch["image"].to(module.device)}
                out = module(batch["image"])
                area = pixel_area(batch) if "meta" in batch else 1.0
                recorder.recording(module.postprocess, batch)(out, pixel_area=area)
    finally:
        module.train(training)
    return summarise(recorder.rows)


def saved_statistics(checkpoint: Mapping[str, Any]) -> dict[str, float] | None:
    """The ``output_statistics`` a checkpoint dict holds (as plain floats), or None: written
    before they were recorded, by a run that never validated, or not a dict of numbers."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(saved, Mapping):
        return None
    try:
        return {str(k): float(v) for k, v in saved.items()}
    except (TypeError, ValueError):
        return None


def unlike_training(
    stats: Mapping[str, float],
    reference: Mapping[str, float] | None,
    network_size: tuple[int, int],
) -> list[str]:
    """Why one image looks unlike the images the model was validated on (module docstring).

    Args:
        stats: the image's :func:`image_statistics`.
        reference: the checkpoint's ``output_statistics``, or None: only the size is compared,
            with the network's resolution.
        network_size: (h, w) of the network's input.

    Returns:
        One plain-words reason per statistic out of range, e.g. ``"foreground fraction 0.71 vs
        0.18±0.05"``, ``"11 instances vs 7.9±2.1"``, ``"mean blue 0.62 vs 0.21±0.04"`` or
        ``"size 4000x3000 vs about 128x128"`` (width x height); empty when none is.
    """
    reference = reference or {}
    reasons = []
    area = reference.get("image_area.mean", float(network_size[0] * network_size[1]))
    aspect = reference.get("aspect_ratio.mean", network_size[1] / network_size[0])
    area_ratio = stats["image_area"] / area
    aspect_ratio = stats["aspect_ratio"] / aspect
    if not (1 / AREA_FACTOR <= area_ratio <= AREA_FACTOR) or not (
        1 / ASPECT_FACTOR <= aspect_ratio <= ASPECT_FACTOR
    ):
        h = math.sqrt(stats["image_area"] / stats["aspect_ratio"])
        w, typical = stats["image_area"] / h, typical_size(area, aspect)
        reasons.append(f"size {round(w)}x{round(h)} vs about {typical}")
    for name in OUTPUT_STATISTICS + APPEARANCE_STATISTICS:
        mean, std = reference.get(f"{name}.mean"), reference.get(f"{name}.std")
        value = stats.get(name, math.nan)
        if mean is None or std is None or not math.isfinite(value):
            continue
        if abs(value - mean) > DEVIATIONS * max(std, STD_FLOORS[name]):
            digits = 1 if name == "instances" else 2
            reasons.append(f"{describe(name, value)} vs {mean:.{digits}f}±{std:.{digits}f}")
    return reasons


def describe(name: str, value: float) -> str:
    """A statistic in plain words: ``"11 instances"``, ``"foreground fraction 0.71"``."""
    if name == "instances":
        return f"{value:.0f} instances"
    return f"{_NAMES.get(name, name)} {value:.2f}"


def typical_size(area: float, aspect: float) -> str:
    """``"WxH"`` of an image with ``area`` pixels and ``aspect`` = W / H, rounded."""
    h = math.sqrt(area / aspect)
    return f"{round(area / h)}x{round(h)}"


def reference_summary(reference: Mapping[str, float] | None, network_size: tuple[int, int]) -> str:
    """What an image is compared with, in a few words: ``"validation images: about 128x128,
    foreground fraction 0.18±0.05, 7.9±2.1 instances, mean score 0.85±0.04"``, or without
    statistics ``"network input: 128x128"``."""
    if not reference:
        return f"network input: {network_size[1]}x{network_size[0]}"
    area = reference.get("image_area.mean", float(network_size[0] * network_size[1]))
    aspect = reference.get("aspect_ratio.mean", network_size[1] / network_size[0])
    parts = [f"about {typical_size(area, aspect)}"]
    for name in OUTPUT_STATISTICS:
        if f"{name}.mean" in reference:
            mean, std = reference[f"{name}.mean"], reference[f"{name}.std"]
            parts.append(
                f"{mean:.1f}±{std:.1f} instances"
                if name == "instances"
                else f"{_NAMES[name]} {mean:.2f}±{std:.2f}"
            )
    return "validation images: " + ", ".join(parts)
