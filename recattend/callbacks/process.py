"""The process-wide settings (:func:`recattend.ops.configure`, and the filters of known library
noise, :func:`recattend.utils.log_filters.silence_known_noise`) in every process of a run.

The entry points make them at start-up; processes that Lightning starts afresh for DDP
(``ddp_spawn``) import recattend anew and would run with the defaults, so this callback makes the
same settings again in each of them before anything is computed (``setup``).
"""

from __future__ import annotations

from typing import Any

import lightning as L

from recattend import ops
from recattend.utils.log_filters import silence_known_noise


class ProcessSettings(L.Callback):
    """Calls :func:`recattend.ops.configure` with ``settings`` and installs the noise filters when
    a Trainer stage starts, in every process (a repeat call in the launching process changes
    nothing)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ops.configure(**self.settings)
        silence_known_noise()
