"""Lightning callbacks of the platform."""

from recattend.callbacks.averaging import EMAWeights
from recattend.callbacks.bootstrap import BootstrapStages
from recattend.callbacks.checkpoint import LastCheckpoint
from recattend.callbacks.curve import LearningCurve
from recattend.callbacks.figures import ValidationFigures
from recattend.callbacks.interrupt import SaveOnInterrupt
from recattend.callbacks.process import ProcessSettings
from recattend.callbacks.progress import ProgressReport
from recattend.callbacks.progress_bar import KeyMetricsProgressBar
from recattend.callbacks.sampling import ScheduledSampling
from recattend.callbacks.summary import LoggedModelSummary
from recattend.callbacks.teardown import ProcessGroupTeardown

__all__ = [
    "BootstrapStages",
    "EMAWeights",
    "KeyMetricsProgressBar",
    "LastCheckpoint",
    "LearningCurve",
    "LoggedModelSummary",
    "ProcessGroupTeardown",
    "ProcessSettings",
    "ProgressReport",
    "SaveOnInterrupt",
    "ScheduledSampling",
    "ValidationFigures",
]
