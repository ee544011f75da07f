"""Datasets in their official layouts, the embedded synthetic data, transforms and DataModules."""

from recattend.data.base import InstanceDataModule, InstanceDataset, RawSample
from recattend.data.synthetic import SyntheticDataModule

__all__ = ["InstanceDataModule", "InstanceDataset", "RawSample", "SyntheticDataModule"]
