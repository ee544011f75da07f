"""Turning composed Hydra configs into objects, and start-up checks on them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a named group (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(node, _convert_="all") for node in group.values() if node and "_target_" in node
    ]


def require_writable_dir(path: str | os.PathLike[str], key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there.

    Raises:
        PermissionError: naming ``key`` and the folder, before any work starts.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"{key}: cannot write to '{folder}' ({err.strerror or err}). Point it at a writable "
            f"folder, e.g. `python train.py hydra.run.dir=/tmp/recattend-run` or set "
            f"RECATTEND_OUTPUTS=/a/writable/folder."
        ) from err
    return folder


def check_multirun_strategy(trainer_cfg: DictConfig) -> None:
    """Refuse a subprocess-launching DDP strategy inside a Hydra multirun.

    Lightning's ``ddp`` (also what ``strategy: auto`` picks for several devices) re-executes
    ``sys.argv`` in each child rank, so inside ``-m`` every rank would relaunch the whole sweep
    (reference/platform.md section 4.3). ``ddp_spawn`` (or ``ddp_fork`` on CPU) starts the ranks
    from the running job instead.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    devices = trainer_cfg.get("devices", 1)
    single = devices in (1, "1") or (OmegaConf.is_list(devices) and len(devices) == 1)
    many = not single or trainer_cfg.get("num_nodes", 1) > 1
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if many and not strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ValueError(
            f"trainer.strategy={strategy} with trainer.devices={devices} inside a multirun (-m) "
            "would relaunch the whole sweep from every rank. Use trainer.strategy=ddp_spawn (or "
            "ddp_fork on CPU), or a single device."
        )
