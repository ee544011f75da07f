"""The Lightning callback that runs the evaluators on the validation epochs and the test loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from recattend.evaluation.base import DatasetEvaluator
from recattend.evaluation.gallery import PredictionGallery
from recattend.evaluation.instances import InstanceEvaluator
from recattend.evaluation.per_image import FILENAME
from recattend.evaluation.statistics import StatisticsRecorder


class Evaluate(L.Callback):
    """Feed each validation / test batch's outputs to an evaluator and log its metrics.

    ``validation_step`` and ``test_step`` return the module's forward outputs (a dict with at
    least ``masks`` (B, T, h, w) and ``scores`` (B, T)); the module gives its post-processing as
    ``pl_module.postprocess`` (:class:`~recattend.postprocess.PostProcess`). At each epoch's end
    the metrics are logged as ``val/<name>`` (also on the progress bar) or ``test/<name>``, with
    ``sync_dist=False``: the evaluators combine the ranks themselves. Lightning's sanity check is a
    validation epoch like any other (its logged values are discarded by Lightning).

    Each validation also records simple statistics of the module's post-processed outputs
    (:mod:`recattend.evaluation.statistics`: foreground fraction, instance count, mean score,
    image size) and, except in the sanity check, gives their summary to the module as
    ``pl_module.output_statistics`` (the segmenter saves it in its checkpoints; ``predict.py``
    warns about images far from it).

    With a W&B logger whose ``log_predictions`` is N > 0, the test split's first N images per
    rank and their predictions go to W&B as a table, with ``per_image.csv`` as an artifact
    (:mod:`recattend.evaluation.gallery`).

    Args:
        test: the test split's evaluator (the dataset's benchmark: ``conf/dataset/evaluator``).
        val: the validation evaluator; default instance metrics at network resolution, no
            per-image rows.
        export: write the test predictions (``eval.py export=true``) under
            ``trainer.default_root_dir / "predictions"``; validation never exports.

    Raises:
        TypeError: ``test`` is not an evaluator (e.g. None: the dataset config names none).
    """

    def __init__(
        self,
        test: DatasetEvaluator,
        val: DatasetEvaluator | None = None,
        export: bool = False,
    ) -> None:
        if not isinstance(test, DatasetEvaluator):
            raise TypeError(
                f"Evaluate(test={test!r}): give the test split's evaluator; each dataset config "
                "names its benchmark's (dataset/evaluator=instances, cvppp, kitti, cityscapes, "
                "coco)"
            )
        self.test = test
        self.val = (
            val
            if val is not None
            else InstanceEvaluator(original_resolution=False, per_image=False)
        )
        self.export = export
        self.statistics = StatisticsRecorder()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Bind both evaluators to the run's datamodule and folder, so that a test evaluator that
        does not fit the data fails before training."""
        root = Path(trainer.default_root_dir)
        datamodule = getattr(trainer, "datamodule", None)
        self.val.setup(datamodule, root, False)
        self.test.setup(datamodule, root, self.export)
        shown = max((getattr(lg, "log_predictions", 0) for lg in _wandb(trainer)), default=0)
        if shown and isinstance(self.test, InstanceEvaluator):
            self.test.gallery = PredictionGallery(shown)

    # ------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val.reset()
        self.statistics.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        postprocess = self.statistics.recording(pl_module.postprocess, batch)
        self.val.process(batch, _checked(outputs, "validation_step"), postprocess)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _log(pl_module, self.val, "val")
        statistics = self.statistics.summary()  # a collective: on every rank
        # The sanity check sees a few batches only: keep the last full validation's summary.
        if not trainer.sanity_checking and statistics["images"]:
            pl_module.output_statistics = statistics

    # ------------------------------------------------------------------------------------- test
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.test.reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.test.process(batch, _checked(outputs, "test_step"), pl_module.postprocess)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _log(pl_module, self.test, "test")
        gallery = getattr(self.test, "gallery", None)
        if gallery is not None:
            gallery.log(_wandb(trainer), self.test.output_dir, FILENAME)


def _wandb(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _checked(outputs: Any, step: str) -> dict[str, Any]:
    """The step's outputs, or an error saying what the step must return."""
    if not isinstance(outputs, dict) or "masks" not in outputs or "scores" not in outputs:
        raise TypeError(
            f"{step} returned {type(outputs).__name__}; the Evaluate callback needs the module's "
            "forward outputs, a dict with masks (B, T, h, w) and scores (B, T): "
            'return self(batch["image"])'
        )
    return outputs


def _log(pl_module: L.LightningModule, evaluator: DatasetEvaluator, split: str) -> None:
    """Log the evaluator's metrics under ``<split>/`` (val also on the progress bar)."""
    values = evaluator.evaluate()
    pl_module.log_dict(
        {f"{split}/{k}": v for k, v in values.items()}, prog_bar=split == "val", sync_dist=False
    )
