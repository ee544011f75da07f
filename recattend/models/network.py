"""The whole network of the paper: the FCN pre-processor's maps joined to the image as the input x,
read by the recurrent segmenter (paper section 2).

:class:`SegmenterNetwork` is what the ``model`` config group builds (``conf/model/full.yaml``) and
what :class:`~recattend.lit.segmenter.SegmenterModule` trains. It takes the pre-processor built
(``recattend.lit.load_preprocessor`` reads one from its checkpoint) and is rebuilt from plain
values: :attr:`SegmenterNetwork.settings` holds everything needed, including the pre-processor's
own architecture, so a segmenter checkpoint loads without the pre-processor's file
(:meth:`SegmenterNetwork.from_settings`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from recattend.models.preprocessor import Preprocessor
from recattend.models.segmenter import RecurrentSegmenter

log = logging.getLogger(__name__)


class SegmenterNetwork(nn.Module):
    """The recurrent segmenter reading x = [image, pre-processor maps] (paper section 2).

    Args:
        image_size: network input (H, W) (``${dataset.resolution}``).
        max_instances: instance slots (``${dataset.max_instances}``); the segmenter runs
            T = this + 1 steps (the paper's maximum number of objects plus one).
        segmenter: keyword arguments of :class:`~recattend.models.segmenter.RecurrentSegmenter`
            other than ``image_size`` and ``steps``; its ``in_channels`` (default 3) counts the
            image's channels, the pre-processor's are added to it.
        preprocessor: the trained FCN pre-processor whose maps join the image, or None for raw
            pixels (``no_pre_proc``).
        angles: use its 8 angle maps too (9 channels); False (``no_angle``) the foreground
            only, which needs an FCN trained without the angle task.
        finetune: train the pre-processor with the segmenter; by default it is frozen, in
            evaluation mode.

    Attributes:
        settings: the arguments as plain values (the pre-processor as its own
            :attr:`~recattend.models.Preprocessor.settings`), saved in the segmenter's
            checkpoints.

    Raises:
        ValueError: the pre-processor's heads do not fit ``angles`` (the message says which
            model or FCN recipe to use).
    """

    def __init__(
        self,
        *,
        image_size: Sequence[int],
        max_instances: int,
        segmenter: Mapping[str, Any] | None = None,
        preprocessor: Preprocessor | None = None,
        angles: bool = True,
        finetune: bool = False,
    ) -> None:
        super().__init__()
        self.angles, self.finetune = bool(angles), bool(finetune)
        self.preprocessor = preprocessor
        extra_channels = 0
        if preprocessor is not None:
            _check_heads(preprocessor, self.angles)
            if not finetune:
                preprocessor.requires_grad_(False).eval()  # and kept in eval mode by train()
            extra_channels = preprocessor.feature_channels(self.angles)
        elif not self.angles:
            log.warning("model=no_angle without a pre-processor checkpoint: raw pixels only")
        segmenter = dict(segmenter or {})
        in_channels = segmenter.pop("in_channels", 3)
        self.segmenter = RecurrentSegmenter(
            image_size=image_size,
            steps=max_instances + 1,
            in_channels=in_channels + extra_channels,
            **segmenter,
        )
        self.settings = {
            "image_size": [int(s) for s in image_size],
            "max_instances": int(max_instances),
            "segmenter": {"in_channels": in_channels, **segmenter},
            "preprocessor": None if preprocessor is None else dict(preprocessor.settings),
            "angles": self.angles,
            "finetune": self.finetune,
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SegmenterNetwork:
        """The network that :attr:`settings` describe, with fresh weights (a checkpoint's
        ``state_dict`` then fills them, the pre-processor's included)."""
        settings = dict(settings)
        architecture = settings.pop("preprocessor", None)
        preprocessor = None if architecture is None else Preprocessor(**architecture)
        return cls(**settings, preprocessor=preprocessor)

    @property
    def steps(self) -> int:
        """T, the number of steps (instance slots + 1)."""
        return self.segmenter.steps

    @property
    def image_size(self) -> tuple[int, int]:
        """The network input (H, W)."""
        return self.segmenter.image_size

    def fit_state(
        self, state: Mapping[str, Tensor], image_size: Sequence[int], prefix: str = ""
    ) -> dict[str, Tensor]:
        """A ``state_dict`` of this network built for another ``image_size`` (H, W), made to fit
        this one's: a starting point for fine-tuning at another resolution.

        Only the glimpse MLP's output layer depends on the resolution: one attention logit per
        cell of the box CNN's feature map (eq. 5), a (cells, hidden) weight and a (cells,) bias.
        Both are resampled bilinearly from the other grid to this one, so the attention starts
        with the same layout over the image; every other entry is returned as it is.

        Args:
            state: the other network's entries, named ``<prefix><this network's names>``.
            image_size: the resolution it was built for.
            prefix: e.g. ``"net."`` for a :class:`~recattend.lit.SegmenterModule`'s entries.
        """
        box_net = self.segmenter.box_net
        fitted = dict(state)
        if box_net is None or box_net.glimpse_mlp is None:
            return fitted
        grid = box_net.feature_size
        stride = (self.image_size[0] // grid[0], self.image_size[1] // grid[1])
        source = (int(image_size[0]) // stride[0], int(image_size[1]) // stride[1])
        if source == grid:
            return fitted
        for suffix in ("weight", "bias"):
            name = f"{prefix}segmenter.box_net.glimpse_mlp.2.{suffix}"
            if name not in fitted or fitted[name].shape[0] != source[0] * source[1]:
                continue
            value = fitted[name]
            cells = value.reshape(*source, -1).permute(2, 0, 1)[None]  # (1, hidden or 1, H', W')
            cells = nn.functional.interpolate(
                cells, size=grid, mode="bilinear", align_corners=False
            )
            fitted[name] = cells[0].permute(1, 2, 0).reshape(grid[0] * grid[1], *value.shape[1:])
        log.info(
            "attention logits resampled from %dx%d to %dx%d cells (image %s -> %s)",
            *source, *grid, list(image_size), list(self.image_size),
        )  # fmt: skip
        return fitted

    def _features(self, image: Tensor) -> Tensor | None:
        """The pre-processor's maps that join the image (:meth:`Preprocessor.features`), no
        gradient into a frozen one; None without a pre-processor."""
        if self.preprocessor is None:
            return None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune):
            return self.preprocessor.features(image, self.angles)

    def inputs(self, image: Tensor) -> Tensor:
        """x of the paper, (B, C + 1 or 9 or K + 9, H, W): the image (B, C, H, W), then the
        pre-processor's maps when there is one."""
        features = self._features(image)
        return image if features is None else torch.cat([image, features], 1)

    def train(self, mode: bool = True) -> SegmenterNetwork:
        super().train(mode)
        if self.preprocessor is not None and not self.finetune:
            self.preprocessor.eval()  # frozen: its BatchNorm keeps the trained statistics
        return self

    def predict(self, image: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
        """:meth:`RecurrentSegmenter.predict` on x built from ``image`` (B, C, H, W), with the
        pre-processor's maps that the post-processing reads (:class:`~recattend.postprocess.
        PostProcess`) when there is one: ``foreground`` (B, H, W) float, its foreground
        probability, and with a semantic pre-processor ``semantic`` (B, K + 1, H, W) float, its
        class probabilities (class 0 the background)."""
        features = self._features(image)
        x = image if features is None else torch.cat([image, features], 1)
        out = self.segmenter.predict(x, threshold=threshold)
        if features is not None:
            classes = self.preprocessor.num_classes
            if classes:
                out["semantic"] = features[:, : classes + 1]
                out["foreground"] = 1 - features[:, 0]
            else:
                out["foreground"] = features[:, 0]
        return out


def _check_heads(preprocessor: Preprocessor, angles: bool) -> None:
    """The pre-processor must have the heads the segmenter reads."""
    if angles and not preprocessor.angles:
        raise ValueError(
            "the pre-processor has no angle head, but the segmenter expects its "
            f"{preprocessor.feature_channels(True)} channels (foreground + 8 angles): use "
            "model=no_angle (foreground only) or a pre-processor trained with "
            "module.net.angles=true"
        )
    if not angles and preprocessor.angles:
        # The paper's no-angle ablation trains the pre-processor without the angle task;
        # dropping the angle maps of one trained with it is another experiment.
        raise ValueError(
            "model.angles=false (model=no_angle) needs a pre-processor trained without angles, "
            "but this one has an angle head. Train one with module.net.angles=false (e.g. python "
            "train.py experiment=synthetic_preprocessor module.net.angles=false) and pass it as "
            "preprocessors.foreground_ckpt=<its last.ckpt> (or model.preprocessor.ckpt_path)"
        )
