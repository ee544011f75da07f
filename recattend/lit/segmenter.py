"""Training of the recurrent attention segmenter (paper sections 2.5-2.6).

Memory: no gradient crosses steps (the canvas is detached, the glimpse LSTM restarts), so the
steps are coupled only through the non-differentiable matching and the score loss. By default all
T steps' graphs stay alive until the joint loss (eq. 21) is known; ``recompute`` trades
time for memory by recomputing parts of each step in the backward pass, with the same gradient and
BatchNorm statistics updated once per step (docs/model.md, "Memory and speed", has the figures).

Training procedure (paper 2.6), driven by two callbacks that set attributes of the module:

* :class:`~recattend.callbacks.BootstrapStages` sets ``stage``: ``"box"`` trains the box network
  alone, the canvas always receiving (noised) ground truth, with the soft box IoU and score losses;
  ``"full"`` trains everything with the joint loss (eq. 21). It also sets ``stage_overrides``, the
  stage's own learning-rate settings (read by :meth:`SegmenterModule.configure_optimizers`) and
  ground-truth box padding (``box_min_pad``), and may re-initialise the score head at a switch
  (:meth:`SegmenterModule.reset_score_head`).
* :class:`~recattend.callbacks.ScheduledSampling` sets ``teacher_forcing.probabilities``: per
  kind (``box``, ``mask``) the probability at each timestep of feeding ground truth instead of the
  prediction (:mod:`recattend.lit.rollout` picks and noises what is fed). Without it
  the model always reads its own predictions.

Evaluation is not done here: ``validation_step`` and ``test_step`` return the network's outputs,
which the :class:`~recattend.evaluation.Evaluate` callback hands to the dataset's evaluator
together with :attr:`SegmenterModule.postprocess`, the one post-processing. The non-finite
guard's logic lives in :mod:`recattend.lit.nonfinite`; this module keeps its hooks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from recattend.lit.loading import load_module, loadable
from recattend.lit.nonfinite import NonFiniteGuard
from recattend.lit.optim import adam, check_settings, lr_factor, mixed_precision
from recattend.lit.rollout import JITTERS, MODES, TeacherForcing, rollout
from recattend.losses import BOX_IOUS, box_stage_losses, segmenter_losses
from recattend.models.network import SegmenterNetwork
from recattend.models.segmenter import StepOutput
from recattend.postprocess import Instances, PostProcess, image_outputs
from recattend.visualise import figure1

log = logging.getLogger(__name__)

STAGES = ("box", "full")
LOSSES_RANGE = "recattend.losses"  # the profiler range of the losses (make bench times it)
RECOMPUTE = (False, "full_resolution", True)


def _stack(outs: list[StepOutput], key: str) -> Tensor | None:
    """The T steps' ``key`` as one (B, T, ...) tensor of at least float32 (bf16-mixed outputs are
    lifted, float64 kept), or None where the steps have none."""
    values = [getattr(out, key) for out in outs]
    if values[0] is None:
        return None
    return torch.stack(values, 1).to(torch.promote_types(values[0].dtype, torch.float32))


@loadable("segmenter")
class SegmenterModule(L.LightningModule):
    """The recurrent segmenter with its joint loss, teacher forcing, optimiser and inference.

    Every argument but ``net`` is a plain value saved as a hyper-parameter; ``net`` is saved as
    its :attr:`~recattend.models.network.SegmenterNetwork.settings`, so checkpoints load with
    ``weights_only=True`` and rebuild the network without the pre-processor's file.

    Args:
        net: the network (the ``model`` config group, built by Hydra), or its ``settings`` (a
            checkpoint's hyper-parameters).
        lr, lr_decay, lr_decay_steps: Adam (eps 1e-7) with a staircase decay: x ``lr_decay``
            every ``lr_decay_steps`` optimiser steps.
        lr_warmup_steps: the learning rate rises linearly from ``lr / lr_warmup_steps`` to
            ``lr`` over this many steps (0: none); like the decay, counted from the start of each
            bootstrap stage, whose fresh Adam it eases in.
        adam_betas: Adam's (beta1, beta2).
        weight_decay: L2 on weight matrices and kernels (not biases, BatchNorm or gains).
        grad_clip: element-wise gradient clipping to [-grad_clip, grad_clip] (0: none).
        lambda_box, lambda_score: the loss weights of eq. (21) (paper: 1, 1).
        box_min_pad: minimum padding (px) of ground-truth boxes for the box loss and the
            boxes fed by teacher forcing; a bootstrap stage may set its own (:attr:`box_min_pad`).
        box_iou: the box IoU of the box loss, its matching and teacher forcing's choice of the
            instance to feed (:mod:`recattend.losses`): ``"soft"`` (eq. 25-26, the paper's) or
            ``"coordinates"`` (the coordinate IoU of the predicted and padded ground-truth boxes,
            the authors' Cityscapes run).
        fed_box_jitter: the size that scales the centre shift of a box fed by teacher forcing
            (:mod:`recattend.lit.rollout`): ``"padded"`` (the padded box's) or
            ``"tight"`` (the ground-truth instance's own box, the authors').
        teacher_forcing: how the scheduled sampling's probabilities are used in the full stage
            (:mod:`recattend.lit.rollout`): ``"scheduled"`` (the paper's training),
            ``"ground_truth"`` (the paper's "no scheduled sampling" ablation: the ground-truth
            canvas at every step) or ``"predictions"`` (never any ground truth).
        postprocess: the post-processing (:class:`~recattend.postprocess.PostProcess`, the
            ``module.postprocess`` node) of validation, test, ``eval.py`` and ``predict.py``, or
            its settings (a checkpoint's hyper-parameters); None: the authors' defaults. Its
            ``stop_rule`` also sets how :meth:`forward` runs: ``"first_below"`` stops each image
            at its first s_t < ``stop_score``.
        recompute: what the backward pass recomputes instead of keeping in memory:
            ``False`` nothing (all T steps' activations, the fastest); ``"full_resolution"``
            only the box CNN's layers at the input resolution, the largest activations;
            ``True`` each whole step (the memory of one step's activations, a third slower).
            ``make bench`` gives the figures and peak memory of each.
        compile: ``torch.compile`` the step functions (``locate``, ``segment``) and the
            pre-processor. Each step has its own BatchNorm, so Dynamo compiles one graph per
            timestep and mode (training with or without a teacher-forced box, inference); the
            entry points raise Dynamo's recompile limit for them at start-up
            (:func:`recattend.ops.configure`). The first compile is slow (~1.5 min on 2 CPU
            cores), the next ones reuse its kernels.

    A training step with NaN or inf in its batch, outputs (masks, scores, soft boxes), loss or
    gradients stops the run on every DDP process together (:mod:`recattend.lit.nonfinite`): the
    state from before the step is saved in ``checkpoints/nonfinite-step<step>.ckpt`` and a
    :class:`FloatingPointError` names the step, what was non-finite and the likely cause.
    """

    def __init__(
        self,
        *,
        net: SegmenterNetwork | Mapping[str, Any],
        lr: float = 1e-3,
        lr_decay: float = 0.9,
        lr_decay_steps: int = 5000,
        lr_warmup_steps: int = 0,
        adam_betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 5e-5,
        grad_clip: float = 1.0,
        lambda_box: float = 1.0,
        lambda_score: float = 1.0,
        box_min_pad: float = 11.0,
        box_iou: str = "soft",
        fed_box_jitter: str = "padded",
        teacher_forcing: str = "scheduled",
        postprocess: PostProcess | Mapping[str, Any] | None = None,
        recompute: bool | str = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_settings(
            lr=lr, lr_decay=lr_decay, lr_decay_steps=lr_decay_steps,
            lr_warmup_steps=lr_warmup_steps, weight_decay=weight_decay, adam_betas=adam_betas,
        )  # fmt: skip
        if recompute not in RECOMPUTE:
            raise ValueError(
                f"module.recompute={recompute!r}: use true (recompute whole steps), "
                "full_resolution (recompute the box CNN's full-resolution layers) or false "
                "(recompute nothing)"
            )
        for key, value, choices in (
            ("box_iou", box_iou, BOX_IOUS),
            ("fed_box_jitter", fed_box_jitter, JITTERS),
            ("teacher_forcing", teacher_forcing, MODES),
        ):
            if value not in choices:
                raise ValueError(f"module.{key}={value!r}: use one of {list(choices)}")
        if not isinstance(net, SegmenterNetwork):  # a checkpoint's hyper-parameters
            net = SegmenterNetwork.from_settings(net)
        if not isinstance(postprocess, PostProcess):  # a checkpoint's hyper-parameters
            postprocess = PostProcess().replace(postprocess)
        self.save_hyperparameters(ignore=["net", "postprocess"])
        # Again with the network's and post-processing's settings as plain values, which loggers
        # then record as well as checkpoints.
        self.save_hyperparameters(
            {"net": net.settings, "postprocess": dataclasses.asdict(postprocess), **self.hparams}
        )
        self.net = net
        if compile:
            if torch._dynamo.config.recompile_limit < 6 * net.steps:  # read, never set, here
                log.warning(
                    "module.compile=true: Dynamo's recompile limit (%d) is below the %d graphs of "
                    "T = %d steps, so later steps would run eagerly; call "
                    "recattend.ops.configure(compile_steps=%d) at start-up (the entry points do)",
                    torch._dynamo.config.recompile_limit, 6 * net.steps, net.steps, net.steps,
                )  # fmt: skip
            self.net.segmenter.locate = torch.compile(self.net.segmenter.locate)
            self.net.segmenter.segment = torch.compile(self.net.segmenter.segment)
            if self.net.preprocessor is not None:
                self.net.preprocessor.compile()
        self.stage = "full"  # training stage, set by BootstrapStages (module docstring)
        self.stage_overrides: dict[str, float] = {}  # the stage's own settings, idem
        self.end_epoch = False  # end the epoch before this batch (a stage's batch size, idem)
        box_net = self.net.segmenter.box_net  # the model's pooling, for use_box_pools
        self._box_pools = list(box_net.cnn.pools) if box_net is not None else []
        # Its probabilities set by ScheduledSampling.
        self.teacher_forcing = TeacherForcing(box_iou, fed_box_jitter, teacher_forcing)
        self.nonfinite = NonFiniteGuard()
        # The last validation's output statistics, set by the Evaluate callback
        # (recattend.evaluation.statistics); saved in checkpoints for predict.py's warnings.
        self.output_statistics: dict[str, float] | None = None
        self.postprocess = postprocess
        if postprocess.foreground and self.net.preprocessor is None:
            log.warning(
                "module.postprocess.foreground=true but there is no pre-processor: the AND with "
                "its foreground is skipped. The authors' pipeline trains one first (python "
                "train.py module=preprocessor dataset=...) and passes model.preprocessor.ckpt_path"
            )

    # ----------------------------------------------------------------------------------- training
    @property
    def box_min_pad(self) -> float:
        """Minimum ground-truth box padding (px) in the current stage: the stage's own value
        (``callbacks.bootstrap.stages[i].box_min_pad``) or ``module.box_min_pad``."""
        return float(self.stage_overrides.get("box_min_pad", self.hparams.box_min_pad))

    def reset_score_head(self) -> None:
        """Give the score head (eq. 20) fresh initial weights, e.g. when the full stage begins.

        Under DDP every rank draws its own; rank 0's are then broadcast so the replicas agree
        (DDP synchronises parameters only when it wraps the model).
        """
        head = self.net.segmenter.score_head
        head.reset_parameters()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in head.parameters():
                torch.distributed.broadcast(parameter.data, src=0)

    def supports_stage(self, stage: str) -> bool:
        """Whether this model can train in ``stage`` (no box stage without a box network)."""
        return stage == "full" or (stage == "box" and self.net.segmenter.box_net is not None)

    def use_box_pools(self, pools: Sequence[int] | None) -> None:
        """Pool the box CNN with ``pools`` (a bootstrap stage's ``box_pools``; None: the model's
        ``model.segmenter.box_pools``). The authors' KITTI box stage pooled 1,2,1,2,1,2,2,2 and
        their full model 2,2,1,2,1,2,1,2: one total stride, so the same weights serve both.

        Raises:
            ValueError: a pattern of another length or total stride than the model's.
        """
        box_net = self.net.segmenter.box_net
        if box_net is None:
            return
        pools = list(pools) if pools is not None else list(self._box_pools)
        if len(pools) != len(self._box_pools) or math.prod(pools) != math.prod(self._box_pools):
            raise ValueError(
                f"bootstrap stage box_pools={pools} must have {len(self._box_pools)} entries "
                f"and the total stride {math.prod(self._box_pools)} of model.segmenter.box_pools="
                f"{self._box_pools}, so that the box network's weights serve every stage"
            )
        box_net.cnn.pools = pools

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> int | None:
        # -1 is Lightning's way to end the epoch here, without training on this batch.
        if self.end_epoch:
            self.end_epoch = False
            return -1
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """The joint loss (eq. 21; the box stage's losses in stage ``box``) of the T steps.

        A non-finite batch, rollout or loss stops training on every process together, before
        the matching (:mod:`recattend.lit.nonfinite`).
        """
        self.nonfinite.begin(self)
        outs = rollout(
            self.net,
            batch,
            self.stage,
            self.box_min_pad,
            self.hparams.box_iou,
            self.teacher_forcing if self.training else None,
            self.hparams.recompute,
            self.hparams.compile,
        )
        # The losses in float32 whatever the precision (bf16-mixed: sums over H x W pixels).
        stacked = {
            kind: _stack(outs, key)
            for kind, key in (("masks", "mask"), ("scores", "score"), ("soft_boxes", "soft_box"))
        }
        edges = _stack(outs, "box_edges")
        terms = self.nonfinite.losses(
            self, batch, stacked, lambda: self._losses(batch, edges, **stacked)
        )
        n = batch["image"].shape[0]
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items() if k != "match"}, prog_bar=True, batch_size=n
        )
        if self._trainer is not None:  # the current stage's learning rate
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return terms["loss"]

    def _losses(
        self,
        batch: dict[str, Any],
        box_edges: Tensor,
        masks: Tensor | None,
        scores: Tensor,
        soft_boxes: Tensor | None,
    ) -> dict[str, Tensor]:
        """The current stage's loss terms from the stacked (B, T, ...) outputs, in the profiler
        range :data:`LOSSES_RANGE`."""
        with torch.profiler.record_function(LOSSES_RANGE):
            hp = self.hparams
            settings = {
                "lambda_box": hp.lambda_box,
                "lambda_score": hp.lambda_score,
                "min_pad": self.box_min_pad,
                "box_edges": box_edges,
                "box_iou": hp.box_iou,
            }
            if self.stage == "box":
                return box_stage_losses(
                    soft_boxes, scores, batch["boxes"], batch["num_instances"], **settings
                )
            return segmenter_losses(
                masks,
                scores,
                soft_boxes,
                batch["masks"],
                batch["boxes"],
                batch["num_instances"],
                **settings,
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The guard's gradient check (:meth:`NonFiniteGuard.check_gradients`)."""
        self.nonfinite.check_gradients(self, optimizer)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Element-wise clipping to [-grad_clip, grad_clip] (``clip_by_value``)."""
        if self.hparams.grad_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="value"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = {**self.hparams, **self.stage_overrides}  # the bootstrap stage's settings win
        opt = adam(
            self,
            hp["weight_decay"],
            not mixed_precision(self),
            lr=hp["lr"],
            eps=1e-7,
            betas=tuple(hp["adam_betas"]),
        )
        lr_factor(hp["lr_warmup_steps"], hp["lr_decay"], hp["lr_decay_steps"])  # checked now

        def factor(k: int) -> float:
            # The stage's schedule read at each step: a resumed run builds its optimiser before
            # its bootstrap stage is restored, and must still follow that stage's decay.
            now = {**self.hparams, **self.stage_overrides}
            return lr_factor(now["lr_warmup_steps"], now["lr_decay"], now["lr_decay_steps"])(k)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.output_statistics is not None:  # plain floats: loads with weights_only=True
            checkpoint["output_statistics"] = dict(self.output_statistics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming restores the last validation's output statistics."""
        if "output_statistics" in checkpoint:
            self.output_statistics = dict(checkpoint["output_statistics"])

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        weights_only: bool = True,
        **overrides: Any,
    ) -> SegmenterModule:
        """The module a checkpoint holds, also one written before the network was one node
        (:func:`~recattend.lit.loading.load_module`); ``overrides`` replace saved settings.

        Raises:
            ValueError: ``weights_only=False`` (recattend checkpoints hold plain values only), or
                the checkpoint does not fit (named by :func:`load_module`).
        """
        if not weights_only:
            raise ValueError("recattend checkpoints load with weights_only=True (plain values)")
        return load_module(cls, checkpoint_path, overrides, map_location or "cpu")

    # ---------------------------------------------------------------------------------- inference
    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Inference (:meth:`~recattend.models.SegmenterNetwork.predict`) under the
        post-processing's stop rule: ``"weighted"`` runs all T steps; ``"first_below"`` stops
        each image at its first s_t < ``stop_score``, its later outputs all zero (and the loop
        ends once every image has stopped)."""
        return self.net.predict(image, threshold=self.postprocess.network_stop)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The outputs (:meth:`forward`) the dataset's evaluator scores."""
        return self(batch["image"])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The outputs (:meth:`forward`) the dataset's evaluator scores."""
        return self(batch["image"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[Instances]:
        """``Trainer.predict``: the post-processed instances of each image of the batch, at its
        original size where ``meta`` records one (``orig_size``: images resized for the
        network), else at network resolution."""
        out = self(batch["image"])
        metas = batch.get("meta") or [{}] * len(batch["image"])
        return [
            self.postprocess(image_outputs(out, i), meta.get("orig_size"))[0]
            for i, meta in enumerate(metas)
        ]

    def figure(self, batch: dict[str, Any]) -> np.ndarray:
        """Figure 1-style grids of the batch's images (:func:`recattend.visualise.figure1`)."""
        return figure1(batch["image"], self(batch["image"]))
