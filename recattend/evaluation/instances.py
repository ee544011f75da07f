"""The label-map instance metrics of every benchmark: CVPPP, KITTI and the synthetic data.

:class:`InstanceEvaluator` scores each image's post-processed label map against its ground truth
with every metric of :func:`recattend.metrics.instance_metrics`: the official SBD, DiC and |DiC|,
rec-attend's SBD (on the timestep map), FgBgDice and the KITTI coverage scores (MWCov, MUCov,
AvgFP, AvgFN), each as a mean and population std over images (``sbd``, ``sbd_std``, ``dic``,
``abs_dic``, ``sbd_recattend``, ``fg_dice``, ``mwcov``, ``mucov``, ``fp``, ``fn``, ... ), and the
class-agnostic mask AP over images (``mask_ap``, ``mask_ap50``; :mod:`recattend.metrics.mask_ap`),
which stands in for the Cityscapes and COCO AP at validation.

Two resolutions:

* network resolution (``original_resolution=False``): the batch's own instance slots are the
  ground truth, and the post-processing's ``min_size`` counts original pixels through each
  sample's ``orig_size`` (:func:`~recattend.evaluation.targets.pixel_area`). Validation of every
  dataset, and the test split of generated data.
* original resolution (``original_resolution=True``): each image is post-processed at its ground
  truth's original size, read again from its file (``datamodule.original_target(meta)``), as the
  benchmarks score. The test split of file datasets (CVPPP, KITTI, Cityscapes, COCO).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recattend.evaluation.base import DatasetEvaluator
from recattend.evaluation.distributed import all_gather_objects, is_global_zero
from recattend.evaluation.export import write_label_png
from recattend.evaluation.gallery import PredictionGallery
from recattend.evaluation.per_image import FILENAME, image_row, write_rows
from recattend.evaluation.targets import gt_label_map, pixel_area
from recattend.metrics import count_instances, instance_metrics
from recattend.metrics.mask_ap import MaskAP
from recattend.postprocess import Instances, image_outputs


class InstanceEvaluator(DatasetEvaluator):
    """Instance metrics of label maps (module docstring), optionally per image and exported.

    Args:
        original_resolution: score at the ground truth's original size, read again with
            ``datamodule.original_target(meta)`` ((H, W) integer label map); False: at network
            resolution against the batch's ``masks``.
        per_image: keep one row per image (:mod:`recattend.evaluation.per_image`); ``evaluate()``
            writes them, all ranks', to ``output_dir / "per_image.csv"`` on global rank 0.

    With ``export`` (:meth:`setup`) every image's label map is written to
    ``output_dir / "predictions" / "labels" / "<id>.png"`` (:func:`write_label_png`), at the
    resolution scored.

    Attributes:
        metrics: the torchmetrics of :func:`~recattend.metrics.instance_metrics`, on the device
            of the last batch.
        mask_ap: the :class:`~recattend.metrics.mask_ap.MaskAP` of the instances' scores.
        rows: this rank's per-image rows of the current loop (``per_image`` only).
        gallery: where the scored images and predictions go for the W&B table of the test
            split (:mod:`recattend.evaluation.gallery`), set by the
            :class:`~recattend.evaluation.Evaluate` callback; None: nowhere.
    """

    def __init__(self, *, original_resolution: bool, per_image: bool) -> None:
        self.original_resolution = bool(original_resolution)
        self.per_image = bool(per_image)
        self.metrics = instance_metrics()
        self.mask_ap = MaskAP()
        self.rows: list[dict[str, Any]] = []
        self.gallery: PredictionGallery | None = None
        self._device = torch.device("cpu")

    def setup(self, datamodule: Any, output_dir: Path | None = None, export: bool = False) -> None:
        """See :meth:`DatasetEvaluator.setup`.

        Raises:
            ValueError: ``original_resolution`` with a datamodule that has no
                ``original_target``.
        """
        super().setup(datamodule, output_dir, export)
        if self.original_resolution and not hasattr(datamodule, "original_target"):
            raise ValueError(
                f"{type(self).__name__}(original_resolution=true) reads each image's ground truth "
                f"again at its original size, but {type(datamodule).__name__} has no "
                "original_target: score it at network resolution "
                "(original_resolution=false, evaluator=instances)"
            )

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.mask_ap.reset()
        self.rows = []
        if self.gallery is not None:
            self.gallery.reset()

    def process(
        self,
        batch: dict[str, Any],
        outputs: dict[str, Tensor],
        postprocess: Callable[..., list[Instances]],
    ) -> None:
        self._to(batch["image"].device)
        if self.original_resolution:
            for i, meta in enumerate(batch["meta"]):
                target = self.datamodule.original_target(meta)
                target = torch.from_numpy(target).to(self._device)
                result = postprocess(
                    image_outputs(outputs, i), size=tuple(target.shape), **self._semantic([meta])
                )[0]
                self._update([meta], result.timesteps[None], result.labels[None], target[None])
                self.mask_ap.update(result.labels[None], [result.scores], target[None])
                self.process_instances(meta, result)
                if self.gallery is not None:
                    gt_count = int(count_instances(target))
                    self.gallery.add(meta["id"], batch["image"][i], result.labels, target, gt_count)
            return
        results = postprocess(
            outputs, pixel_area=pixel_area(batch), **self._semantic(batch["meta"])
        )
        timesteps = torch.stack([r.timesteps for r in results])
        pred = torch.stack([r.labels for r in results])
        target = gt_label_map(batch["masks"])
        self._update(batch["meta"], timesteps, pred, target, batch["num_instances"])
        self.mask_ap.update(pred, [r.scores for r in results], target)
        for i, (meta, result) in enumerate(zip(batch["meta"], results, strict=True)):
            self.process_instances(meta, result)
            if self.gallery is not None:
                count = int(batch["num_instances"][i])
                self.gallery.add(meta["id"], batch["image"][i], result.labels, target[i], count)

    def process_instances(self, meta: dict[str, Any], instances: Instances) -> None:
        """One image's post-processed instances, after they were scored: writes its label PNG
        when exporting. Subclasses add their own records (call this one too).

        Args:
            meta: the sample's ``meta`` (``id``, ...).
            instances: at the resolution scored: ``labels`` (H, W) int64 0..K, ``scores`` (K,),
                ``classes`` (K,) train ids or None.
        """
        folder = self.predictions_dir
        if folder is None:
            return
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        write_label_png(instances.labels.cpu().numpy(), folder / "labels" / f"{meta['id']}.png")

    def evaluate(self) -> dict[str, float | Tensor]:
        """Means and stds of every instance metric over all ranks' images; with ``per_image``,
        also gathers the rows and writes ``per_image.csv`` (global rank 0, with an output
        folder and at least one row)."""
        values: dict[str, float | Tensor] = {}
        for metric in self.metrics.values():
            values.update(metric.compute())
        values.update(self.mask_ap.compute())
        if self.per_image:
            rows = all_gather_objects(self.rows)
            if self.output_dir is not None and is_global_zero():
                write_rows(rows, self.output_dir / FILENAME)
        return values

    def _semantic(self, metas: list[dict[str, Any]]) -> dict[str, list[Tensor]]:
        """``{"semantic": maps}`` for the post-processing when the datamodule has external
        semantic predictions of these samples (``semantic_map(meta)``: Cityscapes with
        ``preprocessors.semantic_dir``), else ``{}``. The maps are (H_i, W_i) int64 train ids at
        each image's original size, on the data's device."""
        read = getattr(self.datamodule, "semantic_map", None)
        maps = [read(meta) for meta in metas] if read is not None else []
        if not maps or any(m is None for m in maps):
            return {}
        return {"semantic": [torch.from_numpy(m).to(self._device) for m in maps]}

    def _to(self, device: torch.device) -> None:
        """Keep the metric states on the data's device (DDP gathers them there); subclasses
        with metrics of their own move them too."""
        if device != self._device:
            self._device = device
            self.metrics.to(device)
            self.mask_ap.to(device)

    def _update(
        self,
        metas: list[dict[str, Any]],
        timesteps: Tensor,
        pred: Tensor,
        target: Tensor,
        counts: Tensor | None = None,
    ) -> None:
        """Update every metric with a batch of (B, H, W) maps.

        Args:
            metas: the B samples' ``meta``.
            timesteps: (B, H, W) int64 slot maps (rec-attend's SBD reads them).
            pred: (B, H, W) int64 final label maps.
            target: (B, H, W) integer ground-truth label maps.
            counts: (B,) true ground-truth instance counts when ``target`` may hold fewer (the
                batch keeps at most T - 1 instances; DiC uses them); None: counted in ``target``.
        """
        if counts is None:
            counts = torch.stack([count_instances(g) for g in target])
        for name, metric in self.metrics.items():
            if name == "dic":
                metric.update(pred, target, counts)
            else:
                metric.update(timesteps if name == "sbd_recattend" else pred, target)
        if self.per_image:
            for meta, t, p, g, n in zip(metas, timesteps, pred, target, counts, strict=True):
                self.rows.append(image_row(meta["id"], t, p, g, n))
