"""Training of the FCN pre-processor (paper section 2, Figure 3).

The authors' recipes for it are ``experiment=kitti_preprocessor`` and
``experiment=cityscapes_preprocessor`` (momentum SGD, staircase learning-rate decay, batch 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryJaccardIndex, MulticlassAccuracy

from recattend.lit.loading import loadable
from recattend.lit.optim import adam, check_settings, decay_groups, mixed_precision
from recattend.models.preprocessor import Preprocessor, foreground_probability
from recattend.structures import ANGLE_IGNORE, NUM_ANGLE_CLASSES
from recattend.visualise import figure3


@loadable("preprocessor")
class PreprocessorModule(L.LightningModule):
    """Foreground BCE plus angle cross-entropy masked to foreground pixels.

    The foreground loss is the mean over all pixels; the angle loss is summed over ground-truth
    foreground pixels and divided by their count (zero for an image batch without foreground), as
    the authors normalised it; the two are added with weight 1. Metrics: foreground IoU at
    probability 0.5 and angle accuracy over foreground pixels.

    Every argument but ``net`` is a plain value saved as a hyper-parameter; ``net`` is saved as
    its :attr:`~recattend.models.Preprocessor.settings`, so checkpoints load under
    ``torch.load(weights_only=True)``.

    Args:
        image_size: the network input (H, W) (``${dataset.resolution}``); checked against the
            network's stride at construction.
        net: the FCN (:class:`~recattend.models.preprocessor.Preprocessor`, the ``module.net``
            node, built by Hydra), or its settings (a checkpoint's hyper-parameters); None: the
            default architecture.
        optimizer: "adam" or "sgd" (momentum 0.9, the authors' choice).
        lr: initial learning rate.
        lr_decay: multiplicative decay applied every ``lr_decay_steps`` optimizer steps (staircase).
        lr_decay_steps: steps between decays.
        weight_decay: L2 on conv and deconv kernels (the authors': 5e-5).
        compile: ``torch.compile`` the FCN (``module.compile=true``).
    """

    def __init__(
        self,
        *,
        image_size: Sequence[int],
        net: Preprocessor | Mapping[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        lr_decay: float = 0.96,
        lr_decay_steps: int = 5000,
        weight_decay: float = 5e-5,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(net, Preprocessor):  # a checkpoint's hyper-parameters
            net = Preprocessor(**dict(net or {}))
        self.save_hyperparameters(ignore=["net"])
        # Again with the network's settings, which loggers then record as well as checkpoints.
        self.save_hyperparameters({"net": net.settings, **self.hparams})
        check_settings(
            lr=lr, lr_decay=lr_decay, lr_decay_steps=lr_decay_steps, weight_decay=weight_decay
        )
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"module.optimizer='{optimizer}' must be 'adam' or 'sgd'")
        self.net = net
        if compile:
            self.net.compile()  # in place: the state_dict keys stay those of the eager network
        h, w = image_size
        stride = self.net.stride
        if h % stride or w % stride:
            valid = [_round_up(h, stride), _round_up(w, stride)]
            raise ValueError(
                f"dataset.resolution={[h, w]} cannot go through the pre-processor: both sides must "
                f"be divisible by its total stride {stride} (the product of "
                f"module.net.encoder_pools); e.g. use {valid}"
            )
        self.metrics = torch.nn.ModuleDict(
            {
                split: torch.nn.ModuleDict(
                    {
                        "fg_iou": BinaryJaccardIndex(),
                        "angle_acc": MulticlassAccuracy(
                            NUM_ANGLE_CLASSES, average="micro", ignore_index=ANGLE_IGNORE
                        ),
                    }
                )
                for split in ("val", "test")
            }
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> logits, see :class:`Preprocessor`."""
        return self.net(image)

    def losses(
        self, out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``loss_fg`` (foreground BCE, or semantic cross-entropy for the multi-class variant),
        ``loss_angle`` and their sum ``loss`` for one batch."""
        if "semantic" in out:
            if "semantic" not in batch:
                raise ValueError(
                    "module.net.num_classes > 0 needs a dataset with a semantic map (cityscapes, "
                    "coco); this one has none: set module.net.num_classes=0"
                )
            loss_fg = F.cross_entropy(out["semantic"], batch["semantic"])
        else:
            loss_fg = F.binary_cross_entropy_with_logits(out["foreground"], batch["foreground"])
        terms = {"loss_fg": loss_fg, "loss": loss_fg}
        if "angles" in out:
            target = batch["angles"]
            summed = F.cross_entropy(
                out["angles"], target, ignore_index=ANGLE_IGNORE, reduction="sum"
            )
            count = (target != ANGLE_IGNORE).sum().clamp(min=1)
            terms["loss_angle"] = summed / count
            terms["loss"] = loss_fg + terms["loss_angle"]
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.losses(self(batch["image"]), batch)
        n = len(batch["image"])
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        out = self(batch["image"])
        terms = self.losses(out, batch)
        n = len(batch["image"])
        self.log_dict({f"{split}/{k}": v for k, v in terms.items()}, batch_size=n, sync_dist=True)
        metrics = self.metrics[split]
        metrics["fg_iou"](foreground_probability(out), batch["foreground"].long())
        self.log(f"{split}/fg_iou", metrics["fg_iou"], batch_size=n, prog_bar=True)
        if "angles" in out:
            metrics["angle_acc"](out["angles"], batch["angles"])
            self.log(f"{split}/angle_acc", metrics["angle_acc"], batch_size=n, prog_bar=True)

    def figure(self, batch: dict[str, Any]) -> np.ndarray:
        """Figure 3 (:func:`recattend.visualise.figure3`): per image the input, foreground
        probability and colour-coded angle map, the columns named, the angle colours' wheel."""
        out = self(batch["image"])
        fg = foreground_probability(out)[:, 0]
        angles = (
            out["angles"].softmax(1)
            if "angles" in out
            else torch.zeros_like(fg)[:, None].expand(-1, 8, -1, -1)
        )
        return figure3(batch["image"], fg, angles)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = adam(self, hp.weight_decay, fused=not mixed_precision(self), lr=hp.lr)
        else:
            opt = torch.optim.SGD(decay_groups(self, hp.weight_decay), lr=hp.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_decay_steps, gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
