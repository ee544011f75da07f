"""Lightning callbacks of the platform."""

from recattend.callbacks.bootstrap import BootstrapStages
from recattend.callbacks.curve import LearningCurve
from recattend.callbacks.figures import ValidationFigures
from recattend.callbacks.process import ProcessSettings
from recattend.callbacks.sampling import ScheduledSampling
from recattend.callbacks.teardown import ProcessGroupTeardown

__all__ = [
    "BootstrapStages",
    "LearningCurve",
    "ProcessGroupTeardown",
    "ProcessSettings",
    "ScheduledSampling",
    "ValidationFigures",
]
