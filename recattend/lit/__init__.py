"""LightningModules: training, validation and test logic around the plain models, and their
loading from checkpoints."""

from recattend.lit.loading import load_module, load_preprocessor
from recattend.lit.preprocessor import PreprocessorModule
from recattend.lit.segmenter import SegmenterModule

__all__ = ["PreprocessorModule", "SegmenterModule", "load_module", "load_preprocessor"]
