"""The DataModule base shared by every dataset, and the dataset that turns raw samples into the
batch contract (docs/design.md, "The batch contract").

A concrete dataset only says how to read one split as :class:`RawSample` s (image + instance
masks + meta); augmentation (:mod:`recattend.data.augment`), resizing, sorting, padding, boxes,
foreground and angle targets, collation and loaders are common and live here.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from recattend.data.augment import AugmentPolicy
from recattend.data.targets import collate, instance_targets
from recattend.data.transforms import build_transform

SPLITS = ("train", "val", "test")


def init_worker(worker_id: int) -> None:
    """Start a DataLoader worker: it ignores the signals that stop a run, then seeds itself as
    Lightning does after ``seed_everything(seed, workers=True)``.

    Ctrl-C, ``timeout`` and SLURM signal the whole process group. A worker would die of SIGTERM
    or SIGUSR1 (PyTorch then raises "DataLoader worker ... killed" in the training process, in
    the middle of a step) or leave on SIGINT, before the training process has saved its
    checkpoint (:mod:`recattend.callbacks.interrupt`); that process stops the workers itself.
    Lightning adds its seeding function only to loaders without a ``worker_init_fn``, hence the
    call here (with the rank Lightning would pass: this process's global rank).
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        pl_worker_init_function(worker_id)


class EvaluationSampler(DistributedSampler):
    """Each image of an evaluation split exactly once over all DDP ranks: rank r takes images
    r, r + world, ... (ranks may get one image fewer than others).

    Lightning's default ``DistributedSampler`` pads the split to a multiple of the world size by
    repeating images, which would count them twice in SBD, |DiC|, coverage and AP. The metrics
    are torchmetrics states reduced over ranks, so uneven shares are fine.
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class RawSample(NamedTuple):
    """One image as a dataset reads it, before augmentation.

    Attributes:
        image: (H, W, 3) uint8 RGB at any size.
        masks: (N, H, W) bool instance masks in painter's order (later on top); N may be 0.
        meta: facts kept for evaluation and export: at least ``id`` and ``orig_size`` (H, W), and
            for file datasets the ``image`` and ``label`` paths (full-resolution ground truth).
        classes: (N,) int class of each instance (1..K) for multi-class data, else None.
        semantic: (H, W) int per-pixel class (0 background, 1..K, < 255), else None.
    """

    image: np.ndarray
    masks: np.ndarray
    meta: dict[str, Any]
    classes: np.ndarray | None = None
    semantic: np.ndarray | None = None


class InstanceDataset(Dataset):
    """Applies a transform jointly to image and masks, then builds the contract's targets.

    Augmentations draw their randomness from torch's generator: in the main process that is seeded
    by ``seed_everything``; in a DataLoader worker torch seeds it from the loader's per-epoch base
    seed plus the worker id. So every worker and every epoch draws different augmentations, and a
    seeded run repeats exactly.
    """

    def __init__(
        self,
        source: Sequence[RawSample],
        max_instances: int,
        transform: Any,
        augmented: bool,
        empty_last_slot: bool = True,
    ) -> None:
        self.source = source
        self.max_instances = max_instances
        self.transform = transform
        self.augmented = augmented
        self.empty_last_slot = empty_last_slot

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.source[index]
        if self.augmented:
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        h, w = raw.image.shape[:2]
        masks = np.asarray(raw.masks, dtype=np.uint8).reshape(-1, h, w)
        n = masks.shape[0]
        # The semantic map rides along as one more (nearest-neighbour) mask; albumentations needs
        # at least one mask, so an image without instances or semantics gets a blank one.
        extra = [raw.semantic.astype(np.uint8)] if raw.semantic is not None else []
        if not n and not extra:
            extra = [np.zeros((h, w), np.uint8)]
        out = self.transform(
            image=raw.image, masks=np.concatenate([masks, np.stack(extra)]) if extra else masks
        )
        image, transformed = out["image"], np.asarray(out["masks"])
        semantic = transformed[n] if raw.semantic is not None else None
        return instance_targets(
            image, transformed[:n], self.max_instances, raw.meta, raw.classes, semantic,
            self.empty_last_slot,
        )  # fmt: skip


class InstanceDataModule(L.LightningDataModule, ABC):
    """Splits, transforms, collation and loaders for instance segmentation data.

    Args:
        resolution: network input (H, W); every sample is resized to it.
        max_instances: instance slots per image, T - 1 (the sequence length T is one more).
        batch_size: images per device and step (under DDP the global batch is this times the
            world size).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster host-to-GPU copies.
        augment: the training split's augmentation policy (:mod:`recattend.data.augment`):
            ``per_image`` albumentations transforms, and a batch-shared ``shift`` and ``flips``
            (in the bootstrap stages ``flip_stages``); None: none.
        keep_aspect_ratio: fit images inside the resolution and zero-pad (True) rather than
            stretch them to it (False, the authors' choice).
        empty_last_slot: keep the last of the T slots empty, so every image has a stop target
            (True); False lets all T slots take instances (the authors' Cityscapes training).

    Attributes:
        stage: the current bootstrap stage (``box``, ``full``) set by
            :class:`~recattend.callbacks.BootstrapStages`, None without stages; the policy's
            flips apply only in its ``flip_stages``.
        paper_table: the layout of the paper's results table that the tasks print for this
            dataset (:data:`recattend.report.TABLES`), None for a generic one.
        main_metric: its benchmark's main metric among the validation metrics (``val/<name>``,
            higher is better): what picks the best checkpoint unless ``monitor.metric`` names
            another.

    Raises:
        ValueError: at construction, naming the ``dataset.*`` key and its constraint.
    """

    def __init__(
        self,
        *,
        resolution: Sequence[int],
        max_instances: int,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: Mapping[str, Any] | None = None,
        keep_aspect_ratio: bool = False,
        empty_last_slot: bool = True,
    ) -> None:
        super().__init__()
        if len(resolution) != 2 or any(int(s) < 1 for s in resolution):
            raise ValueError(
                f"dataset.resolution={list(resolution)} must be two positive integers [H, W]"
            )
        _require_positive("dataset.max_instances", max_instances)
        _require_positive("dataset.batch_size", batch_size)
        if num_workers < 0:
            raise ValueError(f"dataset.num_workers={num_workers} must be >= 0")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.max_instances = int(max_instances)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.augment = AugmentPolicy.parse(augment, self.resolution)
        self.keep_aspect_ratio = keep_aspect_ratio
        self.empty_last_slot = bool(empty_last_slot)
        self.stage: str | None = None
        # A bootstrap stage's own training batch size (BootstrapStages), and the batch size of
        # the training loader last built: the loader is stale while they differ.
        self.stage_batch_size: int | None = None
        self.loader_batch_size: int | None = None
        self._transform(True)  # fail at start-up, not in a worker
        self.datasets: dict[str, InstanceDataset] = {}

    paper_table: str | None = None
    main_metric = "sbd"

    def labelled(self, split: str) -> bool:
        """Whether ``split`` has ground truth (an unlabelled test folder serves prediction)."""
        return True

    @property
    def seq_len(self) -> int:
        """The paper's T: instance slots plus one for the stop step."""
        return self.max_instances + 1

    @abstractmethod
    def build_source(self, split: str) -> Sequence[RawSample]:
        """Read one split ("train", "val" or "test") as a sequence of raw samples."""

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            if split in self.datasets:
                continue
            source = self.build_source(split)
            if len(source) == 0:
                raise ValueError(
                    f"the {split} split of {type(self).__name__} is empty: nothing to "
                    f"{'train on' if split == 'train' else 'evaluate'}; check the dataset settings"
                )
            augmented = split == "train" and bool(self.augment.per_image)
            self.datasets[split] = InstanceDataset(
                source,
                self.max_instances,
                self._transform(augmented),
                augmented,
                self.empty_last_slot,
            )

    def _transform(self, augmented: bool) -> Any:
        return build_transform(
            self.augment.per_image if augmented else None, self.resolution, self.keep_aspect_ratio
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Any:
        """The policy's batch-shared shift and flips, on training batches only, on the device."""
        trainer = self.trainer
        if trainer is not None and trainer.training and self.augment.batched:
            return self.augment(batch, self.stage)
        return batch

    @property
    def train_batch_size(self) -> int:
        """The training batch size per device now: the bootstrap stage's, else
        ``dataset.batch_size`` (the evaluation splits always use the latter)."""
        return self.stage_batch_size or self.batch_size

    @property
    def loader_stale(self) -> bool:
        """Whether the training loader was built for another batch size than the stage's."""
        return self.loader_batch_size not in (None, self.train_batch_size)

    def _loader(self, split: str) -> DataLoader:
        batch_size = self.train_batch_size if split == "train" else self.batch_size
        if split == "train":
            self.loader_batch_size = batch_size
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        # Under DDP the evaluation splits are split without padding (EvaluationSampler); the
        # training split gets Lightning's shuffling DistributedSampler.
        distributed = split != "train" and dist.is_available() and dist.is_initialized()
        return DataLoader(
            dataset,
            sampler=EvaluationSampler(dataset) if distributed else None,
            batch_size=batch_size,
            shuffle=split == "train",
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            worker_init_fn=init_worker,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _require_positive(key: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"{key}={value} must be >= 1")
