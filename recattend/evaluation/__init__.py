"""Evaluation of the segmenter, one evaluator per benchmark family, outside the LightningModule.

The interface (:class:`DatasetEvaluator`, after detectron2's): ``setup(datamodule, output_dir,
export)`` once, then per loop ``reset()``, ``process(batch, outputs, postprocess)`` for each batch
and ``evaluate()`` -> ``{metric name: value}`` with every rank's images combined. An evaluator
never runs the network: the :class:`Evaluate` callback hands it each batch with the outputs that
``validation_step`` / ``test_step`` returned and the module's own post-processing
(``SegmenterModule.postprocess``, :class:`~recattend.postprocess.PostProcess`), and logs its
metrics as ``val/<name>`` and ``test/<name>``.

The families (``conf/dataset/evaluator``):

* :class:`InstanceEvaluator`: the label-map metrics of :func:`recattend.metrics.instance_metrics`
  (SBD, DiC / |DiC|, rec-attend's SBD, FgBgDice, MWCov / MUCov / AvgFP / AvgFN), at network
  resolution (validation of every dataset; the test split of generated data) or at the ground
  truth's original resolution read again from file (the test split of CVPPP and KITTI), with
  optional ``per_image.csv`` rows.
* :class:`CityscapesEvaluator`: those at original resolution, plus the official Cityscapes AP when
  the post-processing gives classes.
* :class:`CocoEvaluator`: those at original resolution, plus class-agnostic COCO segm AP.

With ``export`` (``eval.py export=true``) the test predictions are written under
``<run folder>/predictions``: ``labels/<id>.png`` for every image, ``cityscapes/`` in the official
result format, ``coco_results.json`` (:mod:`recattend.evaluation.export` has the writers, which
``predict.py`` uses too).
"""

from recattend.evaluation.base import DatasetEvaluator
from recattend.evaluation.callback import Evaluate
from recattend.evaluation.cityscapes import CityscapesEvaluator
from recattend.evaluation.coco import CocoEvaluator
from recattend.evaluation.instances import InstanceEvaluator
from recattend.evaluation.targets import gt_label_map, pixel_area

__all__ = [
    "CityscapesEvaluator",
    "CocoEvaluator",
    "DatasetEvaluator",
    "Evaluate",
    "InstanceEvaluator",
    "gt_label_map",
    "pixel_area",
]
