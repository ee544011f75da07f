"""LightningModules: training, validation and test logic around the plain models."""

from recattend.lit.preprocessor import PreprocessorModule

__all__ = ["PreprocessorModule"]
