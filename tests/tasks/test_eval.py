"""The evaluation task on a freshly trained checkpoint, and its errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from recattend.report import metrics_table
from recattend.tasks import eval as eval_task
from recattend.tasks import train
from tests.helpers import TINY, tiny_segmenter


def test_metrics_table_by_hand() -> None:
    metrics = {
        "test/sbd": 0.849,
        "test/sbd_std": 0.048,
        "test/abs_dic": 0.8,
        "test/abs_dic_std": 1.0,
        "val/sbd": 0.1,
    }
    assert metrics_table(metrics, "test", "ours").splitlines() == [
        "| run | SBD (%) | \\|DiC\\| |",
        "| --- | --- | --- |",
        "| ours | 84.9 (4.8) | 0.80 (1.00) |",
    ]


def test_eval_scores_a_trained_checkpoint(compose_train, tmp_path: Path, capsys) -> None:
    train.run(compose_train(*TINY, "test=false", "logger=none"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    data = [o for o in TINY if o.startswith("dataset.")]
    cfg = compose_train(*data, f"ckpt_path={ckpt}", "trainer.accelerator=cpu", config_name="eval")
    metrics = eval_task.run(cfg)
    assert 0.0 <= metrics["test/sbd"] <= 1.0 and "test/abs_dic" in metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "| last.ckpt |" in capsys.readouterr().out

    # Another resolution is fine (tests/pretrained: the attention is resampled); another T is not.
    wrong = compose_train(*data, "dataset.max_instances=5", f"ckpt_path={ckpt}", config_name="eval")
    with pytest.raises(ValueError, match=r"dataset\.max_instances=5 \(checkpoint: 3\)"):
        eval_task.run(wrong)

    # postprocess.* replaces the checkpoint's settings one by one: threshold 1 leaves no pixel
    # (every processed value is <= 1), so every image predicts nothing and scores SBD 0.
    strict = compose_train(
        *data, f"ckpt_path={ckpt}", "trainer.accelerator=cpu", "postprocess.threshold=1.0",
        "postprocess.stop_rule=first_below", "postprocess.blur=false", config_name="eval",
    )  # fmt: skip
    assert eval_task.run(strict)["test/sbd"] == 0.0
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 4 and all(int(row["pred_count"]) == 0 for row in rows)
    # Anything else is an error naming the allowed keys, before any evaluation.
    for override, message in (
        ("+postprocess.blurr=true", "postprocess.blurr: not a post-processing setting; the "
         "settings are threshold, stop_rule, stop_score, upsample, blur, dilate, foreground, "
         "foreground_threshold, min_size"),
        ("postprocess.stop_rule=paper", "stop_rule='paper' is not one of weighted, first_below"),
    ):  # fmt: skip
        bad = compose_train(*data, f"ckpt_path={ckpt}", override, config_name="eval")
        with pytest.raises(ValueError, match=re.escape(message)):
            eval_task.run(bad)


def test_eval_without_a_checkpoint_file_says_so(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(f"ckpt_path={tmp_path}/missing.ckpt", config_name="eval")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        eval_task.run(cfg)


def _train_one_step_then_eval(compose_train, tmp_path: Path, data: list[str]) -> dict:
    """Train one step on ``data`` overrides, then evaluate last.ckpt on the same data."""
    train.run(compose_train(*data, "trainer.max_steps=1", "test=false", "logger=none"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cfg = compose_train(*data, f"ckpt_path={ckpt}", "trainer.accelerator=cpu", config_name="eval")
    return eval_task.run(cfg)


def test_eval_on_a_cvppp_layout_scores_at_the_original_resolution(
    compose_train, tmp_path: Path
) -> None:
    from recattend.data.fixtures import write_cvppp

    truth = write_cvppp(tmp_path / "A1", [1, 2, 4, 7, 9, 10, 13, 15, 16, 20], size=(96, 104))
    data = [
        "dataset=cvppp",
        f"dataset.root={tmp_path / 'A1'}",
        "dataset.resolution=[64,64]",
        "dataset.num_workers=0",
        "dataset.batch_size=2",
    ]
    metrics = _train_one_step_then_eval(compose_train, tmp_path, data)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 2  # the val split: 2 of 10 plants
    for row in rows:
        assert (int(row["height"]), int(row["width"])) == (96, 104)  # not the network's 64x64
        assert int(row["gt_count"]) == len(truth[row["id"]])
        assert 0.0 <= float(row["sbd"]) <= 1.0
    mean = sum(float(r["sbd"]) for r in rows) / 2
    assert abs(metrics["test/sbd"] - mean) < 1e-6


def test_eval_on_a_coco_layout_reports_segm_ap(compose_train, tmp_path: Path, capsys) -> None:
    from recattend.data.fixtures import write_coco

    write_coco(tmp_path / "coco", "train2017", images=6, size=(64, 64))
    write_coco(tmp_path / "coco", "val2017", images=3, size=(64, 64))
    data = [
        "dataset=coco",
        f"dataset.root={tmp_path / 'coco'}",
        "dataset.resolution=[64,64]",
        "dataset.num_workers=0",
        "dataset.batch_size=2",
    ]
    metrics = _train_one_step_then_eval(compose_train, tmp_path, data)
    assert {"test/ap", "test/ap50", "test/ap75", "test/ar100"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/ap", "test/ap50", "test/ar100"))
    assert "| AP (%) | AP50% (%) | AP75 (%) | AR100 (%) |" in capsys.readouterr().out


def test_cityscapes_test_split_gets_classes_postprocessing_and_ap(tmp_path: Path) -> None:
    import math

    import lightning as L
    import torch

    from recattend.data import CityscapesDataModule
    from recattend.data.fixtures import write_cityscapes
    from recattend.evaluation import CityscapesEvaluator, Evaluate
    from recattend.lit import PreprocessorModule
    from tests.helpers import SMALL_FCN, tiny_segmenter

    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train", {"aachen": 3}, size=(64, 128))
    write_cityscapes(root, "val", {"frankfurt": 2}, size=(64, 128))
    data = CityscapesDataModule(
        root=root, resolution=[32, 64], max_instances=6, batch_size=2, num_workers=0
    )

    def trainer(folder: str, *callbacks: L.Callback) -> L.Trainer:
        return L.Trainer(
            default_root_dir=tmp_path / folder, max_steps=1, accelerator="cpu", logger=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=list(callbacks),
        )  # fmt: skip

    torch.manual_seed(0)
    trainer("fcn").fit(
        PreprocessorModule(image_size=[32, 64], net={**SMALL_FCN, "num_classes": 8}), data
    )
    fcn = next((tmp_path / "fcn" / "checkpoints").glob("*.ckpt"))
    from recattend.lit import load_preprocessor

    segmenter = tiny_segmenter(
        max_instances=6, image_size=[32, 64],
        preprocessor=load_preprocessor(fcn),
        postprocess={"threshold": 0.0, "foreground": True, "min_size": 10},
    )  # fmt: skip
    convs = segmenter.net.segmenter.box_net.cnn.convs
    assert convs[0].in_channels == 3 + 9 + 8 + 1  # 9 classes, 8 angles, the canvas
    run = trainer("seg", Evaluate(test=CityscapesEvaluator(), export=True))
    metrics = run.test(segmenter, datamodule=data)[0]
    stems = sorted(p.name[: -len("_leftImg8bit.png")] for p in root.glob("leftImg8bit/val/*/*.png"))
    assert (
        sorted(p.stem for p in (tmp_path / "seg" / "predictions" / "labels").glob("*.png")) == stems
    )
    for (
        stem
    ) in stems:  # the official result format: <stem>_pred.txt, "<mask png> <labelId> <score>"
        for line in (
            (tmp_path / "seg" / "predictions" / "cityscapes" / f"{stem}_pred.txt")
            .read_text()
            .splitlines()
        ):
            mask, label_id, score = line.split()
            assert (tmp_path / "seg" / "predictions" / "cityscapes" / mask).is_file()
            assert int(label_id) in (24, 25, 26, 27, 28, 31, 32, 33) and 0 <= float(score) <= 1
    assert {"test/ap", "test/ap50", "test/ap_car", "test/sbd", "test/mwcov"} <= set(metrics)
    assert 0.0 <= metrics["test/ap"] <= 1.0 and not math.isnan(metrics["test/ap50"])
    assert math.isnan(metrics["test/ap_train"])  # no GT train in the fixture: skipped
    assert (tmp_path / "seg" / "per_image.csv").is_file()


def test_a_checkpoint_of_another_module_names_the_mismatching_settings(tmp_path: Path) -> None:
    import lightning as L

    from recattend.lit import PreprocessorModule, SegmenterModule, load_module
    from tests.helpers import tiny_data

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tiny_segmenter(), tiny_data())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    with pytest.raises(ValueError, match=r"not hold a PreprocessorModule.*'lambda_box'"):
        load_module(PreprocessorModule, ckpt)
    assert isinstance(load_module(SegmenterModule, ckpt), SegmenterModule)
    # Post-processing over the checkpoint's reaches the module and its saved hyper-parameters.
    settings = {"postprocess": {"stop_rule": "first_below", "threshold": 0.5}}
    module = load_module(SegmenterModule, ckpt, settings)
    assert module.postprocess.stop_rule == "first_below"
    assert module.hparams.postprocess["threshold"] == 0.5


def test_postprocess_overrides_merge_over_the_checkpoints_settings() -> None:
    from recattend.utils.config import postprocess_overrides

    saved = {"postprocess": {"threshold": 0.3, "dilate": 5, "foreground": True}}
    node = {"threshold": None, "stop_rule": "first_below", "blur": False, "min_size": None}
    # Null keeps the checkpoint's value; the rest replace it one by one (KITTI keeps its
    # dilation), and the defaults fill what the checkpoint does not say.
    assert postprocess_overrides(node, saved) == {
        "postprocess": {
            "threshold": 0.3, "stop_rule": "first_below", "stop_score": 0.5,
            "upsample": "bilinear", "blur": False, "dilate": 5, "foreground": True,
            "foreground_threshold": 0.3, "min_size": 0,
        }
    }  # fmt: skip
    assert postprocess_overrides(None, saved) == {}
    assert postprocess_overrides({"blur": None}, saved) == {}
    with pytest.raises(ValueError, match=r"postprocess\.dilate=4|dilate=4 must be odd"):
        postprocess_overrides({"dilate": 4}, saved)


def test_test_split_at_network_resolution_runs_the_switches() -> None:
    # Generated data has no original files: its test split is scored at network resolution, and
    # must go through the same post-processing. Hand-made outputs replace the network's.
    import torch

    from recattend.evaluation import InstanceEvaluator
    from tests.helpers import tiny_segmenter

    masks = torch.zeros(1, 4, 32, 32)
    masks[0, 0, :8, :8] = 1.0  # s 0.9
    masks[0, 1, 16:24, :8] = 1.0  # s 0.4: below the stop score, above the threshold
    masks[0, 2, :8, 16:24] = 1.0  # s 0.8
    outputs = {"masks": masks, "scores": torch.tensor([[0.9, 0.4, 0.8, 0.0]])}
    truth = torch.zeros(1, 4, 32, 32)
    truth[0, :3] = masks[0, :3]
    batch = {
        "image": torch.rand(1, 3, 32, 32),
        "masks": truth,
        "num_instances": torch.tensor([3]),
        "meta": [{"id": "a"}],
    }

    def predicted(**settings) -> int:
        module = tiny_segmenter(postprocess=settings)
        evaluator = InstanceEvaluator(original_resolution=False, per_image=True)
        evaluator.process(batch, outputs, module.postprocess)  # the network's outputs, by hand
        return evaluator.rows[0]["pred_count"]

    # weighted keeps all three; first_below stops at s_1 = 0.4 < 0.5 and keeps one.
    assert predicted() == 3
    assert predicted(stop_rule="first_below") == 1
    # Threshold 0.85: only 1 * 0.9 passes (0.4 and 0.8 do not).
    assert predicted(threshold=0.85) == 1
    # min_size 64 drops every 8 x 8 = 64-pixel square once the blur is off (the blur would move
    # their edges), 63 keeps them all.
    assert predicted(blur=False, min_size=64) == 0
    assert predicted(blur=False, min_size=63) == 3


def test_eval_refuses_files_that_are_not_checkpoints(compose_train, tmp_path: Path) -> None:
    # eval.py reads the checkpoint's settings itself (memory-mapped) before loading the module:
    # through the same reader, so the same error, not torch's KeyError or a TypeError.
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch=3\n")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for ckpt, why in ((text, "not written by torch.save"), (empty, "the file is empty")):
        cfg = compose_train(f"ckpt_path={ckpt}", config_name="eval")
        message = rf"{re.escape(str(ckpt))} is not a recattend/Lightning checkpoint \({why}"
        with pytest.raises(ValueError, match=message):
            eval_task.run(cfg)


def test_eval_names_the_module_a_checkpoint_holds(compose_train, tmp_path: Path) -> None:
    import torch

    from recattend.lit import PreprocessorModule
    from tests.helpers import SMALL_FCN

    fcn = PreprocessorModule(image_size=[32, 32], net=SMALL_FCN)
    ckpt = tmp_path / "fcn.ckpt"
    torch.save({"state_dict": fcn.state_dict(), "hyper_parameters": dict(fcn.hparams)}, ckpt)
    cfg = compose_train(f"ckpt_path={ckpt}", config_name="eval")  # module=segmenter, the default
    with pytest.raises(ValueError, match=(
        r"fcn\.ckpt does not hold a SegmenterModule: it holds a PreprocessorModule \(.*\); load it "
        r"as a PreprocessorModule \(module=preprocessor\)"
    )):  # fmt: skip
        eval_task.run(cfg)
