"""Shared fixtures: no network, W&B offline under tmp, and composition of the real configs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import recattend.utils.hydra  # noqa: F401  (registers the configs' resolvers)
from tests.helpers import CONF, ROOT


@pytest.fixture(autouse=True)
def restored_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU fast path's process-wide switches (recattend.ops.configure), which in-process
    train and eval runs set, are undone after every test."""
    from recattend.ops import kernels, step_backward

    monkeypatch.setattr(kernels, "ENABLED", kernels.ENABLED)
    monkeypatch.setattr(step_backward, "ENABLED", step_backward.ENABLED)


@pytest.fixture(autouse=True)
def offline_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """W&B offline with every W&B folder under tmp; full Hydra tracebacks."""
    wandb_home = tmp_path_factory.mktemp("wandb-home")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(wandb_home),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
        "HYDRA_FULL_ERROR": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two intra-op threads whatever the machine (the parallel backward needs two), restored
    afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with overrides, as ``python train.py`` would, into tmp_path."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose(
                config_name,
                overrides=[f"hydra.run.dir={tmp_path}", *overrides],
                return_hydra_config=True,
            )
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.runtime.cwd = str(ROOT)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
