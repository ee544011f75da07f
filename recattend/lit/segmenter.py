"""Training of the recurrent attention segmenter (paper sections 2.5-2.6).

Memory: the canvas is detached between steps and the glimpse LSTM restarts at every step, so no
gradient crosses steps; the steps are coupled only through the (non-differentiable) matching and
the score loss. Keeping all T steps' graphs alive until the joint loss is known costs T times one
step's activations: 2.2 GiB peak at the CVPPP configuration with the fused kernels
(:mod:`recattend.models.kernels`), which store no full-size ReLU outputs or pooling indices. That
is the default (``checkpoint_steps=False``), the fastest on CPU. With less memory to spare, the
forward pass keeps less and the backward pass recomputes the rest, one step at a time:
``"full_resolution"`` the box CNN's layers at the input resolution (1.8 GiB), ``True`` whole steps,
keeping only each step's inputs (the image and that step's canvas) and outputs (1.3 GiB, a third
slower). The gradient is exactly that of the joint loss (eq. 21) in every mode, one backward call
serves DDP as usual, and BatchNorm running statistics are restored after a recomputation, so they
are updated once per step.

Training procedure (paper 2.6, reference 1.3-1.4), driven by two callbacks that set attributes of
the module:

* :class:`~recattend.callbacks.BootstrapStages` sets ``stage``: ``"box"`` trains the box network
  alone, the canvas always receiving (noised) ground truth, with the soft box IoU and score losses;
  ``"full"`` trains everything with the joint loss (eq. 21). It also sets ``stage_overrides``, the
  stage's own learning-rate settings (read by :meth:`SegmenterModule.configure_optimizers`) and
  ground-truth box padding (``box_min_pad``), and may re-initialise the score head at a switch
  (:meth:`SegmenterModule.reset_score_head`).
* :class:`~recattend.callbacks.ScheduledSampling` sets ``teacher_forcing``: per kind (``box``,
  ``mask``) the probability at each timestep of feeding ground truth instead of the prediction.
  Without it the model always reads its own predictions.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from recattend.export import coco_results, write_cityscapes_results, write_label_png
from recattend.lit.optim import adam
from recattend.lit.preprocessor import foreground_probability, load_preprocessor
from recattend.lit.step_backward import join_steps
from recattend.losses import (
    box_stage_losses,
    pad_boxes,
    padded_box_masks,
    segmenter_losses,
    soft_iou,
    supervised_counts,
)
from recattend.metrics import (
    CityscapesAP,
    count_instances,
    coverage_scores,
    foreground_dice,
    instance_metrics,
    recattend_sbd,
    symmetric_best_dice,
)
from recattend.models.filterbank import box_edges_to_center_size
from recattend.models.layers import recomputed
from recattend.models.preprocessor import Preprocessor
from recattend.models.segmenter import (
    BoxState,
    RecurrentSegmenter,
    StepOutput,
    TimestepConvStack,
    TimestepDeconvStack,
)
from recattend.postprocess import (
    Instances,
    PostProcess,
    image_instances,
    majority_class,
    postprocess,
    relabel_consecutive,
)
from recattend.visualise import figure1_grid, stack_rows

log = logging.getLogger(__name__)

# Noise on the ground truth fed back (reference 1.4): masks are y* (1 - U(0, 0.3)); boxes are padded
# by a ratio ~ U(0.1, 0.3) of their size (at least box_min_pad) and shifted by U(-0.05, 0.05) size.
GT_MASK_NOISE = 0.3
GT_BOX_PAD_RATIO = (0.1, 0.3)
GT_BOX_SHIFT = 0.05
STAGES = ("box", "full")


def gt_label_map(masks: Tensor) -> Tensor:
    """(B, T, H, W) instance slots -> (B, H, W) int64 labels, slot t -> t + 1, 0 background."""
    ids = torch.arange(1, masks.shape[1] + 1, device=masks.device, dtype=masks.dtype)
    return (masks * ids[None, :, None, None]).amax(1).long()


@dataclasses.dataclass
class Knob:
    """Teacher forcing at one step: which images use a ground-truth box / canvas mask, and what."""

    use_box: Tensor  # (B,) bool
    center: Tensor  # (B, 2)
    size: Tensor  # (B, 2)
    use_mask: Tensor  # (B,) bool
    mask: Tensor  # (B, H, W)


class SegmenterModule(L.LightningModule):
    """The recurrent segmenter with its losses, optimiser, teacher forcing and CVPPP metrics.

    Every argument is a plain value (saved as hyper-parameters; checkpoints load with
    ``weights_only=True``).

    Args:
        image_size: network input (H, W) (``${dataset.resolution}``).
        max_instances: instance slots (``${dataset.max_instances}``); the model runs T = this + 1
            steps (the paper's maximum number of objects plus one).
        net: keyword arguments of :class:`~recattend.models.segmenter.RecurrentSegmenter`; its
            ``in_channels`` counts the image's channels, the pre-processor's are added to it.
        preprocessor: the FCN pre-processor feeding the segmenter (paper section 2), or None:
            ``ckpt_path`` (a ``module=preprocessor`` checkpoint; None: raw pixels only),
            ``angles`` (use its angle maps; False for the ``no_angle`` ablation), ``finetune``
            (train it with the segmenter; default frozen, in evaluation mode), ``enabled``
            (False for ``no_pre_proc``). Its outputs join the image as x. The network's own
            settings are stored here too (``net``), so a segmenter checkpoint rebuilds it without
            the pre-processor's file.
        lr, lr_decay, lr_decay_steps: Adam (eps 1e-7 as the reference) with a staircase decay.
        weight_decay: L2 on weight matrices and kernels (not biases, BatchNorm or gains).
        grad_clip: element-wise gradient clipping to [-grad_clip, grad_clip] (the reference: 1).
        lambda_box, lambda_score: eq. (21) (paper: 1, 1).
        box_min_pad: minimum padding (px) of ground-truth boxes for the soft box loss and the
            boxes fed by teacher forcing; a bootstrap stage may set its own (:attr:`box_min_pad`).
        threshold: a pixel is foreground when its largest processed, score-weighted value is
            > this (CVPPP and KITTI 0.3, Cityscapes 0.6).
        postprocess: the switches of the post-processing (:mod:`recattend.postprocess`), run
            alike on validation, on the test split (at the original resolution for file
            datasets) and by ``predict.py``; missing keys take these defaults (the authors'):
            ``blur`` (true: bilateral filter of each soft map), ``dilate`` (0; KITTI 5: grey
            dilation of each soft map before the argmax), ``foreground`` (false; KITTI,
            Cityscapes: AND with the pre-processor's foreground, skipped with a warning without
            a pre-processor), ``foreground_threshold`` (0.3), ``min_size`` (0; Cityscapes 1200:
            instances of at most this many original-image pixels dropped; at network
            resolution the count is scaled by the image's area ratio when the batch gives
            ``orig_size``). With a semantic pre-processor, each instance of the test split also
            takes its majority class and Cityscapes AP is computed.
        stop_score: the score under which ``stop_rule="first_below"`` stops an image (paper:
            0.5; 0 never stops).
        stop_rule: ``"weighted"`` (default, the authors' evaluation code, which the tables
            come from): run all T steps, every mask weighted by its score, so a low-score mask
            only loses its pixels to the threshold; ``"first_below"`` (the paper's text): each
            image stops at its first s_t < ``stop_score``, later outputs are dropped.
        checkpoint_steps: what the backward pass recomputes instead of keeping in memory:
            ``False`` (default) nothing (all T steps' activations); ``"full_resolution"`` only
            the box CNN's layers at the input resolution, the largest activations; ``True`` each
            whole step (the memory of one step's activations). At the CVPPP configuration on 2
            CPU cores nothing recomputed is the fastest (~9 % faster than ``"full_resolution"``,
            measured alternating in one process; peak 2.2 vs 1.8 GiB), whole steps a third
            slower; the bench gives the figures and peak memory.
        parallel_backward: on CPU, backpropagate the T steps in parallel threads with one
            intra-op thread each (:mod:`recattend.lit.step_backward`); the same gradients up to
            float rounding (another summation order), at the memory of two steps' backward passes
            at once. Off by itself on GPUs, with SyncBatchNorm (DDP's
            ``trainer.sync_batchnorm``), when compiling, with gradient hooks on parameters and
            with one thread.
        compile: ``torch.compile`` the step functions (``locate``, ``segment``) and the
            pre-processor. Each step has its own BatchNorm, so Dynamo compiles one graph per
            timestep and mode (training with or without a teacher-forced box, inference; the
            checkpoint recomputation reuses the training graph);
            the first compile is slow (~1.5 min on 2 CPU cores), the next ones reuse its kernels
            (~4 s each). The recompile limit is raised to allow them.
    """

    def __init__(
        self,
        *,
        image_size: Sequence[int],
        max_instances: int,
        net: dict[str, Any] | None = None,
        preprocessor: dict[str, Any] | None = None,
        lr: float = 1e-3,
        lr_decay: float = 0.9,
        lr_decay_steps: int = 5000,
        weight_decay: float = 5e-5,
        grad_clip: float = 1.0,
        lambda_box: float = 1.0,
        lambda_score: float = 1.0,
        box_min_pad: float = 20.0,
        threshold: float = 0.3,
        postprocess: dict[str, Any] | None = None,
        stop_score: float = 0.5,
        stop_rule: str = "weighted",
        checkpoint_steps: bool | str = False,
        parallel_backward: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(checkpoint_steps, bool) or checkpoint_steps == "full_resolution"):
            raise ValueError(
                f"module.checkpoint_steps={checkpoint_steps!r}: use true (recompute whole steps), "
                "full_resolution (recompute the box CNN's full-resolution layers) or false "
                "(recompute nothing)"
            )
        self.save_hyperparameters()
        self.preprocessor, extra_channels = self._build_preprocessor(preprocessor)
        net = dict(net or {})
        net["in_channels"] = net.get("in_channels", 3) + extra_channels
        self.model = RecurrentSegmenter(image_size=image_size, steps=max_instances + 1, **net)
        if compile:
            self._compile()
        # The per-timestep BatchNorm holders: step t's statistics are restored after its
        # recomputation. (DDP's SyncBatchNorm conversion replaces their layers, not them.)
        self._timestep_stacks = [
            m
            for m in self.model.modules()
            if isinstance(m, TimestepConvStack | TimestepDeconvStack)
        ]
        self.stage = "full"  # training stage, set by BootstrapStages (module docstring)
        self.stage_overrides: dict[str, float] = {}  # the stage's own settings, idem
        self.teacher_forcing: dict[str, Tensor] | None = None  # set by ScheduledSampling
        self.test_rows: list[dict[str, Any]] = []  # per test image, for per_image.csv
        self.test_detections: list[dict[str, Any]] = []  # COCO results of the test split
        self.export_dir: Path | None = None  # set by eval.py export=true: test predictions go here
        self.val_metrics, self.test_metrics = instance_metrics(), instance_metrics()
        self.cityscapes_ap = CityscapesAP()  # updated only on Cityscapes with semantic classes
        # The evaluation settings, checked here so that a bad key fails before any training.
        self.postprocessing = PostProcess.from_module(threshold, stop_rule, stop_score, postprocess)
        if self.postprocessing.foreground and self.preprocessor is None:
            log.warning(
                "module.postprocess.foreground=true but there is no pre-processor: the AND with "
                "its foreground is skipped. The authors' pipeline trains one first (python "
                "train.py module=preprocessor dataset=...) and passes model.preprocessor.ckpt_path"
            )

    # ------------------------------------------------------------------------------------- inputs
    def _build_preprocessor(
        self, settings: dict[str, Any] | None
    ) -> tuple[Preprocessor | None, int]:
        settings = dict(settings or {})
        if not settings.get("enabled", True) or not (
            settings.get("ckpt_path") or "net" in settings
        ):
            if settings and not settings.get("angles", True):
                log.warning("model=no_angle without model.preprocessor.ckpt_path: raw pixels only")
            return None, 0
        if "net" in settings:  # rebuilt from a segmenter checkpoint; weights come with it
            preprocessor = Preprocessor(**settings["net"])
        else:
            preprocessor, config = load_preprocessor(settings["ckpt_path"])
            if not settings.get("angles", True) and preprocessor.angles:
                # The paper's no-angle ablation trains the pre-processor without the angle task;
                # dropping the angle maps of one trained with it is another experiment.
                raise ValueError(
                    "model.preprocessor.angles=false (model=no_angle) needs a pre-processor "
                    "trained without angles, but model.preprocessor.ckpt_path="
                    f"{settings.get('ckpt_path')} has an angle head. Train one with "
                    "module.net.angles=false (e.g. python train.py "
                    "experiment=synthetic_preprocessor module.net.angles=false) and pass it as "
                    "preprocessors.foreground=<its last.ckpt> (or model.preprocessor.ckpt_path)"
                )
            self.hparams["preprocessor"] = {**settings, "net": config}
        angles = settings.get("angles", True)
        if angles and not preprocessor.angles:
            raise ValueError(
                f"model.preprocessor.ckpt_path={settings.get('ckpt_path')} has no angle head, but "
                f"the segmenter expects its {preprocessor.feature_channels(True)} channels "
                "(foreground + 8 angles): use model=no_angle (foreground only) or a pre-processor "
                "trained with module.net.angles=true"
            )
        if not settings.get("finetune", False):
            preprocessor.requires_grad_(False).eval()  # and kept in eval mode by train()
        return preprocessor, preprocessor.feature_channels(angles)

    def _compile(self) -> None:
        """Compile in place: parameter names, checkpoints and the step loop are unchanged."""
        # Per step: training with and without a teacher-forced box, inference (with margin).
        graphs = 6 * self.model.steps
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, graphs)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * graphs)
        self.model.locate = torch.compile(self.model.locate)
        self.model.segment = torch.compile(self.model.segment)
        if self.preprocessor is not None:
            self.preprocessor.compile()

    def inputs(self, image: Tensor) -> Tensor:
        """x of the paper: the image, then the pre-processor's maps when there is one."""
        if self.preprocessor is None:
            return image
        settings = self.hparams.preprocessor
        with torch.set_grad_enabled(torch.is_grad_enabled() and settings.get("finetune", False)):
            features = self.preprocessor.features(image, settings.get("angles", True))
        return torch.cat([image, features], 1)

    def train(self, mode: bool = True) -> SegmenterModule:
        super().train(mode)
        if self.preprocessor is not None and not self.hparams.preprocessor.get("finetune", False):
            self.preprocessor.eval()  # frozen: its BatchNorm keeps the trained statistics
        return self

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
        self.model.score_head.reset_parameters()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in self.model.score_head.parameters():
                torch.distributed.broadcast(parameter.data, src=0)

    def supports_stage(self, stage: str) -> bool:
        """Whether this model can train in ``stage`` (no box stage without a box network)."""
        return stage == "full" or (stage == "box" and self.model.box_net is not None)

    def _draw(self, kind: str, t: int, b: int, device: torch.device) -> Tensor:
        """(B,) Bernoulli switches: feed ground truth of ``kind`` at step t (reference 1.4)."""
        if self.stage == "box":  # box stage: the canvas always receives ground truth, boxes never
            return torch.full((b,), kind == "mask", dtype=torch.bool, device=device)
        if not self.training or self.teacher_forcing is None:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.rand(b, device=device) < self.teacher_forcing[kind][t]

    def _knob(self, t: int, box: BoxState, batch: dict[str, Any], box_masks: Tensor) -> Knob | None:
        """Draw the teacher-forcing switches of step t and pick the ground truth to feed.

        The ground truth is the maximally overlapping instance (reference 1.4): the slot whose
        padded box has the highest soft IoU with the predicted soft box b_t (eq. 25), chosen with
        replacement, fed with the reference's noise (``GT_*`` constants). Without a box network
        the attention covers the whole image and no instance overlaps best; the slot is then the
        step's own (t), largest instances first.
        """
        if not self.training:
            return None
        x = batch["image"]
        b, device = x.shape[0], x.device
        use_box, use_mask = self._draw("box", t, b, device), self._draw("mask", t, b, device)
        if box.z is None:
            use_box = torch.zeros_like(use_box)
        if not (use_box.any() or use_mask.any()):
            return None
        rows = torch.arange(b, device=device)
        if box.z is None:
            m = torch.full((b,), t, device=device)
        else:
            with torch.no_grad():
                soft_box = self.model.soft_box(box)
            m = soft_iou(soft_box[:, None], box_masks)[:, 0].argmax(1)  # (B,)
        low, high = GT_BOX_PAD_RATIO
        ratio = low + (high - low) * torch.rand(b, 1, device=device)
        center, size = box_edges_to_center_size(
            pad_boxes(batch["boxes"][rows, m], self.box_min_pad, ratio)
        )
        center = center + GT_BOX_SHIFT * (2 * torch.rand_like(center) - 1) * size
        noise = 1 - GT_MASK_NOISE * torch.rand_like(batch["masks"][:, 0])
        return Knob(use_box, center, size, use_mask, batch["masks"][rows, m] * noise)

    def _checkpointed(
        self, function: Callable[..., Any], x: Tensor, canvas: Tensor, t: int, *args: Any
    ) -> Any:
        """Run step t's ``function(x, canvas, t, *args)`` keeping only inputs and outputs;
        recompute it in backward (unless ``checkpoint_steps`` is off)."""
        if not (self.hparams.checkpoint_steps is True and torch.is_grad_enabled()):
            return function(x, canvas, t, *args)
        norms = [norm for stack in self._timestep_stacks for norm in stack.norms[t]]
        return recomputed(function, norms, x, canvas, t, *args)

    def _backward_workers(self) -> int:
        """Threads for the steps' backward passes (:mod:`recattend.lit.step_backward`), 1 for
        the usual single backward pass."""
        parameter = next(self.model.parameters())
        if not (
            self.hparams.parallel_backward
            and torch.is_grad_enabled()
            and parameter.device.type == "cpu"
            and not self.hparams.compile
            and not any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules())
            # torch.autograd.grad would run a parameter's hooks once per step
            and not any(p._backward_hooks for p in self.model.parameters())
        ):
            return 1
        return min(torch.get_num_threads(), self.model.steps)

    def _join_steps(
        self, outs: list[StepOutput], x: Tensor, shared: Tensor, workers: int
    ) -> list[StepOutput]:
        """``outs`` with their backward passes in parallel; ``x`` is the steps' detached copy of
        ``shared``, the input that may lead to a fine-tuned pre-processor."""
        names = ("mask", "soft_box", "score")
        selected = [
            [n for n in names if getattr(o, n) is not None and getattr(o, n).requires_grad]
            for o in outs
        ]
        leaves = [p for p in self.model.parameters() if p.requires_grad]
        inputs = list(leaves)
        if shared.requires_grad:
            leaves.append(x)
            inputs.append(shared)
        joined = join_steps(
            [[getattr(o, n) for n in ns] for o, ns in zip(outs, selected, strict=True)],
            leaves,
            inputs,
            workers,
        )
        return [
            dataclasses.replace(o, **dict(zip(ns, tensors, strict=True)))
            for o, ns, tensors in zip(outs, selected, joined, strict=True)
        ]

    def _rollout(self, batch: dict[str, Any]) -> list[StepOutput]:
        """All T training steps with teacher forcing (eq. 1: canvas = max of masks so far)."""
        if self.model.box_net is not None:
            self.model.box_net.cnn.recompute_full_resolution = (
                self.hparams.checkpoint_steps == "full_resolution"
            )
        shared = self.model.prepare(self.inputs(batch["image"]))
        workers = self._backward_workers()
        x = shared if workers == 1 else shared.detach().requires_grad_(shared.requires_grad)
        steps = self.model.steps
        box_masks = padded_box_masks(
            batch["boxes"],
            self.model.image_size,
            supervised_counts(batch["num_instances"], batch["boxes"]),
            self.box_min_pad,
        )
        canvas = x.new_zeros(x.shape[0], 1, *self.model.image_size)
        outs = []
        for t in range(steps):
            box = self._checkpointed(self.model.locate, x, canvas, t)
            knob = self._knob(t, box, batch, box_masks)
            patch_box = None
            if knob is not None and knob.use_box.any():
                use = knob.use_box[:, None]
                patch_box = dataclasses.replace(
                    box,
                    center=torch.where(use, knob.center, box.center),
                    size=torch.where(use, knob.size, box.size),
                )
            if self.stage == "box":
                out = self.model.box_only(box)
                written = torch.zeros_like(canvas[:, 0])  # every image takes ground truth below
            else:
                out = self._checkpointed(self.model.segment, x, canvas, t, box, patch_box)
                written = out.mask.detach()
            outs.append(out)
            if knob is not None:
                written = torch.where(knob.use_mask[:, None, None], knob.mask, written)
            canvas = torch.maximum(canvas, written[:, None])  # eq. (1), no gradient across steps
        return outs if workers == 1 else self._join_steps(outs, x, shared, workers)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outs = self._rollout(batch)
        hp = self.hparams
        # The losses in float32 whatever the precision (bf16-mixed: sums over H x W pixels).
        scores = torch.stack([o.score for o in outs], 1).float()
        soft_boxes = (
            None if outs[0].soft_box is None else torch.stack([o.soft_box for o in outs], 1).float()
        )
        weights = {"lambda_box": hp.lambda_box, "lambda_score": hp.lambda_score}
        if self.stage == "box":
            terms = box_stage_losses(
                soft_boxes, scores, batch["boxes"], batch["num_instances"],
                min_pad=self.box_min_pad, **weights,
            )  # fmt: skip
        else:
            terms = segmenter_losses(
                torch.stack([o.mask for o in outs], 1).float(),
                scores,
                soft_boxes,
                batch["masks"],
                batch["boxes"],
                batch["num_instances"],
                min_pad=self.box_min_pad,
                **weights,
            )
        self._check_finite(terms)
        n = batch["image"].shape[0]
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items() if k != "match"}, prog_bar=True, batch_size=n
        )
        if self._trainer is not None:  # the current stage's learning rate
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return terms["loss"]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Element-wise clipping to [-grad_clip, grad_clip] as the reference (clip_by_value)."""
        if self.hparams.grad_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="value"
            )

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        for name, value in terms.items():
            if name != "match" and not torch.isfinite(value).all():
                step = self.global_step
                path = f"{self.trainer.default_root_dir}/checkpoints/nonfinite-step{step}.ckpt"
                self.trainer.save_checkpoint(path)
                raise FloatingPointError(
                    f"non-finite {name} = {value.item()} at step {step}; the weights before "
                    f"this step are saved in {path}. Try a lower module.lr or check the input data."
                )

    # --------------------------------------------------------------------------------- evaluation
    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Inference under ``stop_rule`` (:meth:`RecurrentSegmenter.predict`): ``"weighted"``
        runs all T steps; ``"first_below"`` stops each image at its first s_t < ``stop_score``,
        its later outputs all zero (and the loop ends once every image has stopped)."""
        settings = self.postprocessing
        stop = settings.stop_score if settings.stop_rule == "first_below" else 0.0  # 0: never
        return self.model.predict(self.inputs(image), threshold=stop)

    def figure(self, batch: dict[str, Any]) -> np.ndarray:
        """Figure 1-style grids of the batch's images (:func:`recattend.visualise.figure1_grid`)."""
        out = self(batch["image"])
        attention = out.get("attention")
        return stack_rows(
            [
                figure1_grid(
                    image,
                    out["masks"][i],
                    out["scores"][i],
                    out["boxes"][i],
                    None if attention is None else attention[i],
                )
                for i, image in enumerate(batch["image"])
            ]
        )

    def _evaluate(self, batch: dict[str, Any], metrics: nn.ModuleDict, split: str) -> None:
        """Score a batch after the one post-processing path (:meth:`instances`): validation and
        the test split of generated data at network resolution, the test split of file datasets
        at the ground truth's original resolution (read again), with one row per image in
        ``test_rows``."""
        out = self(batch["image"])
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if split == "test" and hasattr(datamodule, "original_target"):
            for i, meta in enumerate(batch["meta"]):
                target = torch.from_numpy(datamodule.original_target(meta)).to(self.device)
                one = {k: out[k][i : i + 1] for k in ("masks", "scores")}
                result = self.instances(one, batch["image"][i : i + 1], tuple(target.shape))[0]
                labels, scores, classes = result.labels, result.scores, result.classes
                self._score(
                    metrics, [meta], result.timesteps[None], target[None], pred=labels[None]
                )
                if "image_id" in meta:  # COCO: results for pycocotools (class-agnostic)
                    self.test_detections += coco_results(
                        labels.cpu().numpy(), scores.tolist(), meta["image_id"]
                    )
                if self.export_dir is not None:
                    self._export(meta, labels, scores, classes, datamodule)
                if classes is not None and hasattr(datamodule, "original_instance_ids"):
                    ids = torch.arange(1, len(scores) + 1, device=labels.device)
                    gt_ids = torch.from_numpy(datamodule.original_instance_ids(meta))
                    self.cityscapes_ap.update(
                        [labels[None] == ids[:, None, None]],
                        [datamodule.label_ids(classes)],
                        [scores],
                        [gt_ids.to(labels.device)],
                    )
            return
        results = self.instances(out, batch["image"], pixel_area=self._pixel_area(batch))
        timesteps = torch.stack([r.timesteps for r in results])
        pred = torch.stack([r.labels for r in results])
        target = gt_label_map(batch["masks"])
        self._score(
            metrics, batch["meta"], timesteps, target, batch["num_instances"], split, pred=pred
        )

    def _pixel_area(self, batch: dict[str, Any]) -> Tensor:
        """(B,) original-image pixels per network pixel, for ``min_size`` at network resolution:
        the area ratio where the sample's ``meta`` gives its ``orig_size``, else 1 (generated
        data is made at network resolution)."""
        h, w = batch["image"].shape[-2:]
        areas = [
            float(meta["orig_size"][0]) * float(meta["orig_size"][1]) / (h * w)
            if "orig_size" in meta
            else 1.0
            for meta in batch["meta"]
        ]
        return torch.tensor(areas, device=batch["image"].device)

    def _score(
        self,
        metrics: nn.ModuleDict,
        metas: list[dict[str, Any]],
        timesteps: Tensor,
        target: Tensor,
        counts: Tensor | None = None,
        split: str = "test",
        pred: Tensor | None = None,
    ) -> None:
        """Update every metric with (B, H, W) timestep maps and ground-truth label maps.

        ``counts`` (B,) are the true instance counts when ``target`` may hold fewer (the batch
        contract keeps at most T - 1 instances); DiC uses them. ``pred`` is the final label map
        (default: the timesteps renumbered); rec-attend's SBD always reads the timesteps.
        """
        if pred is None:
            pred = torch.stack([relabel_consecutive(t) for t in timesteps])
        if counts is None:
            counts = torch.stack([count_instances(g) for g in target])
        for name, metric in metrics.items():
            if name == "dic":
                metric.update(pred, target, counts)
            else:
                metric.update(timesteps if name == "sbd_recattend" else pred, target)
        if split != "test":
            return
        for meta, t, p, g, n in zip(metas, timesteps, pred, target, counts, strict=True):
            coverage = coverage_scores(p, g)
            self.test_rows.append(
                {
                    "id": meta["id"],
                    "height": int(g.shape[0]),
                    "width": int(g.shape[1]),
                    "sbd": float(symmetric_best_dice(p, g)),
                    "sbd_recattend": float(recattend_sbd(t, g)),
                    "fg_dice": float(foreground_dice(p, g)),
                    "pred_count": int(count_instances(p)),
                    "gt_count": int(n),
                    **{k: float(v) for k, v in coverage._asdict().items()},
                }
            )

    def _export(
        self,
        meta: dict[str, Any],
        labels: Tensor,
        scores: Tensor,
        classes: Tensor | None,
        datamodule: Any,
    ) -> None:
        """One test image's label PNG, and its Cityscapes result files when it has classes."""
        folder = Path(self.export_dir)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        array = labels.cpu().numpy()
        write_label_png(array, folder / "labels" / f"{meta['id']}.png")
        if classes is not None and hasattr(datamodule, "label_ids"):
            label_ids = datamodule.label_ids(classes).tolist()
            write_cityscapes_results(
                array, scores.tolist(), label_ids, str(meta["id"]), folder / "cityscapes"
            )

    def instances(
        self,
        out: dict[str, Tensor],
        image: Tensor,
        size: tuple[int, int] | None = None,
        pixel_area: Tensor | float = 1.0,
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

        Returns:
            One :class:`~recattend.postprocess.Instances` per image at ``size``; ``classes``
            only with a semantic pre-processor.
        """
        size = tuple(size) if size is not None else tuple(out["masks"].shape[-2:])
        foreground, semantic = self._guidance(image, size)
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

    def _guidance(
        self, image: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor | None, Tensor | None]:
        """The pre-processor's maps the post-processing needs, upsampled bilinearly to ``size``:
        (B, H, W) float foreground probability when ``postprocess.foreground`` is on, and
        (B, H, W) int64 semantic classes (train ids, 0 = background) with a semantic
        pre-processor; None for each one not needed or without a pre-processor."""
        semantic_net = self.preprocessor is not None and self.preprocessor.num_classes > 0
        wanted = self.postprocessing.foreground and self.preprocessor is not None
        if not (wanted or semantic_net):
            return None, None
        maps = self.preprocessor(image)

        def resize(x: Tensor) -> Tensor:
            return torch.nn.functional.interpolate(
                x, size=size, mode="bilinear", align_corners=False
            )

        foreground = resize(foreground_probability(maps))[:, 0] if wanted else None
        semantic = resize(maps["semantic"].softmax(1)).argmax(1) if semantic_net else None
        return foreground, semantic

    def _log_metrics(self, metrics: nn.ModuleDict, split: str) -> None:
        values = {}
        for metric in metrics.values():
            values.update(metric.compute())
            metric.reset()
        self.log_dict(
            {f"{split}/{k}": v for k, v in values.items()}, prog_bar=split == "val", sync_dist=False
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self.test_rows = []
        self.test_detections: list[dict[str, Any]] = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        if self.cityscapes_ap.update_count:
            ap = self.cityscapes_ap.compute()
            self.log_dict({f"test/{k}": v for k, v in ap.items()}, sync_dist=False)
            self.cityscapes_ap.reset()
        detections = _gather(self.test_detections)
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "coco_evaluate"):  # also with no detection at all: AP 0
            scores = datamodule.coco_evaluate(detections)
            self.log_dict({f"test/{k}": v for k, v in scores.items()}, sync_dist=False)
        self._write_rows()

    def _write_rows(self) -> None:
        """``per_image.csv`` in the run folder: every test image's scores (all ranks)."""
        rows = _gather(self.test_rows)
        if self._trainer is None or not self.trainer.is_global_zero or not rows:
            return
        path = Path(self.trainer.default_root_dir) / "per_image.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda row: str(row["id"])))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = {**self.hparams, **self.stage_overrides}  # the bootstrap stage's settings win
        opt = adam(self, hp["weight_decay"], lr=hp["lr"], eps=1e-7)
        sched = torch.optim.lr_scheduler.StepLR(
            opt, step_size=hp["lr_decay_steps"], gamma=hp["lr_decay"]
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _gather(items: list[Any]) -> list[Any]:
    """Every rank's items, concatenated, under DDP (the items themselves otherwise)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return [item for part in parts for item in part]
