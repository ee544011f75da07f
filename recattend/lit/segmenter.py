"""Training of the recurrent attention segmenter (paper sections 2.5-2.6).

Memory: no gradient crosses steps (the canvas is detached, the glimpse LSTM restarts), so the
steps are coupled only through the non-differentiable matching and the score loss. By default all
T steps' graphs stay alive until the joint loss (eq. 21) is known; ``checkpoint_steps`` trades
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
  prediction (:mod:`recattend.callbacks.teacher_forcing` picks and noises what is fed). Without it
  the model always reads its own predictions.

Evaluation is not done here: ``validation_step`` and ``test_step`` return the network's outputs,
which the :class:`~recattend.evaluation.Evaluate` callback hands to the dataset's evaluator
together with :meth:`SegmenterModule.instances`, the one post-processing path. The non-finite
guard's logic lives in :mod:`recattend.lit.nonfinite`; this module keeps its hooks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from recattend import ops
from recattend.callbacks.teacher_forcing import JITTERS, TeacherForcing
from recattend.lit.nonfinite import NonFiniteGuard
from recattend.lit.optim import adam, check_settings, lr_factor, mixed_precision
from recattend.losses import (
    BOX_IOUS,
    box_stage_losses,
    padded_gt_boxes,
    segmenter_losses,
    supervised_counts,
)
from recattend.models.network import SegmenterNetwork
from recattend.models.segmenter import StepOutput
from recattend.models.timestep import TimestepConvStack, TimestepDeconvStack
from recattend.postprocess import (
    Instances,
    PostProcess,
    image_instances,
    majority_class,
    postprocess,
)
from recattend.utils.checkpoint import load_module
from recattend.visualise import figure1

log = logging.getLogger(__name__)

STAGES = ("box", "full")
CHECKPOINT_STEPS = (False, "full_resolution", True)


def _stack(outs: list[StepOutput], key: str) -> Tensor | None:
    """The T steps' ``key`` as one (B, T, ...) tensor of at least float32 (bf16-mixed outputs are
    lifted, float64 kept), or None where the steps have none."""
    values = [getattr(out, key) for out in outs]
    if values[0] is None:
        return None
    return torch.stack(values, 1).to(torch.promote_types(values[0].dtype, torch.float32))


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
            (:mod:`recattend.callbacks.teacher_forcing`): ``"padded"`` (the padded box's) or
            ``"tight"`` (the ground-truth instance's own box, the authors').
        threshold: a pixel is foreground when its largest processed, score-weighted value is
            > this (CVPPP and KITTI 0.3, Cityscapes 0.6).
        postprocess: the switches of the post-processing (:mod:`recattend.postprocess`), run
            alike on validation, on the test split (at the original resolution for file
            datasets) and by ``predict.py``; missing keys take :class:`PostProcess`'s defaults
            (the authors'): ``upsample`` (``bilinear``, ``bicubic`` or ``nearest`` resizing of
            each soft map to the original size), ``blur`` (bilateral filter of each soft map),
            ``dilate`` (KITTI 5: grey dilation of each soft map before the argmax),
            ``foreground`` (KITTI, Cityscapes: AND with the pre-processor's foreground, skipped
            with a warning without a pre-processor), ``foreground_threshold``, ``min_size``
            (Cityscapes 1200: instances of at most this many original-image pixels dropped).
            With a semantic pre-processor, each instance also takes its majority class.
        stop_score: the score under which ``stop_rule="first_below"`` stops an image (paper:
            0.5; 0 never stops).
        stop_rule: ``"weighted"`` (the authors' evaluation code, which the tables come from):
            run all T steps, every mask weighted by its score, so a low-score mask only loses
            its pixels to the threshold; ``"first_below"`` (the paper's text): each image stops
            at its first s_t < ``stop_score``, later outputs are dropped.
        checkpoint_steps: what the backward pass recomputes instead of keeping in memory:
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
        on_nonfinite: what a training step with NaN or inf in its batch, outputs (masks, scores,
            soft boxes), loss or gradients does, on every DDP process together
            (:mod:`recattend.lit.nonfinite`): ``"stop"`` saves the state from before the step in
            ``checkpoints/nonfinite-step<step>.ckpt`` and raises :class:`FloatingPointError`
            naming the step, what was non-finite and the likely cause; ``"skip"`` leaves weights,
            optimiser state and BatchNorm statistics as they were, counts the batch
            (``train/skipped_batches``) and goes on.
        max_skipped: with ``on_nonfinite="skip"``, the most batches skipped in a row; the next
            non-finite one stops as ``"stop"`` does.
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
        threshold: float = 0.3,
        postprocess: Mapping[str, Any] | None = None,
        stop_score: float = 0.5,
        stop_rule: str = "weighted",
        checkpoint_steps: bool | str = False,
        compile: bool = False,
        on_nonfinite: str = "stop",
        max_skipped: int = 10,
    ) -> None:
        super().__init__()
        check_settings(
            lr=lr, lr_decay=lr_decay, lr_decay_steps=lr_decay_steps,
            lr_warmup_steps=lr_warmup_steps, weight_decay=weight_decay, adam_betas=adam_betas,
        )  # fmt: skip
        if checkpoint_steps not in CHECKPOINT_STEPS:
            raise ValueError(
                f"module.checkpoint_steps={checkpoint_steps!r}: use true (recompute whole steps), "
                "full_resolution (recompute the box CNN's full-resolution layers) or false "
                "(recompute nothing)"
            )
        for key, value, choices in (
            ("box_iou", box_iou, BOX_IOUS),
            ("fed_box_jitter", fed_box_jitter, JITTERS),
        ):
            if value not in choices:
                raise ValueError(f"module.{key}={value!r}: use one of {list(choices)}")
        if not isinstance(net, SegmenterNetwork):  # a checkpoint's hyper-parameters
            net = SegmenterNetwork(**net)
        self.save_hyperparameters(ignore=["net"])
        # Again with the network's settings, which loggers then record as well as checkpoints.
        self.save_hyperparameters({"net": net.settings, **self.hparams})
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
        # The per-timestep BatchNorm holders: step t's statistics are restored after its
        # recomputation. (DDP's SyncBatchNorm conversion replaces their layers, not them.)
        self._timestep_stacks = [
            m
            for m in self.net.segmenter.modules()
            if isinstance(m, TimestepConvStack | TimestepDeconvStack)
        ]
        self.stage = "full"  # training stage, set by BootstrapStages (module docstring)
        self.stage_overrides: dict[str, float] = {}  # the stage's own settings, idem
        self.end_epoch = False  # end the epoch before this batch (a stage's batch size, idem)
        box_net = self.net.segmenter.box_net  # the model's pooling, for use_box_pools
        self._box_pools = list(box_net.cnn.pools) if box_net is not None else []
        # Its probabilities set by ScheduledSampling.
        self.teacher_forcing = TeacherForcing(box_iou, fed_box_jitter)
        self.nonfinite = NonFiniteGuard(on_nonfinite, max_skipped)
        # The last validation's output statistics, set by the Evaluate callback
        # (recattend.evaluation.statistics); saved in checkpoints for predict.py's warnings.
        self.output_statistics: dict[str, float] | None = None
        # The evaluation settings, checked here so that a bad key fails before any training.
        self.postprocessing = PostProcess.from_module(threshold, stop_rule, stop_score, postprocess)
        if self.postprocessing.foreground and self.net.preprocessor is None:
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

    def _checkpointed(
        self, function: Callable[..., Any], x: Tensor, canvas: Tensor, t: int, *args: Any
    ) -> Any:
        """Run step t's ``function(x, canvas, t, *args)`` keeping only inputs and outputs;
        recompute it in backward (unless ``checkpoint_steps`` is off)."""
        if not (self.hparams.checkpoint_steps is True and torch.is_grad_enabled()):
            return function(x, canvas, t, *args)
        norms = [norm for stack in self._timestep_stacks for norm in stack.norms[t]]
        return ops.recomputed(function, norms, x, canvas, t, *args)

    def _rollout(self, batch: dict[str, Any]) -> list[StepOutput]:
        """All T training steps with teacher forcing (eq. 1: canvas = max of masks so far)."""
        model = self.net.segmenter
        if model.box_net is not None:
            model.box_net.cnn.recompute_full_resolution = (
                self.hparams.checkpoint_steps == "full_resolution"
            )
        shared = model.prepare(self.net.inputs(batch["image"]))
        workers = ops.backward_workers(model, model.steps, self.hparams.compile)
        x = shared if workers == 1 else shared.detach().requires_grad_(shared.requires_grad)
        padded = padded_gt_boxes(
            self.hparams.box_iou,
            batch["boxes"],
            supervised_counts(batch["num_instances"], batch["boxes"]),
            self.box_min_pad,
            model.image_size,
        )
        canvas = x.new_zeros(x.shape[0], 1, *model.image_size)
        outs = []
        for t in range(model.steps):
            box = self._checkpointed(model.locate, x, canvas, t)
            knob = None
            if self.training:
                knob = self.teacher_forcing.knob(
                    model, t, box, batch, padded, self.stage, self.box_min_pad
                )
            if self.stage == "box":
                out = model.box_only(box)
                written = torch.zeros_like(canvas[:, 0])  # every image takes ground truth below
            else:
                patch_box = None if knob is None else knob.patch_box(box)
                out = self._checkpointed(model.segment, x, canvas, t, box, patch_box)
                written = out.mask.detach()
            outs.append(out)
            if knob is not None:
                written = knob.write(written)
            canvas = torch.maximum(canvas, written[:, None])  # eq. (1), no gradient across steps
        if workers == 1:
            return outs
        parameters = [p for p in model.parameters() if p.requires_grad]
        read = ("mask", "soft_box", "score")  # by the losses, and the box edges by coordinates
        read += ("box_edges",) if self.hparams.box_iou == "coordinates" else ()
        return ops.join_step_outputs(outs, read, parameters, x, shared, workers)

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

        A non-finite batch, rollout or loss stops training, or skips the batch, on every process
        together, before the matching (:mod:`recattend.lit.nonfinite`, ``on_nonfinite``).
        """
        self.nonfinite.begin(self)
        outs = self._rollout(batch)
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
        if self.hparams.on_nonfinite == "skip":
            self.log("train/skipped_batches", float(self.nonfinite.skipped), batch_size=n)
        if terms is None:  # skipped on every process
            return self.nonfinite.no_update(self)
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
        """The current stage's loss terms from the stacked (B, T, ...) outputs."""
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
        """Element-wise clipping to [-grad_clip, grad_clip] (``clip_by_value``); none for a
        skipped batch, which has no gradients."""
        if self.hparams.grad_clip and not self.nonfinite.skipping:
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
        checkpoint["nonfinite"] = self.nonfinite.state_dict()  # the skip counts
        if self.output_statistics is not None:  # plain floats: loads with weights_only=True
            checkpoint["output_statistics"] = dict(self.output_statistics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming restores the skip counts and the last validation's output statistics."""
        if "nonfinite" in checkpoint:
            self.nonfinite.load_state_dict(checkpoint["nonfinite"])
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
        (:func:`~recattend.utils.checkpoint.load_module`); ``overrides`` replace saved settings.

        Raises:
            ValueError: ``weights_only=False`` (recattend checkpoints hold plain values only), or
                the checkpoint does not fit (named by :func:`load_module`).
        """
        if not weights_only:
            raise ValueError("recattend checkpoints load with weights_only=True (plain values)")
        return load_module(cls, checkpoint_path, overrides, map_location or "cpu")

    # ---------------------------------------------------------------------------------- inference
    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Inference under ``stop_rule`` (:meth:`RecurrentSegmenter.predict`): ``"weighted"``
        runs all T steps; ``"first_below"`` stops each image at its first s_t < ``stop_score``,
        its later outputs all zero (and the loop ends once every image has stopped)."""
        settings = self.postprocessing
        stop = settings.stop_score if settings.stop_rule == "first_below" else 0.0  # 0: never
        return self.net.predict(image, threshold=stop)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The outputs (:meth:`forward`) the dataset's evaluator scores."""
        return self(batch["image"])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The outputs (:meth:`forward`) the dataset's evaluator scores."""
        return self(batch["image"])

    def figure(self, batch: dict[str, Any]) -> np.ndarray:
        """Figure 1-style grids of the batch's images (:func:`recattend.visualise.figure1`)."""
        return figure1(batch["image"], self(batch["image"]))

    def instances(
        self,
        out: dict[str, Tensor],
        image: Tensor,
        size: tuple[int, int] | None = None,
        pixel_area: Tensor | float = 1.0,
        semantic: Sequence[Tensor] | None = None,
    ) -> list[Instances]:
        """The post-processed instances of a batch: the one path of validation, test and
        ``predict.py`` (:func:`~recattend.postprocess.postprocess` with this module's settings,
        :attr:`postprocessing`).

        Args:
            out: this module's outputs for B images: ``masks`` (B, T, h, w), ``scores`` (B, T).
            image: (B, C, h, w) the images given to the module; the pre-processor reads them
                again for its foreground (``postprocess.foreground``) and semantic classes.
            size: the labels' (H, W), the images' original size; None: network resolution.
            pixel_area: () or (B,) original-image pixels per output pixel (``min_size``).
            semantic: external semantic predictions (``preprocessors.semantic``, the authors'
                LRR maps for Cityscapes) in place of the pre-processor's: B integer (H_i, W_i)
                train-id maps (0 = background), any size, resized to ``size`` nearest-neighbour.
                Their non-background pixels are the foreground of the AND and their majority
                class each instance's; the pre-processor is then not run here.

        Returns:
            One :class:`~recattend.postprocess.Instances` per image at ``size``; ``classes``
            only with a semantic pre-processor or ``semantic``.
        """
        size = tuple(size) if size is not None else tuple(out["masks"].shape[-2:])
        if semantic is None:
            foreground, semantic = self.net.postprocess_maps(
                image, size, self.postprocessing.foreground
            )
        else:
            if len(semantic) != out["masks"].shape[0]:
                raise ValueError(
                    f"{len(semantic)} semantic maps for {out['masks'].shape[0]} images: give one "
                    "per image"
                )
            # Centred nearest-neighbour ("nearest-exact"), as the datasets resize their masks,
            # so a map at the original size lines up with the network-resolution batch.
            semantic = torch.cat([
                torch.nn.functional.interpolate(
                    m.to(out["masks"].device, torch.float32)[None, None], size=size,
                    mode="nearest-exact",
                )[:, 0].long()
                for m in semantic
            ])  # fmt: skip
            foreground = (semantic > 0).to(out["masks"].dtype)
        slots = postprocess(
            out["masks"], out["scores"], self.postprocessing, size, foreground, pixel_area
        )
        results = []
        for i, image_slots in enumerate(slots):
            result = image_instances(image_slots, out["scores"][i])
            if semantic is not None:
                result = result._replace(classes=majority_class(result.labels, semantic[i]))
            results.append(result)
        return results
