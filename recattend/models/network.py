"""The whole network of the paper: the FCN pre-processor's maps joined to the image as the input x,
read by the recurrent segmenter (paper section 2).

:class:`SegmenterNetwork` is what the ``model`` config group builds (``conf/model/full.yaml``) and
what :class:`~recattend.lit.segmenter.SegmenterModule` trains. It is rebuilt from plain values:
:attr:`SegmenterNetwork.settings` holds everything needed, including the pre-processor's own
architecture, so a segmenter checkpoint loads without the pre-processor's file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recattend.models.preprocessor import Preprocessor, foreground_probability
from recattend.models.segmenter import RecurrentSegmenter
from recattend.utils.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

# The keys of the pre-processor input and their meaning when absent.
PREPROCESSOR_DEFAULTS = {"ckpt_path": None, "angles": True, "finetune": False, "enabled": True}


def load_preprocessor(
    path: str | Path, key: str = "model.preprocessor.ckpt_path"
) -> tuple[Preprocessor, dict[str, Any]]:
    """The :class:`Preprocessor` of a ``module=preprocessor`` checkpoint (``weights_only=True``),
    with the keyword arguments that build it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a pre-processor checkpoint.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{key}={path}: no such file; train one with `python train.py module=preprocessor "
            "dataset=...` and pass its checkpoints/last.ckpt"
        )
    checkpoint = read_checkpoint(file, key)
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not weights or "image_size" not in hparams:
        raise ValueError(
            f"{key}={path} is not a pre-processor checkpoint (module=preprocessor): it has no "
            "'net.*' weights and pre-processor hyper-parameters"
        )
    config = dict(hparams.get("net") or {})
    net = Preprocessor(**config)
    net.load_state_dict(weights)
    return net, config


class SegmenterNetwork(nn.Module):
    """The recurrent segmenter reading x = [image, pre-processor maps] (paper section 2).

    Args:
        image_size: network input (H, W) (``${dataset.resolution}``).
        max_instances: instance slots (``${dataset.max_instances}``); the segmenter runs
            T = this + 1 steps (the paper's maximum number of objects plus one).
        segmenter: keyword arguments of :class:`~recattend.models.segmenter.RecurrentSegmenter`
            other than ``image_size`` and ``steps``; its ``in_channels`` (default 3) counts the
            image's channels, the pre-processor's are added to it.
        preprocessor: the FCN pre-processor's input, or None for raw pixels: ``ckpt_path`` (a
            ``module=preprocessor`` checkpoint; None: raw pixels), ``angles`` (use its 8 angle
            maps too; False for the ``no_angle`` ablation, which needs an FCN trained without
            them), ``finetune`` (train it with the segmenter; default frozen, in evaluation
            mode), ``enabled`` (False for ``no_pre_proc``: raw pixels whatever ``ckpt_path``
            says). ``net`` (its architecture, as stored in :attr:`settings`) rebuilds it without
            the file; the weights then come with the segmenter's checkpoint.

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
        preprocessor: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.input_settings = {**PREPROCESSOR_DEFAULTS, **dict(preprocessor or {})}
        self.preprocessor, extra_channels = self._build_preprocessor(self.input_settings)
        segmenter = dict(segmenter or {})
        in_channels = segmenter.pop("in_channels", 3)
        self.segmenter = RecurrentSegmenter(
            image_size=image_size,
            steps=max_instances + 1,
            in_channels=in_channels + extra_channels,
            **segmenter,
        )
        # Plain values that rebuild this network (saved in the segmenter's checkpoints).
        self.settings = {
            "image_size": [int(s) for s in image_size],
            "max_instances": int(max_instances),
            "segmenter": {"in_channels": in_channels, **segmenter},
            "preprocessor": self.input_settings,
        }

    def _build_preprocessor(self, settings: dict[str, Any]) -> tuple[Preprocessor | None, int]:
        """The frozen (or fine-tuned) pre-processor and the channels it adds to x."""
        if not settings["enabled"] or not (
            settings["ckpt_path"] or settings.get("net") is not None
        ):
            if not settings["angles"] and settings["enabled"]:
                log.warning("model=no_angle without model.preprocessor.ckpt_path: raw pixels only")
            return None, 0
        if (
            settings.get("net") is not None
        ):  # rebuilt from a segmenter checkpoint; weights come with it
            preprocessor = Preprocessor(**settings["net"])
        else:
            preprocessor, settings["net"] = load_preprocessor(settings["ckpt_path"])
            if not settings["angles"] and preprocessor.angles:
                # The paper's no-angle ablation trains the pre-processor without the angle task;
                # dropping the angle maps of one trained with it is another experiment.
                raise ValueError(
                    "model.preprocessor.angles=false (model=no_angle) needs a pre-processor "
                    "trained without angles, but model.preprocessor.ckpt_path="
                    f"{settings['ckpt_path']} has an angle head. Train one with "
                    "module.net.angles=false (e.g. python train.py "
                    "experiment=synthetic_preprocessor module.net.angles=false) and pass it as "
                    "preprocessors.foreground=<its last.ckpt> (or model.preprocessor.ckpt_path)"
                )
        if settings["angles"] and not preprocessor.angles:
            raise ValueError(
                f"model.preprocessor.ckpt_path={settings['ckpt_path']} has no angle head, but "
                f"the segmenter expects its {preprocessor.feature_channels(True)} channels "
                "(foreground + 8 angles): use model=no_angle (foreground only) or a pre-processor "
                "trained with module.net.angles=true"
            )
        if not settings["finetune"]:
            preprocessor.requires_grad_(False).eval()  # and kept in eval mode by train()
        return preprocessor, preprocessor.feature_channels(settings["angles"])

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

    def inputs(self, image: Tensor) -> Tensor:
        """x of the paper, (B, C + 1 or 9 or K + 9, H, W): the image (B, C, H, W), then the
        pre-processor's maps when there is one (no gradient into a frozen one)."""
        if self.preprocessor is None:
            return image
        finetune = self.input_settings["finetune"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and finetune):
            features = self.preprocessor.features(image, self.input_settings["angles"])
        return torch.cat([image, features], 1)

    def train(self, mode: bool = True) -> SegmenterNetwork:
        super().train(mode)
        if self.preprocessor is not None and not self.input_settings["finetune"]:
            self.preprocessor.eval()  # frozen: its BatchNorm keeps the trained statistics
        return self

    def predict(self, image: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
        """:meth:`RecurrentSegmenter.predict` on x built from ``image`` (B, C, H, W)."""
        return self.segmenter.predict(self.inputs(image), threshold=threshold)

    def postprocess_maps(
        self, image: Tensor, size: tuple[int, int], foreground: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """The pre-processor's maps that the post-processing uses, upsampled bilinearly to
        ``size`` (H, W) from ``image`` (B, C, h, w): (B, H, W) float foreground probability when
        ``foreground`` is asked for, and (B, H, W) int64 semantic classes (train ids,
        0 = background) with a semantic pre-processor; None for each one not asked for or
        without a pre-processor."""
        semantic_net = self.preprocessor is not None and self.preprocessor.num_classes > 0
        wanted = foreground and self.preprocessor is not None
        if not (wanted or semantic_net):
            return None, None
        maps = self.preprocessor(image)

        def resize(x: Tensor) -> Tensor:
            return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)

        probability = resize(foreground_probability(maps))[:, 0] if wanted else None
        semantic = resize(maps["semantic"].softmax(1)).argmax(1) if semantic_net else None
        return probability, semantic
