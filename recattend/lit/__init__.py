"""LightningModules: training, validation and test logic around the plain models."""

from recattend.lit.preprocessor import PreprocessorModule
from recattend.lit.segmenter import SegmenterModule

__all__ = ["PreprocessorModule", "SegmenterModule"]
