"""Plain ``nn.Module`` s of the paper (no Lightning, no Hydra): the FCN pre-processor for now."""

from recattend.models.preprocessor import Preprocessor

__all__ = ["Preprocessor"]
