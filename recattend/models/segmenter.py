"""The recurrent attention segmenter (paper section 2, as the authors' code ran it).

Per step t (names from the paper):

* external memory: canvas c_t, the max of all masks written so far (eq. 1), stacked with the
  input x into d_t = [c_t, x] (eq. 2);
* box network: a CNN over d_t gives u_t (eq. 3); K glimpses of soft attention over u_t feed an
  LSTM that restarts from zero at every step (eq. 4-5); a linear head reads the box centre, size,
  log-variance and log-gains from its last hidden state z (eq. 6-10);
* Gaussian filterbank: a patch p_t of x~_t = [x, c_t] is extracted inside the box (eq. 11-16);
* segmentation network: CNN -> v_t (eq. 17), D-CNN with skips back to patch resolution (eq. 18),
  re-projected onto the image with gain gamma and constant beta (eq. 19); the soft box b_t is the
  re-projection of a constant patch (eq. 25);
* scoring network: s_t from [z, v_t] (eq. 20).

The box, segmentation and scoring networks, their per-step state (:class:`BoxState`,
:class:`StepOutput`) and the step loop are one step of eq. (1-20), read together.

Choices (the differences from the paper are listed in docs/reproducing.md):

* As in the authors' code, BatchNorm is per timestep (conv weights shared over t, BN not), the
  canvas is detached between steps and the glimpse LSTM restarts at every step, so no gradient
  crosses steps: :class:`~recattend.lit.segmenter.SegmenterModule` exploits this to backpropagate
  one step at a time.
* The last D-CNN layer has BN and ReLU as in the authors' code, so y~ >= 0 and the logit floor
  is -beta.
* Convolutions start He-normal rather than N(0, 0.01): with Adam and per-timestep BN, tiny
  initial weights make BN running statistics lag (measured on the pre-processor: eval-mode IoU
  0.38 vs 0.95). The box head starts at N(0, 0.01) so the first box is the whole image.
* The "no box network" ablation (paper Table 4; the authors' code has none) attends to the whole
  image with learned gains initialised to compensate the filterbank's density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recattend.models.filterbank import (
    box_center_size_to_edges,
    extract,
    filterbank,
    reproject,
    rows_layout,
)
from recattend.models.layers import initialise_
from recattend.models.timestep import TimestepConvStack, TimestepDeconvStack

BETA = 5.0  # eq. (19), (25): constant that suppresses pixels outside the box


@dataclass
class BoxState:
    """What the box network decided at one step, for a batch of B images.

    center, size: (B, 2) (y, x) in pixels (see :mod:`recattend.models.filterbank`);
    var: (B, 2) kernel variance; gains: (B, 3) (gamma_patch, gamma_box, gamma_out) > 0;
    z: (B, hidden) last glimpse-LSTM state, or None without a box network;
    attention: (B, K, H', W') the soft attention of each glimpse, or None.
    """

    center: Tensor
    size: Tensor
    var: Tensor
    gains: Tensor
    z: Tensor | None
    attention: Tensor | None

    def edges(self) -> Tensor:
        """(B, 4) the box as pixel edges (y0, x0, y1, x1), y1/x1 exclusive like the batch
        contract's boxes."""
        return box_center_size_to_edges(self.center, self.size)


class BoxNetwork(nn.Module):
    """CNN over d_t, K glimpses of soft attention into an LSTM, linear box head (eq. 3-10).

    Args:
        in_channels: channels of d_t = [canvas, x].
        channels, pools: the CNN (per layer output channels and max-pool factor).
        feature_size: (H', W') of the CNN output.
        steps: T (BatchNorm is per timestep).
        hidden: LSTM width; glimpses: K >= 1.

    Shapes: d (B, C, H, W), t -> o (B, 9), z (B, hidden), attention (B, K, H', W').
    o = [centre (y, x) in [-1, 1] at the image edges, log relative size (y, x), log variance (y, x),
    log gamma_patch, log gamma_box, log gamma_out].
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: Sequence[int],
        pools: Sequence[int],
        feature_size: tuple[int, int],
        steps: int,
        hidden: int = 256,
        glimpses: int = 5,
    ) -> None:
        super().__init__()
        if glimpses < 1:
            raise ValueError(f"model.segmenter.glimpses={glimpses} must be >= 1")
        self.cnn = TimestepConvStack(in_channels, channels, pools, steps)
        self.glimpses, self.feature_size = glimpses, feature_size
        cells = feature_size[0] * feature_size[1]
        self.lstm = nn.LSTMCell(channels[-1], hidden)
        # Attention for glimpses 2..K (eq. 5); with K = 1 there is none to predict.
        self.glimpse_mlp = (
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, cells))
            if glimpses > 1
            else None
        )
        self.box_head = nn.Linear(hidden, 9)

    def forward(self, d: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        u = self.cnn(d, t)[-1].flatten(2)  # (B, L, H'W')  eq. (3)
        b, cells = u.shape[0], u.shape[2]
        alpha = u.new_full((b, cells), 1.0 / cells)  # eq. (5), tau = 0: uniform
        state = None  # eq. (4): z_{t,0} = 0
        attention = []
        for k in range(self.glimpses):
            attention.append(alpha)
            glimpse = torch.einsum("blk,bk->bl", u, alpha)
            state = self.lstm(glimpse, state)
            if k + 1 < self.glimpses:
                alpha = torch.softmax(self.glimpse_mlp(state[0]), dim=1)  # eq. (5)
        z = state[0]
        return self.box_head(z), z, torch.stack(attention, 1).view(b, -1, *self.feature_size)


class SegmentationNetwork(nn.Module):
    """Patch CNN -> v_t (eq. 17) and D-CNN with skips back to patch resolution (eq. 18).

    Skips mirror the encoder: before D-CNN layer i (i >= 1) the output of encoder layer n - 1 - i
    is concatenated, and before the last layer the patch itself, as in the authors' code (their
    KITTI/Cityscapes runs had all skips on; ``skips`` selects which layers get one).

    Shapes: p (B, C, h, w), t -> y~ (B, 1, h, w) >= 0 and v (B, channels[-1], h', w').
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: Sequence[int],
        pools: Sequence[int],
        deconv_channels: Sequence[int],
        unpools: Sequence[int],
        skips: Sequence[bool],
        steps: int,
    ) -> None:
        super().__init__()
        n = len(channels)
        if not len(deconv_channels) == len(unpools) == len(skips) == n + 1:
            raise ValueError(
                "the D-CNN needs one layer more than the CNN (deconv_channels, unpools, skips)"
            )
        if math.prod(unpools) != math.prod(pools):
            raise ValueError("the D-CNN must upsample by as much as the CNN downsamples")
        if skips[0]:
            raise ValueError("the first D-CNN layer reads v_t itself and cannot take a skip")
        self.cnn = TimestepConvStack(in_channels, channels, pools, steps)
        # Skip source of layer i: encoder layer n-1-i, or the patch (index -1) for the last layer.
        self.sources = [n - 1 - i if skip else None for i, skip in enumerate(skips)]
        widths = [
            in_channels if s == -1 else (0 if s is None else channels[s]) for s in self.sources
        ]
        self.dcnn = TimestepDeconvStack(channels[-1], deconv_channels, unpools, widths, steps)

    def forward(self, p: Tensor, t: int) -> tuple[Tensor, Tensor]:
        hs = self.cnn(p, t)
        skips = [None if s is None else (p if s == -1 else hs[s]) for s in self.sources]
        return self.dcnn(hs[-1], skips, t), hs[-1]


@dataclass
class StepOutput:
    """One step of the recurrent segmenter for B images (all float32).

    mask: (B, H, W) y_t in (0, 1) (eq. 19), or None in the bootstrap box stage (no segmentation,
    :meth:`RecurrentSegmenter.box_only`); soft_box: (B, H, W) b_t (eq. 25) or None without a box
    network; score: (B,) s_t in (0, 1) (eq. 20); box: the :class:`BoxState` used; box_edges:
    (B, 4) that box as pixel edges (:meth:`BoxState.edges`), what the coordinate box IoU
    (``module.box_iou=coordinates``) and :meth:`RecurrentSegmenter.predict` read.
    """

    mask: Tensor | None
    soft_box: Tensor | None
    score: Tensor
    box: BoxState
    box_edges: Tensor


class RecurrentSegmenter(nn.Module):
    """Segments one instance per step for T steps, remembering them on a canvas (paper section 2).

    Args:
        image_size: network input (H, W), divisible by the box CNN's total stride.
        steps: T, the sequence length (max instances + 1).
        in_channels: channels of x (3 for RGB; 3 + 9 with a pre-processor).
        patch_size: (h, w) of the attention patch, divisible by the attention CNN's stride.
        box_channels, box_pools: the box network's CNN.
        attn_channels, attn_pools: the segmentation CNN; deconv_channels (last = 1), unpools,
            skips: its D-CNN.
        hidden: glimpse-LSTM width; glimpses: K.
        box_network: False for the "no box network" ablation (whole-image attention).
        fixed_gamma: gamma_patch = 1 and gamma_out = e^2 as the authors' CVPPP/Cityscapes runs;
            otherwise both are predicted. gamma_box is always predicted.
        dynamic_var: predict the kernel log-variance; otherwise variance = stride (delta / h).
        init: ``"kaiming"`` (He-normal convolutions, PyTorch's defaults for the linear layers
            and the LSTM) or ``"authors"`` (every conv, deconv, linear and LSTM weight and bias
            truncated N(0, 0.01) at +-2 std). Both start the box head at N(0, 0.01) and the
            LSTM's forget-gate bias at 1.

    Inputs: x (B, in_channels, H, W) float32. See :meth:`forward` for outputs.
    """

    def __init__(
        self,
        *,
        image_size: Sequence[int],
        steps: int,
        in_channels: int = 3,
        patch_size: Sequence[int] = (48, 48),
        box_channels: Sequence[int] = (8, 8, 16, 16, 32, 32, 64, 64),
        box_pools: Sequence[int] = (1, 2, 1, 2, 1, 2, 2, 2),
        attn_channels: Sequence[int] = (8, 8, 16, 16, 32, 32),
        attn_pools: Sequence[int] = (1, 2, 1, 2, 1, 2),
        deconv_channels: Sequence[int] = (32, 32, 16, 16, 8, 8, 1),
        unpools: Sequence[int] = (2, 1, 2, 1, 2, 1, 1),
        skips: Sequence[bool] = (False, False, True, False, True, False, True),
        hidden: int = 256,
        glimpses: int = 5,
        box_network: bool = True,
        fixed_gamma: bool = True,
        dynamic_var: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.steps, self.fixed_gamma, self.dynamic_var = steps, fixed_gamma, dynamic_var
        h, w = self.image_size
        stride = math.prod(box_pools)
        if box_network and (h % stride or w % stride):
            raise ValueError(
                f"dataset.resolution={[h, w]} must be divisible by the box CNN's total stride "
                f"{stride} (product of model.segmenter.box_pools), e.g. "
                f"{[-(-h // stride) * stride, -(-w // stride) * stride]}"
            )
        attn_stride = math.prod(attn_pools)
        if self.patch_size[0] % attn_stride or self.patch_size[1] % attn_stride:
            raise ValueError(
                f"model.segmenter.patch_size={list(self.patch_size)} must be divisible by "
                f"{attn_stride}"
            )
        d_channels = in_channels + 1  # [canvas, x], eq. (2)
        self.box_net = (
            BoxNetwork(
                in_channels=d_channels,
                channels=box_channels,
                pools=box_pools,
                feature_size=(h // stride, w // stride),
                steps=steps,
                hidden=hidden,
                glimpses=glimpses,
            )
            if box_network
            else None
        )
        self.segm_net = SegmentationNetwork(
            in_channels=d_channels,  # x~_t = [x, c_t], eq. (15)
            channels=attn_channels,
            pools=attn_pools,
            deconv_channels=deconv_channels,
            unpools=unpools,
            skips=skips,
            steps=steps,
        )
        core = (
            attn_channels[-1]
            * (self.patch_size[0] // attn_stride)
            * (self.patch_size[1] // attn_stride)
        )
        self.core_features = core  # size of the flattened v_t
        self.score_head = nn.Linear((hidden if box_network else 0) + core, 1)  # eq. (20)
        if not box_network:
            # Whole-image attention: re-projection density is (h/H)(w/W); start gamma_out at e^2
            # divided by it, and gamma_box alike, then learn them.
            density = (self.patch_size[0] / h) * (self.patch_size[1] / w)
            self.log_gains = nn.Parameter(
                torch.tensor([0.0, 2.0 - math.log(density), 2.0 - math.log(density)])
            )
        initialise_(self, init, "model.segmenter.init")
        # Channels-last convolutions: measured 1.8x (forward) and 1.5x (forward + backward) faster
        # for the box CNN at 224x224 on 2 CPU cores; also the preferred layout on GPUs.
        self.to(memory_format=torch.channels_last)
        if self.box_net is not None:
            nn.init.trunc_normal_(self.box_net.box_head.weight, std=0.01, a=-0.02, b=0.02)
            nn.init.zeros_(self.box_net.box_head.bias)
            # LSTM forget-gate bias 1 (the authors' initialisation); gates are ordered i, f, g, o.
            lstm = self.box_net.lstm
            with torch.no_grad():
                lstm.bias_ih.zero_()
                lstm.bias_hh.zero_()
                lstm.bias_ih[hidden : 2 * hidden] = 1.0

    def prepare(self, x: Tensor) -> Tensor:
        """x with the same values, stored as the T steps read it fastest (the filterbank's
        :func:`~recattend.models.filterbank.rows_layout`); call once per batch."""
        return rows_layout(x)

    def locate(self, x: Tensor, canvas: Tensor, t: int) -> BoxState:
        """Box network at step t: where to look (eq. 2-10)."""
        b = x.shape[0]
        h, w = self.image_size
        scale = x.new_tensor([h, w])
        if self.box_net is None:
            center = ((scale - 1) / 2).expand(b, 2)
            size = (scale - 1).expand(b, 2)
            gains = self.log_gains.exp().expand(b, 3)
            return BoxState(center, size, self._variance(size, None), gains, None, None)
        o, z, attention = self.box_net(torch.cat([canvas, x], 1), t)
        center = (o[:, 0:2] + 1) * scale / 2  # eq. (7-8)
        size = o[:, 2:4].exp() * scale  # eq. (9-10)
        log_gains = o[:, 6:9]
        if self.fixed_gamma:
            log_gains = torch.stack(
                [torch.zeros_like(o[:, 6]), o[:, 7], torch.full_like(o[:, 8], 2.0)], 1
            )
        return BoxState(
            center, size, self._variance(size, o[:, 4:6]), log_gains.exp(), z, attention
        )

    def _variance(self, size: Tensor, log_var: Tensor | None) -> Tensor:
        if self.dynamic_var and log_var is not None:
            return log_var.exp()
        # Variance = stride delta / patch size (the authors' CVPPP setting); floored to stay finite.
        return (size / size.new_tensor(self.patch_size)).clamp(min=1e-2)

    def segment(
        self, x: Tensor, canvas: Tensor, t: int, box: BoxState, patch_box: BoxState | None = None
    ) -> StepOutput:
        """Segmentation and scoring networks at step t (eq. 11-20, 25).

        Args:
            box: the box network's prediction; the soft box b_t always comes from it.
            patch_box: where to extract the patch instead (teacher forcing with a ground-truth
                box, as the authors' box "knob"); defaults to ``box``.
        """
        look = box if patch_box is None else patch_box
        f_y, f_x = filterbank(look.center, look.size, look.var, self.image_size, self.patch_size)
        # eq. (16) on x~_t = [x, c_t], per channel: x (in rows_layout, see prepare) and the canvas
        # apart, so the full-resolution image is never concatenated or copied per step.
        patch = look.gains[:, 0, None, None, None] * torch.cat(
            [extract(x, f_y, f_x), extract(canvas, f_y, f_x)], 1
        )
        y_tilde, v = self.segm_net(patch, t)  # eq. (17-18)
        mask = torch.sigmoid(
            look.gains[:, 2, None, None] * reproject(y_tilde, f_y, f_x)[:, 0] - BETA
        )  # eq. (19)
        soft_box = None
        if self.box_net is not None:  # eq. (25), from the predicted box even under teacher forcing
            soft_box = self.soft_box(box, (f_y, f_x) if patch_box is None else None)
        return StepOutput(mask, soft_box, self.score(box.z, v), box, box.edges())

    def score(self, z: Tensor | None, v: Tensor | None) -> Tensor:
        """s_t = sigmoid(w^T [z_t, v_t] + b) (eq. 20), (B,) in (0, 1).

        ``z`` is None without a box network. ``v`` None (the bootstrap box stage, before the
        segmentation network is trained) reads zeros in its place, so only the box network's part
        of the head is used and trained, like the authors' box-only score head.
        """
        if v is None:
            v = z.new_zeros(z.shape[0], self.core_features)
        features = v.flatten(1) if z is None else torch.cat([z, v.flatten(1)], 1)
        return torch.sigmoid(self.score_head(features))[:, 0]  # eq. (20)

    def box_only(self, box: BoxState) -> StepOutput:
        """The bootstrap box stage's step: soft box and score, no segmentation."""
        return StepOutput(None, self.soft_box(box), self.score(box.z, None), box, box.edges())

    def soft_box(self, box: BoxState, filters: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """b_t = sigmoid(gamma_box F_Y 1 F_X^T - beta) (eq. 25), (B, H, W) in (0, 1).

        ``filters`` may pass the box's (F_Y, F_X) when already built.
        """
        f_y, f_x = filters or filterbank(
            box.center, box.size, box.var, self.image_size, self.patch_size
        )
        # F_Y 1 F_X^T for the all-ones patch is the outer product of the filters' row sums.
        density = f_y.sum(2)[:, :, None] * f_x.sum(2)[:, None, :]
        return torch.sigmoid(box.gains[:, 1, None, None] * density - BETA)

    def step(self, x: Tensor, canvas: Tensor, t: int) -> StepOutput:
        """One full step without teacher forcing."""
        return self.segment(x, canvas, t, self.locate(x, canvas, t))

    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
        """Inference: run up to T steps, stopping each image once its score drops below threshold.

        An image that stopped gets all-zero masks and scores for its remaining steps; the loop ends
        early when every image has stopped. Images never influence each other (call ``eval()``
        first so BatchNorm uses its running statistics).

        Returns:
            ``masks`` (B, T, H, W) in [0, 1], ``scores`` (B, T), ``boxes`` (B, T, 4) the attended
            boxes as pixel edges (y0, x0, y1, x1) like the batch contract, ``attention``
            (B, T, K, H', W') when the box network is on; all zero for steps after the stop.
        """
        b, x = x.shape[0], self.prepare(x)
        canvas = x.new_zeros(b, 1, *self.image_size)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        masks = x.new_zeros(b, self.steps, *self.image_size)
        scores, boxes = x.new_zeros(b, self.steps), x.new_zeros(b, self.steps, 4)
        attention = []
        for t in range(self.steps):
            out = self.step(x, canvas, t)
            active = active & (out.score >= threshold)
            keep = active.to(masks.dtype)
            masks[:, t] = out.mask * keep[:, None, None]
            scores[:, t] = out.score * keep
            boxes[:, t] = out.box_edges * keep[:, None]
            if out.box.attention is not None:
                attention.append(out.box.attention * keep[:, None, None, None])
            canvas = torch.maximum(canvas, masks[:, t, None])  # eq. (1)
            # A threshold of 0 never stops an image (scores are >= 0): the loop then has no
            # data-dependent exit, so that a traced or exported graph runs all T steps.
            if threshold > 0 and not active.any():
                break
        result = {"masks": masks, "scores": scores, "boxes": boxes}
        if attention:
            pad = [attention[-1].new_zeros(attention[-1].shape)] * (self.steps - len(attention))
            result["attention"] = torch.stack(attention + pad, 1)
        return result
