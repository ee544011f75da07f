"""Datasets in their official layouts, the embedded synthetic data, transforms and DataModules."""

from recattend.data.base import InstanceDataModule, InstanceDataset, RawSample
from recattend.data.cityscapes import CityscapesDataModule
from recattend.data.coco import COCODataModule
from recattend.data.cvppp import CVPPPDataModule
from recattend.data.files import FileDataModule
from recattend.data.kitti import KITTIDataModule
from recattend.data.synthetic import SyntheticDataModule

__all__ = [
    "COCODataModule",
    "CVPPPDataModule",
    "CityscapesDataModule",
    "FileDataModule",
    "InstanceDataModule",
    "InstanceDataset",
    "KITTIDataModule",
    "RawSample",
    "SyntheticDataModule",
]
