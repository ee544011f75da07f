"""Every option of every config group composes, and the objects it describes can be built."""

from __future__ import annotations

import re

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recattend.utils.config import instantiate_data, instantiate_group
from tests.helpers import CONF, tiny_segmenter

GROUPS = [
    "module",
    "monitor",
    "model",
    "dataset",
    "dataset/augment",
    "dataset/evaluator",
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
    instantiate_data(cfg.dataset)
    instantiate(cfg.module, _convert_="all")
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    # gpu and ddp options compose here but need a GPU to build.
    if cfg.trainer.accelerator in ("cpu", "auto"):
        instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for key in ("accelerator", "devices", "num_nodes", "strategy", "precision"):
        assert key in cfg.trainer, key


EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_eval_reads_every_experiments_data(compose_train, experiment: str) -> None:
    # eval.py experiment=X scores on X's data: every recipe composes there (its training callbacks
    # fill a slot that evaluation does not read) and gives the dataset it trains on.
    trained = compose_train(f"experiment={experiment}")
    evaluated = compose_train(f"experiment={experiment}", "ckpt_path=x.ckpt", config_name="eval")
    assert evaluated.hydra.runtime.choices.experiment == experiment
    assert evaluated.dataset == trained.dataset


def test_default_run_is_synthetic_with_wandb_offline_and_csv(compose_train) -> None:
    cfg = compose_train()
    assert cfg.hydra.runtime.choices.dataset == "synthetic"
    assert set(cfg.logger) == {"wandb", "csv"} and cfg.logger.wandb.offline is True
    assert cfg.dataset.max_instances == cfg.dataset.max_objects  # interpolated, not repeated
    assert list(cfg.module.net.image_size) == list(cfg.dataset.resolution)


@pytest.mark.parametrize(
    ("option", "key", "value"),
    [
        ("full", "model.segmenter.glimpses", 5),
        ("iter1", "model.segmenter.glimpses", 1),
        ("iter3", "model.segmenter.glimpses", 3),
        ("no_box_net", "model.segmenter.box_network", False),
        ("no_angle", "model.angles", False),
        ("no_pre_proc", "model.preprocessor", None),
    ],
)
def test_network_ablations_change_one_setting_of_the_network(
    compose_train, option, key, value
) -> None:
    from omegaconf import OmegaConf

    def flat(node, prefix: str = "model") -> dict:
        if not isinstance(node, dict):
            return {prefix: node}
        return {
            k: v for name, child in node.items() for k, v in flat(child, f"{prefix}.{name}").items()
        }

    cfg = compose_train(f"model={option}")
    assert OmegaConf.select(cfg, key) == value
    # The module receives the network node itself; everything else stays as in the full model
    # (no_angle also picks the FCN trained without angles, which is null here).
    assert cfg.module.net == cfg.model
    mine = flat(OmegaConf.to_container(cfg.model, resolve=True))
    full = flat(OmegaConf.to_container(compose_train("model=full").model, resolve=True))
    changed = {k for k in mine.keys() | full.keys() if mine.get(k, "-") != full.get(k, "-")}
    assert all(k.startswith(key) for k in changed), changed
    assert bool(changed) == (option != "full")
    assert cfg.callbacks == compose_train("model=full").callbacks  # the training is the same


def test_the_training_ablations_are_a_module_setting(compose_train) -> None:
    # "No scheduled sampling" (Table 4) keeps the network and changes how teacher forcing uses
    # the schedule: the ground-truth canvas at every step of the full stage, boxes as scheduled.
    import torch

    cfg = compose_train("module.teacher_forcing=ground_truth", "dataset.resolution=[64,64]")
    forcing = instantiate(cfg.module, _convert_="all").teacher_forcing
    forcing.schedule({"box": torch.tensor([0.5, 0.25]), "mask": torch.tensor([0.0, 0.0])})
    assert forcing.probabilities["mask"].tolist() == [1.0, 1.0]
    assert forcing.probabilities["box"].tolist() == [0.5, 0.25]
    forcing.mode = "predictions"
    forcing.schedule({"box": torch.tensor([0.5]), "mask": torch.tensor([0.5])})
    assert [p.tolist() for p in forcing.probabilities.values()] == [[0.0], [0.0]]
    with pytest.raises(ValueError, match=r"module.teacher_forcing='off': use one of \['sched"):
        tiny_segmenter(teacher_forcing="off")


def test_the_network_node_builds_the_network_the_module_receives(compose_train) -> None:
    from recattend.lit import SegmenterModule
    from recattend.models import SegmenterNetwork

    cfg = compose_train("model=iter1", "dataset.resolution=[64,64]", "dataset.max_objects=3")
    module = instantiate(cfg.module, _convert_="all")
    assert isinstance(module, SegmenterModule) and isinstance(module.net, SegmenterNetwork)
    assert module.net.steps == 4 and module.net.image_size == (64, 64)
    assert module.net.segmenter.box_net.glimpses == 1
    # Saved as plain values, which rebuild the same network.
    rebuilt = SegmenterModule(**module.hparams)
    assert rebuilt.state_dict().keys() == module.state_dict().keys()


def test_output_folders_follow_task_and_timestamp() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=["task_name=eval"])
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}-\d+"
    assert re.fullmatch(f"outputs/eval/runs/{stamp}", cfg.hydra.run.dir)
    assert re.fullmatch(f"outputs/eval/multiruns/{stamp}", cfg.hydra.sweep.dir)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("full", "/runs/fcn/last.ckpt"),
        ("iter1", "/runs/fcn/last.ckpt"),
        ("no_angle", "/runs/fcn_fg/last.ckpt"),
    ],
)
def test_ablation_presets_pick_the_registered_preprocessor(compose_train, option, expected) -> None:
    # One multirun sweeps every Table 4 row: the no_angle preset reads the FCN trained without
    # angles, the others the one with angles.
    cfg = compose_train(
        "experiment=synthetic_ablation",
        f"model={option}",
        "preprocessors.angles_ckpt=/runs/fcn/last.ckpt",
        "preprocessors.foreground_ckpt=/runs/fcn_fg/last.ckpt",
    )
    assert cfg.module.net.preprocessor.ckpt_path == expected
    assert cfg.dataset.augment.shift == 16 and cfg.dataset.augment.flip_stages == ["box"]
    assert cfg.trainer.max_steps == 800


@pytest.mark.parametrize(
    ("overrides", "monitor"),
    [
        ((), "val/sbd"),  # synthetic
        (("dataset=cvppp",), "val/sbd"),  # Table 1
        (("dataset=kitti",), "val/mwcov"),  # Table 2
        (("dataset=cityscapes",), "val/mask_ap"),  # Table 3: validation's stand-in for AP
        (("dataset=coco",), "val/mask_ap"),
        (("experiment=cvppp",), "val/sbd"),
        (("experiment=kitti",), "val/mwcov"),
        (("experiment=cityscapes",), "val/mask_ap"),
        (("experiment=coco_zebra",), "val/mask_ap"),
        (("experiment=synthetic_benchmark",), "val/sbd"),
        (("experiment=leaves_pretrained",), "val/sbd"),
        (("module=preprocessor",), "val/fg_iou"),  # the pre-processor's own metric
        (("module=preprocessor", "dataset=kitti"), "val/fg_iou"),
        (("experiment=kitti_preprocessor",), "val/fg_iou"),
        (("experiment=cityscapes_preprocessor",), "val/fg_iou"),
        (("experiment=synthetic_preprocessor",), "val/fg_iou"),
    ],
)
def test_the_best_checkpoint_monitors_the_main_metric(compose_train, overrides, monitor) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from recattend.callbacks import LastCheckpoint
    from recattend.utils.config import check_checkpointing

    cfg = compose_train(*overrides)
    check_checkpointing(cfg.callbacks)
    best, last, *_ = instantiate_group(cfg.callbacks)  # the best first: checkpoint_callback
    assert type(best) is ModelCheckpoint and isinstance(last, LastCheckpoint)
    assert (best.monitor, best.mode, best.save_top_k) == (monitor, "max", 1)
    assert best.format_checkpoint_name({"step": 3500, monitor: 0.87404}).endswith(
        "/checkpoints/best-step_003500-0.8740.ckpt"
    )
    assert (last.save_last, last.save_top_k, last.monitor) == (True, 0, None)
    if monitor != "val/fg_iou":  # the segmenter's: a key its validation evaluator returns
        from recattend.evaluation import InstanceEvaluator
        from tests.evaluation.fakes import FakePostProcess, make_batch
        from tests.metrics.labels import GT_TWO

        evaluator = InstanceEvaluator(original_resolution=False, per_image=False)
        evaluator.reset()
        batch = make_batch([GT_TWO], [GT_TWO], [[0.9, 0.8, 0.1]], [{"id": "a"}])
        evaluator.process(*batch, FakePostProcess())
        assert monitor.removeprefix("val/") in evaluator.evaluate()


def test_the_recipes_set_the_last_checkpoints_interval(compose_train) -> None:
    assert compose_train("experiment=cvppp").callbacks.last_checkpoint.every_n_train_steps == 1000
    ablation = compose_train("experiment=synthetic_ablation")
    assert ablation.callbacks.model_checkpoint is None  # no validation: nothing to pick by
    assert ablation.callbacks.last_checkpoint.every_n_train_steps == 400


def test_a_monitored_checkpoint_with_a_step_interval_is_refused(compose_train) -> None:
    from recattend.utils.config import check_checkpointing

    cfg = compose_train("callbacks.model_checkpoint.every_n_train_steps=500")
    with pytest.raises(ValueError, match=r"monitor=val/sbd with every_n_train_steps=500 .*"
                       r"callbacks\.last_checkpoint\.every_n_train_steps=N"):  # fmt: skip
        check_checkpointing(cfg.callbacks)


def test_unknown_option_lists_the_choices(compose_train) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_train("dataset=cityscpes")
    assert "synthetic" in str(err.value)


def _target_nodes(node, path=""):
    """Every mapping with a recattend ``_target_`` inside a config file, with its path."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        if str(node.get("_target_", "")).startswith("recattend."):
            yield path, node
        for key in node:
            yield from _target_nodes(node._get_node(key), f"{path}.{key}".strip("."))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _target_nodes(node._get_node(i), f"{path}[{i}]")


# The option files that define defaults (experiments and debug presets override them on purpose).
DEFAULT_FILES = sorted(
    p
    for group in ("module", "model", "callbacks", "dataset", "dataset/evaluator")
    for p in (CONF / group).glob("*.yaml")
)


@pytest.mark.parametrize(
    "path", DEFAULT_FILES, ids=[str(p.relative_to(CONF)) for p in DEFAULT_FILES]
)
def test_each_default_is_defined_once(path) -> None:
    # A YAML value of a constructor argument that has a default must equal that default: a
    # reader of either finds the same value (values set from other keys by interpolation, and
    # arguments without a default, are the YAML's alone).
    import inspect

    from hydra.utils import get_object
    from omegaconf import OmegaConf

    def plain(value):
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    for where, node in _target_nodes(OmegaConf.load(path)):
        target = get_object(node._target_)
        parameters = inspect.signature(target).parameters
        for key in node:
            if key.startswith("_") or key not in parameters:
                continue
            default = parameters[key].default
            if default is inspect.Parameter.empty or OmegaConf.is_interpolation(node, key):
                continue
            value = OmegaConf.to_container(node, resolve=False)[key]
            if isinstance(value, dict):  # settings passed on to another class: checked below
                continue
            assert plain(value) == plain(default), f"{where}.{key}: YAML {value}, code {default}"


def test_the_nested_settings_agree_with_their_classes() -> None:
    # model.segmenter holds RecurrentSegmenter's arguments, module.net (module=preprocessor)
    # Preprocessor's and module.postprocess PostProcess's settings: the YAML lists every one of
    # them (but the skip sources, which the default rule replaces), with the code's default.
    import dataclasses
    import inspect

    from omegaconf import OmegaConf

    from recattend.models import Preprocessor, RecurrentSegmenter
    from recattend.postprocess import PostProcess

    def defaults(cls, *left_out):
        return {
            name: list(p.default) if isinstance(p.default, tuple) else p.default
            for name, p in inspect.signature(cls).parameters.items()
            if name not in left_out
        }

    segmenter = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "full.yaml").segmenter)
    assert segmenter == defaults(RecurrentSegmenter, "image_size", "steps")
    fcn = OmegaConf.to_container(OmegaConf.load(CONF / "module" / "preprocessor.yaml").net)
    assert fcn.pop("_target_") == "recattend.models.Preprocessor"
    assert fcn == defaults(Preprocessor, "decoder_skip_sources")
    settings = OmegaConf.to_container(
        OmegaConf.load(CONF / "module" / "segmenter.yaml").postprocess
    )
    assert settings.pop("_target_") == "recattend.postprocess.PostProcess"
    assert settings == {f.name: f.default for f in dataclasses.fields(PostProcess)}


@pytest.mark.parametrize("paper", ["kitti", "cityscapes", "coco_zebra"])
def test_fast_variants_run_the_paper_schedule_in_a_tenth_of_the_steps(compose_train, paper) -> None:
    slow, fast = compose_train(f"experiment={paper}"), compose_train(f"experiment={paper}_fast")
    assert fast.trainer.max_steps * 10 == slow.trainer.max_steps
    assert fast.model == slow.model  # the same network
    # The same data, but for the settings the fast recipes keep from the project's defaults.
    kept = ("empty_last_slot", "augment")
    assert {k: v for k, v in fast.dataset.items() if k not in kept} == {
        k: v for k, v in slow.dataset.items() if k not in kept
    }
    for s, f in zip(slow.callbacks.bootstrap.stages, fast.callbacks.bootstrap.stages, strict=True):
        assert (f.name, f.lr_decay, f.box_min_pad) == (s.name, s.lr_decay, s.box_min_pad)
        assert f.lr_decay_steps * 10 == s.lr_decay_steps
        assert (f.steps or 0) * 10 == (s.steps or 0)
    s, f = slow.callbacks.scheduled_sampling, fast.callbacks.scheduled_sampling
    assert f.decay_steps * 10 == s.decay_steps and f.mask_offset * 10 == s.mask_offset
    assert (f.box_offset or 0) * 10 == (s.box_offset or 0)
    # Adam: the benchmark's 2e-3 at batch 8, scaled by sqrt(batch / 8): 1e-3 at 2, 1.6e-3 at 5.
    expected = {2: 1e-3, 5: 1.6e-3}[fast.dataset.batch_size]
    assert fast.module.lr == pytest.approx(expected)


# The authors' values that the paper recipes set (docs/reproducing.md, the differences' table).
AUTHORS = {
    "cvppp": {"test_ckpt": "last", "module.fed_box_jitter": "tight"},
    "kitti": {
        "test_ckpt": "last",
        "final_validation": True,
        "dataset.empty_last_slot": False,
        "module.fed_box_jitter": "tight",
        "callbacks.bootstrap.stages.0.batch_size": 5,
        "callbacks.bootstrap.stages.0.box_pools": [1, 2, 1, 2, 1, 2, 2, 2],
        "callbacks.bootstrap.stages.1.batch_size": "missing",  # the dataset's 2
    },
    "cityscapes": {
        "test_ckpt": "last",
        "dataset.empty_last_slot": False,
        "module.box_iou": "coordinates",
        "module.fed_box_jitter": "tight",
        "callbacks.bootstrap.stages.0.batch_size": 4,
    },
    "coco_zebra": {
        "test_ckpt": "last",
        "module.fed_box_jitter": "tight",
        "dataset.augment.shift": 16,
        "dataset.augment.flips": [],
    },
    "kitti_preprocessor": {"module.net.init": "authors"},
    "cvppp_preprocessor": {"module.net.init": "authors"},
    "coco_zebra_preprocessor": {"module.net.init": "authors"},
    "cityscapes_preprocessor": {"module.net.init": "authors"},
}
# ... and the values the time-budgeted recipes keep from the project's defaults.
OURS = {"test_ckpt": "best", "final_validation": False, "module.fed_box_jitter": "padded",
        "module.box_iou": "soft"}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(AUTHORS))
def test_the_paper_recipes_set_the_authors_values(compose_train, experiment) -> None:
    cfg = compose_train(f"experiment={experiment}")
    found = {key: OmegaConf.select(cfg, key, default="missing") for key in AUTHORS[experiment]}
    assert found == AUTHORS[experiment]


@pytest.mark.parametrize("experiment", ["cvppp_fast", "kitti_fast", "cityscapes_fast",
                                        "coco_zebra_fast", "few_images"])  # fmt: skip
def test_the_fast_recipes_keep_the_project_defaults(compose_train, experiment) -> None:
    cfg = compose_train(f"experiment={experiment}")
    assert {key: OmegaConf.select(cfg, key) for key in OURS} == OURS
    assert all(stage.get("batch_size") is None for stage in cfg.callbacks.bootstrap.stages)


def test_learning_speed_recipes(compose_train) -> None:
    bench = compose_train("experiment=synthetic_benchmark")
    assert bench.module.lr == 2e-3 and bench.module.postprocess.blur is False
    ablation = compose_train("experiment=synthetic_ablation")  # Table 4 as it was measured
    assert ablation.module.lr == 1e-3 and ablation.module.postprocess.blur is True
    few, scratch = compose_train("experiment=few_images"), compose_train("experiment=leaves_few")
    assert scratch.init_from is None and few.init_from == "leaves"
    assert few.dataset == scratch.dataset and few.trainer.max_time == "00:01:00:00"
    assert [s.name for s in few.callbacks.bootstrap.stages] == ["full"]
    cvppp, paper = compose_train("experiment=cvppp_fast"), compose_train("experiment=cvppp")
    assert cvppp.init_from == "leaves" and cvppp.trainer.max_steps == -1
    assert cvppp.dataset == paper.dataset
    # The recipe for a real set is the one tried on the few-image regime: the same schedule,
    # network, budget and validation cadence ...
    for key in ("module", "model", "callbacks.bootstrap", "callbacks.scheduled_sampling"):
        assert OmegaConf.select(cvppp, key) == OmegaConf.select(few, key), key
    for key in ("max_time", "max_steps", "val_check_interval", "check_val_every_n_epoch"):
        assert cvppp.trainer[key] == few.trainer[key], key
    # ... on data laid out as CVPPP's: input, T, batch, augmentation, scored at original size.
    for key in ("resolution", "max_instances", "batch_size", "augment"):
        assert few.dataset[key] == paper.dataset[key], key
    assert few.dataset.evaluator == paper.dataset.evaluator
    assert (
        few.dataset.render_size == [500, 530]
        and few.dataset.seed != compose_train("experiment=leaves_pretrained").dataset.seed
    )
    assert list(cvppp.model.segmenter.skips) == [False, False, True, False, True, False, True]
