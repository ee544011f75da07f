"""The evaluator interface (after detectron2's ``DatasetEvaluator``): reset, process, evaluate.

An evaluator scores one loop (a validation epoch or the test split) from the module's outputs. It
never runs the network: the :class:`~recattend.evaluation.callback.Evaluate` callback hands it
each batch with the outputs ``validation_step`` / ``test_step`` returned, and the module's
post-processing (:class:`~recattend.postprocess.PostProcess`, or a callable with its call
signature), so validation, test and ``predict.py`` post-process alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from recattend.postprocess import Instances


class DatasetEvaluator(ABC):
    """Scores one evaluation loop; one instance serves every epoch of its split.

    Call order: :meth:`setup` once, then per loop :meth:`reset`, :meth:`process` for each batch,
    :meth:`evaluate` once (on every rank under DDP: it may gather across ranks).

    Attributes:
        datamodule: the run's datamodule (None until :meth:`setup`, or when the trainer was given
            plain dataloaders).
        output_dir: the run folder (``trainer.default_root_dir``): files such as
            ``per_image.csv`` and ``predictions/`` go there; None writes nothing.
        export: also write the predictions under ``output_dir / "predictions"`` (``eval.py
            export=true``).
    """

    datamodule: Any = None
    output_dir: Path | None = None
    export: bool = False

    def setup(self, datamodule: Any, output_dir: Path | None = None, export: bool = False) -> None:
        """Bind the evaluator to a run, once before its loops.

        Args:
            datamodule: the run's datamodule; an evaluator that reads more than the batch
                (original-resolution ground truth, annotation files) checks here that it can.
            output_dir: the run folder, or None (no file is written).
            export: write the predictions too (needs ``output_dir``).

        Raises:
            ValueError: the datamodule lacks what this evaluator reads, or ``export`` without an
                ``output_dir``; the message names the evaluator and what is missing.
        """
        if export and output_dir is None:
            raise ValueError(f"{type(self).__name__}: export=true needs an output folder")
        self.datamodule = datamodule
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.export = export

    @property
    def predictions_dir(self) -> Path | None:
        """``output_dir / "predictions"`` when exporting, else None."""
        if not self.export or self.output_dir is None:
            return None
        return self.output_dir / "predictions"

    @abstractmethod
    def reset(self) -> None:
        """Forget every image seen: called before each validation epoch and test loop."""

    @abstractmethod
    def process(
        self,
        batch: dict[str, Any],
        outputs: dict[str, Tensor],
        postprocess: Callable[..., list[Instances]],
    ) -> None:
        """Add one batch.

        Args:
            batch: the collated batch on the module's device: ``image`` (B, C, h, w) float,
                ``masks`` (B, T, h, w) float {0, 1} instance slots, ``num_instances`` (B,) int64,
                ``meta`` a list of B dicts (``id``, ``orig_size`` (H, W), and the dataset's own
                keys, e.g. ``label``, ``image_id``).
            outputs: the module's forward outputs for ``batch["image"]``: at least ``masks``
                (B, T, h, w) and ``scores`` (B, T), and the pre-processor's maps when there is
                one (:meth:`~recattend.models.SegmenterNetwork.predict`).
            postprocess: the module's post-processing, called as
                :meth:`PostProcess.__call__ <recattend.postprocess.PostProcess.__call__>`
                ``(outputs, size=None, pixel_area=1.0, semantic=None)`` -> one
                :class:`~recattend.postprocess.Instances` per image, on all the batch's images
                at once or on them one by one in order
                (:func:`~recattend.postprocess.image_outputs`).
        """

    @abstractmethod
    def evaluate(self) -> dict[str, float | Tensor]:
        """The loop's metrics, all ranks combined: metric name (no ``val/`` or ``test/`` prefix)
        -> 0-d tensor or float. Called on every rank, after the last :meth:`process`."""
