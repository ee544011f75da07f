"""predict.py on a folder of images, and the export writers it uses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from recattend.evaluation.export import coco_results, overlay, write_label_png
from recattend.tasks import predict
from tests.helpers import tiny_data, tiny_segmenter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    trainer = L.Trainer(
        default_root_dir=folder, max_steps=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    torch.manual_seed(0)
    # threshold 0: every pixel goes to some instance, so the outputs are never trivially empty.
    module = tiny_segmenter(threshold=0.0)
    trainer.fit(module, datamodule=tiny_data())
    return next((folder / "checkpoints").glob("*.ckpt"))


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("predict", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _inputs(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "a.png")
    rgba = rng.integers(0, 255, (48, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    data = (folder / "a.png").read_bytes()
    (folder / "broken.png").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(folder / "huge.png")


def test_predicts_every_image_and_lists_the_rest(checkpoint: Path, tmp_path: Path) -> None:
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    cfg = _compose(
        f"ckpt_path='{checkpoint}'", f"input={tmp_path / 'in'}", f"output={out}",
        "coco_json=true", "max_pixels=5000", "progress=false", "device=cpu",
    )  # fmt: skip
    counts = predict.run(cfg)
    assert set(counts) == {"a.png", "b.png"}
    for name, size in (("a", (40, 50)), ("b", (48, 30))):
        labels = np.asarray(Image.open(out / f"{name}_labels.png"))
        assert labels.shape == size  # back at the image's own size
        assert labels.max() == counts[f"{name}.png"] and labels.max() >= 1
        assert np.asarray(Image.open(out / f"{name}_overlay.png")).shape == (*size, 3)
    rows = list(csv.reader((out / "counts.csv").open()))
    assert rows[0] == ["image", "instances"] and len(rows) == 3
    skipped = {Path(r[0]).name: r[1] for r in list(csv.reader((out / "skipped.csv").open()))[1:]}
    assert set(skipped) == {"notes.txt", "broken.png", "huge.png"}
    assert "max_pixels=5000" in skipped["huge.png"]
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {"a", "b"}
    first = [r for r in results if r["image_id"] == "a"]
    labels = np.asarray(Image.open(out / "a_labels.png"))
    for k, entry in enumerate(first, start=1):
        assert (mask_utils.decode(entry["segmentation"]).astype(bool) == (labels == k)).all()
        assert 0.0 <= entry["score"] <= 1.0


def test_unwritable_output_fails_before_any_work(checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = _compose(f"ckpt_path='{checkpoint}'", f"input={tmp_path}", f"output={blocker}/out")
    with pytest.raises(PermissionError, match="output: cannot write to"):
        predict.run(cfg)
    cfg = _compose(f"ckpt_path='{checkpoint}'", f"input={tmp_path / 'nope'}", f"output={tmp_path}")
    with pytest.raises(FileNotFoundError, match="input=.*nope: no such file or folder"):
        predict.run(cfg)


def test_label_png_is_16_bit_beyond_255_instances(tmp_path: Path) -> None:
    labels = np.arange(300, dtype=np.int64).reshape(15, 20)
    write_label_png(labels, tmp_path / "many.png")
    image = Image.open(tmp_path / "many.png")
    assert image.mode in ("I;16", "I") and (np.asarray(image) == labels).all()
    write_label_png(labels % 200, tmp_path / "few.png")
    assert Image.open(tmp_path / "few.png").mode == "L"


def test_overlay_tints_instances_and_outlines_them() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    labels = np.zeros((40, 40), np.int64)
    labels[10:30, 10:30] = 1
    out = overlay(image, labels)
    assert (out[20, 20] > 0).any()  # tinted inside
    assert (out[10, 20] == 255).all()  # outline on the instance's edge
    assert (out[35, 35] == 0).all()  # background untouched (away from the count text)


def test_coco_results_round_trip_and_skip_empty_ids() -> None:
    labels = np.zeros((6, 7), np.int64)
    labels[1:3, 1:4] = 1
    labels[4:6, 2:7] = 3  # id 2 absent
    entries = coco_results(labels, [0.9, 0.5, 0.7], image_id=42)
    assert [e["score"] for e in entries] == [0.9, 0.7]
    for entry, k in zip(entries, (1, 3), strict=True):
        assert entry["image_id"] == 42 and entry["category_id"] == 1
        assert isinstance(entry["segmentation"]["counts"], str)
        assert (mask_utils.decode(entry["segmentation"]).astype(bool) == (labels == k)).all()


def test_cityscapes_results_follow_the_official_format(tmp_path: Path) -> None:
    from recattend.evaluation.export import write_cityscapes_results

    labels = np.zeros((8, 16), np.int64)
    labels[1:4, 2:6] = 1
    labels[5:8, 9:15] = 2
    stem = "frankfurt_000000_000294"
    labels[0, 0] = 3  # an instance without a class (label id 0): left out
    txt = write_cityscapes_results(labels, [0.9, 0.25, 0.5], [26, 24, 0], stem, tmp_path)
    assert txt == tmp_path / f"{stem}_pred.txt"
    lines = txt.read_text().splitlines()
    assert lines == [
        f"masks/{stem}_001.png 26 0.9",
        f"masks/{stem}_002.png 24 0.25",
    ]
    for k, line in enumerate(lines, start=1):
        mask = np.asarray(Image.open(tmp_path / line.split()[0]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        assert ((mask > 0) == (labels == k)).all()


def test_cityscapes_results_keep_full_score_precision(tmp_path: Path) -> None:
    from recattend.evaluation.export import write_cityscapes_results

    # Scores differing in the 8th decimal: at 6 decimals both would read 0.123457, a tie that
    # merges them into one point of the precision-recall curve. A third score (0.1 + 0.2 =
    # 0.30000000000000004) needs all 17 significant digits to read back as the same float64.
    scores = [0.12345671, 0.12345679, 0.1 + 0.2]
    assert f"{scores[0]:.6f}" == f"{scores[1]:.6f}"
    labels = np.zeros((4, 6), np.int64)
    labels[0, :2], labels[1, :2], labels[2:, 3:] = 1, 2, 3
    txt = write_cityscapes_results(labels, scores, [26, 26, 24], "a_000000_000000", tmp_path)
    # Parse as the official readPredInfo does: split on single spaces, float() the third field.
    read = [float(line.split(" ")[2]) for line in txt.read_text().splitlines()]
    assert read == scores  # bit-exact round trip
    assert read[0] < read[1]  # the order of the two close scores survives


def test_cityscapes_results_masks_are_disjoint_instances(tmp_path: Path) -> None:
    from recattend.evaluation.export import write_cityscapes_results

    # One label map in, so one mask per instance, each pixel in at most one mask; an id without
    # a pixel (2) writes nothing, and background (0) is in no mask.
    labels = np.array([[1, 1, 3, 0], [1, 3, 3, 0]], np.int64)
    txt = write_cityscapes_results(
        labels, [0.5, 0.4, 0.3], [24, 26, 33], "b_000000_000000", tmp_path
    )
    lines = txt.read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "masks/b_000000_000000_001.png",
        "masks/b_000000_000000_003.png",
    ]
    assert [line.split(" ")[1] for line in lines] == ["24", "33"]
    masks = np.stack([np.asarray(Image.open(tmp_path / line.split(" ")[0])) > 0 for line in lines])
    assert (masks.sum(axis=0) == (labels > 0)).all()  # disjoint, and covering every instance
    assert (masks[0] == (labels == 1)).all() and (masks[1] == (labels == 3)).all()
