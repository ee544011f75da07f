"""Every option of every config group composes, and the objects it describes can be built."""

from __future__ import annotations

import re

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from recattend.utils.config import instantiate_group
from tests.conftest import CONF

GROUPS = [
    "module",
    "model",
    "dataset",
    "dataset/augment",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
    "paths",
    "hydra",
]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    assert {group for group, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(compose_train, group: str, option: str) -> None:
    cfg = compose_train(f"{group}={option}")
    assert cfg.hydra.runtime.choices[group] == option
    instantiate(cfg.dataset, _convert_="all")
    instantiate(cfg.module, _convert_="all")
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    # gpu and ddp options compose here but need a GPU to build.
    if cfg.trainer.accelerator in ("cpu", "auto"):
        instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for key in ("accelerator", "devices", "num_nodes", "strategy", "precision"):
        assert key in cfg.trainer, key


def test_default_run_is_synthetic_with_wandb_offline_and_csv(compose_train) -> None:
    cfg = compose_train()
    assert cfg.hydra.runtime.choices.dataset == "synthetic"
    assert set(cfg.logger) == {"wandb", "csv"} and cfg.logger.wandb.offline is True
    assert cfg.dataset.max_instances == cfg.dataset.max_objects  # interpolated, not repeated
    assert list(cfg.module.image_size) == list(cfg.dataset.resolution)


@pytest.mark.parametrize(
    ("option", "key", "value"),
    [
        ("full", "module.net.glimpses", 5),
        ("iter1", "module.net.glimpses", 1),
        ("iter3", "module.net.glimpses", 3),
        ("no_box_net", "module.net.box_network", False),
        ("no_sched_samp", "callbacks.scheduled_sampling.mode", "ground_truth"),
        ("no_teacher_forcing", "callbacks.scheduled_sampling.mode", "predictions"),
        ("no_angle", "module.preprocessor.angles", False),
        ("no_pre_proc", "module.preprocessor.enabled", False),
        ("full", "callbacks.scheduled_sampling.mode", "fade"),
    ],
)
def test_ablations_reach_the_module_and_callbacks(compose_train, option, key, value) -> None:
    from omegaconf import OmegaConf

    cfg = compose_train(f"model={option}")
    assert OmegaConf.select(cfg, key) == value
    # Everything else stays as in the full model.
    full = compose_train("model=full")
    changed = {
        k for k in full.module.net if OmegaConf.select(cfg, f"module.net.{k}") != full.module.net[k]
    }
    assert changed <= {key.rsplit(".", 1)[1]}


def test_output_folders_follow_task_and_timestamp() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=["task_name=eval"])
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"
    assert re.fullmatch(f"outputs/eval/runs/{stamp}", cfg.hydra.run.dir)
    assert re.fullmatch(f"outputs/eval/multiruns/{stamp}", cfg.hydra.sweep.dir)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("full", "/runs/fcn/last.ckpt"),
        ("iter1", "/runs/fcn/last.ckpt"),
        ("no_sched_samp", "/runs/fcn/last.ckpt"),
        ("no_angle", "/runs/fcn_fg/last.ckpt"),
    ],
)
def test_ablation_presets_pick_the_registered_preprocessor(compose_train, option, expected) -> None:
    # One multirun sweeps every Table 4 row: the no_angle preset reads the FCN trained without
    # angles, the others the one with angles.
    cfg = compose_train(
        "experiment=synthetic_ablation",
        f"model={option}",
        "preprocessors.angles=/runs/fcn/last.ckpt",
        "preprocessors.foreground=/runs/fcn_fg/last.ckpt",
    )
    assert cfg.module.preprocessor.ckpt_path == expected
    assert cfg.dataset.augment.shift == 16 and cfg.dataset.augment.flip_stages == ["box"]
    assert cfg.trainer.max_steps == 800


def test_unknown_option_lists_the_choices(compose_train) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_train("dataset=cityscpes")
    assert "synthetic" in str(err.value)
