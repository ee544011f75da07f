"""Plain ``nn.Module`` s of the paper (no Lightning, no Hydra)."""

from recattend.models.network import SegmenterNetwork
from recattend.models.preprocessor import Preprocessor
from recattend.models.segmenter import RecurrentSegmenter

__all__ = ["Preprocessor", "RecurrentSegmenter", "SegmenterNetwork"]
