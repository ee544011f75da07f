"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recattend.utils.config import require_writable_dir


class OutputDirCheck(Callback):
    """Fails before Hydra creates the run folder if it could not be written.

    Hydra would otherwise stop with a bare ``PermissionError`` from ``mkdir``; this names the
    setting to change.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        require_writable_dir(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        require_writable_dir(OmegaConf.select(config, "hydra.sweep.dir"), "hydra.sweep.dir")
