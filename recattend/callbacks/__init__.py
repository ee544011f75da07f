"""Lightning callbacks of the platform."""

from recattend.callbacks.curve import LearningCurve
from recattend.callbacks.figures import ValidationFigures
from recattend.callbacks.teardown import ProcessGroupTeardown

__all__ = ["LearningCurve", "ProcessGroupTeardown", "ValidationFigures"]
