"""Cityscapes (paper Table 3): the instance metrics and the official instance-level AP.

:class:`CityscapesEvaluator` scores every test image at its original resolution with the label-map
metrics of :class:`~recattend.evaluation.instances.InstanceEvaluator`. When the post-processing
gives classes (each instance takes its majority class of a semantic pre-processor's map, or of the
external predictions of ``preprocessors.semantic_dir``), every image's instances, with their
Cityscapes label ids and scores, are also matched against the raw instanceIds map for
:class:`~recattend.metrics.CityscapesAP` (``ap``, ``ap50``, ``ap_<class>``); without classes
there is no AP key. With ``export`` each image with classes also gets its files in the
official result format under ``predictions/cityscapes``
(:func:`~recattend.evaluation.export.write_cityscapes_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recattend.data.cityscapes import label_ids
from recattend.evaluation.export import write_cityscapes_results
from recattend.evaluation.instances import InstanceEvaluator
from recattend.metrics import CityscapesAP
from recattend.postprocess import Instances


class CityscapesEvaluator(InstanceEvaluator):
    """Instance metrics at original resolution plus Cityscapes AP (module docstring).

    The datamodule must give ``original_target(meta)`` and ``original_instance_ids(meta)``, the
    (H, W) int64 instanceIds map (``label_id * 1000 + k`` on instances), as
    :class:`~recattend.data.CityscapesDataModule` does.

    Args:
        per_image: keep one row per image and write ``per_image.csv`` (as
            :class:`InstanceEvaluator`).

    Attributes:
        ap: the :class:`~recattend.metrics.CityscapesAP` of the current loop.
    """

    def __init__(self, per_image: bool = True) -> None:
        super().__init__(original_resolution=True, per_image=per_image)
        self.ap = CityscapesAP()

    def setup(self, datamodule: Any, output_dir: Path | None = None, export: bool = False) -> None:
        """See :meth:`InstanceEvaluator.setup`.

        Raises:
            ValueError: a datamodule without ``original_target`` or ``original_instance_ids``.
        """
        super().setup(datamodule, output_dir, export)
        if not hasattr(datamodule, "original_instance_ids"):
            raise ValueError(
                f"CityscapesEvaluator reads the raw instanceIds maps, but "
                f"{type(datamodule).__name__} has no original_instance_ids: use it with "
                "dataset=cityscapes"
            )

    def reset(self) -> None:
        super().reset()
        self.ap.reset()

    def process_instances(self, meta: dict[str, Any], instances: Instances) -> None:
        """Scores the image's classified instances for AP and exports its result files; an image
        without classes adds nothing here."""
        super().process_instances(meta, instances)
        labels, scores, classes = instances.labels, instances.scores, instances.classes
        if classes is None:
            return
        ids = label_ids(classes)
        folder = self.predictions_dir
        if folder is not None:
            write_cityscapes_results(
                labels.cpu().numpy(), scores.tolist(), ids.tolist(), str(meta["id"]),
                folder / "cityscapes",
            )  # fmt: skip
        instance_ids = torch.arange(1, len(scores) + 1, device=labels.device)
        gt_ids = torch.from_numpy(self.datamodule.original_instance_ids(meta)).to(labels.device)
        self.ap.update([labels[None] == instance_ids[:, None, None]], [ids], [scores], [gt_ids])

    def evaluate(self) -> dict[str, float | Tensor]:
        """The instance metrics, and the AP keys when any image had classes."""
        values = super().evaluate()
        if self.ap.update_count:
            values.update(self.ap.compute())
        return values

    def _to(self, device: torch.device) -> None:
        if device != self._device:
            self.ap.to(device)
        super()._to(device)
