"""A scripted LightningModule for callback tests: known losses and validation values, instantly.

Batches are dicts of 6 blank images (as the batch contract's ``image``); training step k (the
global step it makes) returns loss k, and the n-th validation logs ``val/sbd`` = ``sbd[n]``. The
weight moves by one per step (SGD, lr 1, gradient -1), so a checkpoint's weight tells its step.
It has the attributes :class:`~recattend.callbacks.BootstrapStages` sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Images(Dataset):
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(3, 2, 2)}


class Scripted(L.LightningModule):
    """Loss k at step k, ``val/sbd`` from ``sbd`` (module docstring)."""

    def __init__(self, sbd: Sequence[float] = (0.5, 0.7, 0.9)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.stage, self.stage_overrides = "box", {}
        self.sbd = list(sbd)
        self.validations = 0

    def supports_stage(self, name: str) -> bool:
        return True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Value k; d loss / d weight = -1, so SGD with lr 1 adds one to the weight per step.
        return float(self.global_step + 1) + self.weight.detach().sum() - self.weight.sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val/sbd", self.sbd[self.validations])
            self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Images(100), batch_size=6)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Images(6), batch_size=6)
