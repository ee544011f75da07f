"""Helpers shared by several test modules: tiny networks, batches, data and run overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from recattend.data import SyntheticDataModule
from recattend.lit import SegmenterModule
from recattend.models import Preprocessor, SegmenterNetwork

ROOT = Path(__file__).resolve().parents[1]  # the repository
CONF = ROOT / "conf"

# A segmenter small enough for CPU tests at 32x32 (total box stride 8, patch 16x16).
TINY_SEGMENTER = dict(
    patch_size=[16, 16],
    box_channels=[4, 4, 8],
    box_pools=[2, 2, 2],
    attn_channels=[4, 8],
    attn_pools=[2, 2],
    deconv_channels=[8, 4, 1],
    unpools=[2, 2, 1],
    skips=[False, True, True],
    hidden=16,
    glimpses=2,
)

# An FCN pre-processor small enough for CPU tests (total stride 4).
SMALL_FCN = dict(
    encoder_channels=[4, 4],
    encoder_pools=[2, 2],
    decoder_channels=[4],
    decoder_unpools=[2, 2],
    decoder_skips=[False, True],
)

# `python train.py` overrides for a tiny synthetic run (32x32, 8 training images, one epoch).
TINY = [
    "dataset.resolution=[32,32]",
    "dataset.num_train=8",
    "dataset.num_val=4",
    "dataset.num_test=4",
    "dataset.batch_size=4",
    "dataset.max_objects=3",
    "dataset.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
]


def tiny_network(
    max_instances: int = 3,
    image_size: Sequence[int] = (32, 32),
    segmenter: Mapping[str, Any] | None = None,
    preprocessor: Preprocessor | Mapping[str, Any] | None = None,
    **network: Any,
) -> SegmenterNetwork:
    """:data:`TINY_SEGMENTER` (updated with ``segmenter``) reading ``preprocessor``'s maps (a
    built one, or the settings of a fresh one, e.g. :data:`SMALL_FCN`); ``network``: the other
    :class:`SegmenterNetwork` arguments (``angles``, ``finetune``)."""
    if preprocessor is not None and not isinstance(preprocessor, Preprocessor):
        preprocessor = Preprocessor(**preprocessor)
    return SegmenterNetwork(
        image_size=list(image_size),
        max_instances=max_instances,
        segmenter={**TINY_SEGMENTER, **(segmenter or {})},
        preprocessor=preprocessor,
        **network,
    )


def tiny_segmenter(
    max_instances: int = 3,
    image_size: Sequence[int] = (32, 32),
    segmenter: Mapping[str, Any] | None = None,
    preprocessor: Preprocessor | Mapping[str, Any] | None = None,
    network: Mapping[str, Any] | None = None,
    **module_settings: Any,
) -> SegmenterModule:
    """A :class:`SegmenterModule` of :func:`tiny_network` (its other arguments: ``network``)
    with ``module_settings``."""
    net = tiny_network(max_instances, image_size, segmenter, preprocessor, **(network or {}))
    return SegmenterModule(net=net, **module_settings)


def quiet_trainer(
    folder: Path, max_steps: int, callbacks: Sequence[Any] = (), **settings: Any
) -> L.Trainer:
    """A CPU Lightning Trainer for tests: no logger, progress bar, model summary or validation
    (unless ``settings`` say otherwise), checkpoints under ``folder``."""
    return L.Trainer(
        **{
            "default_root_dir": folder,
            "max_steps": max_steps,
            "accelerator": "cpu",
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "callbacks": list(callbacks),
            **settings,
        }
    )


def tiny_batch(n: int = 3) -> dict:
    """One training batch of n synthetic 32x32 images with 0-4 objects (3 slots kept)."""
    dm = SyntheticDataModule(
        resolution=[32, 32],
        max_instances=3,
        batch_size=n,
        num_train=n,
        augment=None,
        min_objects=0,
        max_objects=4,
    )
    return next(iter(dm.train_dataloader()))


def tiny_data(num_train: int = 8) -> SyntheticDataModule:
    """Synthetic 32x32 data with 1-3 objects, batches of 4, 4 validation and test images."""
    return SyntheticDataModule(
        resolution=[32, 32],
        max_instances=3,
        batch_size=4,
        num_train=num_train,
        num_val=4,
        num_test=4,
        min_objects=1,
        max_objects=3,
        num_workers=0,
        augment=None,
    )


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 240):
    """Run ``python <args>`` as a user would, with this interpreter and ``env`` added."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
