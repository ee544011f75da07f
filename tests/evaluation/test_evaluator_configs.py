"""Every conf/dataset/evaluator/*.yaml builds its evaluator with the family's settings, and each
dataset config names the evaluator of its benchmark."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recattend.evaluation import CityscapesEvaluator, CocoEvaluator, InstanceEvaluator
from tests.helpers import CONF

FOLDER = CONF / "dataset" / "evaluator"
EXPECTED = {
    "instances": (InstanceEvaluator, False),  # generated data: network resolution
    "cvppp": (InstanceEvaluator, True),
    "kitti": (InstanceEvaluator, True),
    "cityscapes": (CityscapesEvaluator, True),
    "coco": (CocoEvaluator, True),
}


def test_every_evaluator_config_is_listed() -> None:
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_evaluator_config_builds(name: str) -> None:
    evaluator = instantiate(OmegaConf.load(FOLDER / f"{name}.yaml"))
    cls, original_resolution = EXPECTED[name]
    assert type(evaluator) is cls
    assert evaluator.original_resolution is original_resolution and evaluator.per_image


@pytest.mark.parametrize(
    ("dataset", "name"),
    [
        ("synthetic", "instances"),
        ("leaves_benchmark", "instances"),
        ("cvppp", "cvppp"),
        ("kitti", "kitti"),
        ("cityscapes", "cityscapes"),
        ("coco", "coco"),
    ],
)
def test_each_dataset_names_its_evaluator(compose_train, dataset: str, name: str) -> None:
    cfg = compose_train(f"dataset={dataset}")
    assert cfg.hydra.runtime.choices["dataset/evaluator"] == name
    # and a user may pick another one
    assert compose_train(f"dataset={dataset}", "dataset/evaluator=instances").dataset.evaluator == (
        OmegaConf.load(FOLDER / "instances.yaml")
    )
