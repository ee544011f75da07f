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

from recattend.evaluation import Evaluate, InstanceEvaluator
from recattend.evaluation.export import coco_results, count_strip_height, overlay, write_label_png
from recattend.lit import SegmenterModule
from recattend.tasks import predict
from recattend.visualise import PALETTE
from tests.helpers import tiny_data, tiny_segmenter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    # Validated, as train.py validates: the checkpoint records its output statistics.
    evaluate = Evaluate(test=InstanceEvaluator(original_resolution=False, per_image=False))
    trainer = L.Trainer(
        default_root_dir=folder, max_steps=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[evaluate],
    )  # fmt: skip
    torch.manual_seed(0)
    # threshold 0: every pixel goes to some instance, so the outputs are never trivially empty.
    module = tiny_segmenter(postprocess={"threshold": 0.0})
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
        labels = np.asarray(Image.open(out / f"{name}.png_labels.png"))
        assert labels.shape == size  # back at the image's own size
        assert labels.max() == counts[f"{name}.png"] and labels.max() >= 1
        picture = np.asarray(Image.open(out / f"{name}.png_overlay.png"))
        assert picture.shape == (size[0] + count_strip_height(size[1]), size[1], 3)
    rows = list(csv.reader((out / "counts.csv").open()))
    assert rows[0] == ["image", "instances", "unlike_training"] and len(rows) == 3
    skipped = {Path(r[0]).name: r[1] for r in list(csv.reader((out / "skipped.csv").open()))[1:]}
    assert set(skipped) == {"notes.txt", "broken.png", "huge.png"}
    assert "max_pixels=5000" in skipped["huge.png"]
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {"a.png", "b.png"}
    first = [r for r in results if r["image_id"] == "a.png"]
    labels = np.asarray(Image.open(out / "a.png_labels.png"))
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
    assert (out[:40][labels == 0] == 0).all()  # background untouched, the corners included


def test_overlay_count_never_covers_a_small_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    labels = np.zeros((64, 64), np.int64)
    labels[0:10, 0:12] = 1  # top-left, where the count used to be written
    labels[40:64, 30:64] = 2
    labels[20:30, 50:60] = 3
    alpha = 0.45
    out = overlay(image, labels, alpha)
    strip = count_strip_height(64)
    assert out.shape == (64 + strip, 64, 3) and out.dtype == np.uint8
    # Every pixel of the image is still there: background exactly, instances tinted (the
    # hand-computed blend), outlines white; none hidden under text.
    colours = PALETTE[labels - 1].astype(np.float32)
    tint = ((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)
    # Outlines: instance pixels with another label among their 3x3 neighbours (inside the image).
    inner = labels > 0
    edge = np.zeros_like(inner)
    for k in (1, 2, 3):
        mask = labels == k
        grown = np.pad(mask, 1, mode="edge")
        interior = np.ones_like(mask)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                interior &= grown[dy : dy + 64, dx : dx + 64]
        edge |= mask & ~interior
    assert (out[:64][~inner] == image[~inner]).all()
    assert (out[:64][inner & ~edge] == tint[inner & ~edge]).all()
    assert (out[:64][edge] == 255).all()
    # The count, below: black text on white, shortened to fit 64 px ("3 inst.").
    below = out[64:]
    assert (below == 255).mean() > 0.7 and (below < 100).any()
    assert strip == count_strip_height(640) and count_strip_height(4000) > 2 * strip
    assert (overlay(image, np.zeros((64, 64), np.int64))[:64] == image).all()


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


# ------------------------------------------------------------------ faithful reading, no clobbering
def _save_preprocessor_checkpoint(path: Path) -> Path:
    """A hand-made checkpoint of a PreprocessorModule, as a module=preprocessor run writes."""
    from recattend.lit import PreprocessorModule
    from tests.helpers import SMALL_FCN

    module = PreprocessorModule(image_size=[32, 32], net=SMALL_FCN)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_every_pil_mode_is_read_by_its_own_range(tmp_path: Path) -> None:
    from recattend.data.images import UnsupportedImageError, image_array, read_image

    def read(name: str, image: Image.Image) -> np.ndarray:
        image.save(tmp_path / name)
        return read_image(tmp_path / name, max_pixels=10_000)

    def grey(values: np.ndarray) -> np.ndarray:  # the hand-computed value / 65535, three times
        return np.repeat((values / 65535).astype(np.float32)[:, :, None], 3, axis=2)

    twelve_bit = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # a 12-bit camera: 0..4095
    sixteen = Image.fromarray(twelve_bit)
    assert sixteen.mode == "I;16"
    got = read("12bit.png", sixteen)
    assert got.dtype == np.float32 and (got == grey(twelve_bit)).all()  # not clipped to white
    assert got.max() == np.float32(4095 / 65535)  # its range is the file's: not stretched
    big_endian = Image.new("I;16B", (3, 2))
    big_endian.putpixel((0, 0), 65535)
    big_endian.putpixel((1, 0), 4095)
    assert (read("b.tif", big_endian)[0, :2, 0] == np.float32([1.0, 4095 / 65535])).all()
    ints = np.array([[0, 300], [65535, 7]], np.int32)  # mode I: 16-bit data held in 32 bits
    assert (read("i.tif", Image.fromarray(ints)) == grey(ints)).all()
    floats = np.array([[0.0, 0.25], [1.0, 0.5]], np.float32)
    assert (read("f.tif", Image.fromarray(floats)) == floats[:, :, None]).all()
    for values, name in ((np.array([[0, 70000]], np.int32), "i"), ([[-1.0, 0.5]], "f")):
        with pytest.raises(UnsupportedImageError, match="known range"):
            read(f"bad-{name}.tif", Image.fromarray(np.asarray(values)))
    with pytest.raises(UnsupportedImageError, match="mode La"):
        image_array(Image.new("La", (2, 2)))

    # 8 bits or fewer: uint8, the alpha channel dropped (the colour stored under it is kept).
    l8 = np.array([[0, 128, 255]], np.uint8)
    assert (read("l.png", Image.fromarray(l8)) == l8[:, :, None]).all()
    la = Image.fromarray(np.array([[[7, 0], [9, 255]]], np.uint8), "LA")
    assert (read("la.png", la) == np.array([[[7] * 3, [9] * 3]])).all()
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128]]], np.uint8)
    assert (read("rgba.png", Image.fromarray(rgba, "RGBA")) == rgba[:, :, :3]).all()
    palette = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    assert (read("p.png", palette) == np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])).all()
    cmyk = Image.fromarray(
        np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8), "CMYK"
    )
    assert (read("cmyk.tif", cmyk) == np.array([[[255] * 3, [0, 255, 255], [0] * 3]])).all()
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    assert (read("one.png", bits) == np.array([[[255] * 3, [0] * 3, [255] * 3]])).all()
    assert read("l2.png", Image.fromarray(l8)).dtype == np.uint8


def test_a_16_bit_image_feeds_the_network_its_8_bit_equivalent() -> None:
    from recattend.data.images import image_array, network_input, to_display

    v8 = np.random.default_rng(0).integers(0, 256, (32, 40), dtype=np.uint8)
    eight = image_array(Image.fromarray(v8))
    sixteen = image_array(Image.fromarray(v8.astype(np.uint16) * 257))  # the same image, 16-bit
    assert eight.dtype == np.uint8 and sixteen.dtype == np.float32
    assert (to_display(sixteen) == eight).all()
    # At the image's own size: bit-identical; resized: equal up to the 8-bit rounding.
    same = network_input(sixteen, (32, 40))
    assert same.dtype == np.float32 and (same == network_input(eight, (32, 40))).all()
    assert (same == v8[:, :, None].astype(np.float32) / 255).all()
    small, small8 = network_input(sixteen, (20, 24)), network_input(eight, (20, 24))
    assert np.abs(small - small8).max() <= 0.5 / 255 + 1e-6
    assert small.min() >= 0.0 and small.max() <= 1.0  # bicubic overshoot clipped


def test_predict_feeds_16_bit_images_scaled_not_clipped(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    v8 = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)  # network's size
    Image.fromarray(v8).save(folder / "grey8.png")
    Image.fromarray(v8.astype(np.uint16) * 257).save(folder / "grey16.png")
    seen = []
    import recattend.api as api  # predict.py reads images through the Python API

    real = api.network_input
    monkeypatch.setattr(api, "network_input", lambda *a: seen.append(real(*a)) or seen[-1])
    out = tmp_path / "out"
    cfg = _compose(
        f"ckpt_path='{checkpoint}'", f"input={folder}", f"output={out}", "progress=false",
        "device=cpu",
    )  # fmt: skip
    counts = predict.run(cfg)
    expected = np.repeat(v8[:, :, None].astype(np.float32) / 255, 3, axis=2)
    assert len(seen) == 2 and all((x == expected).all() for x in seen)  # not a white image
    assert counts["grey8.png"] == counts["grey16.png"]
    labels = [np.asarray(Image.open(out / f"{n}_labels.png")) for n in ("grey8.png", "grey16.png")]
    assert (labels[0] == labels[1]).all()


def test_inputs_sharing_a_stem_keep_their_own_outputs(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "x.png")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(folder / "x.jpg")
    out = tmp_path / "out"
    cfg = _compose(
        f"ckpt_path='{checkpoint}'", f"input={folder}", f"output={out}", "coco_json=true",
        "progress=false", "device=cpu",
    )  # fmt: skip
    assert set(predict.run(cfg)) == {"x.png", "x.jpg"}
    for name, size in (("x.png", (40, 50)), ("x.jpg", (30, 20))):
        assert np.asarray(Image.open(out / f"{name}_labels.png")).shape == size
        picture = np.asarray(Image.open(out / f"{name}_overlay.png"))
        assert picture.shape == (size[0] + count_strip_height(size[1]), size[1], 3)
    rows = list(csv.reader((out / "counts.csv").open()))[1:]
    assert sorted(row[0] for row in rows) == ["x.jpg", "x.png"]
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {"x.png", "x.jpg"}


def test_output_is_never_the_input_and_no_summary_outlives_its_run(
    checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    _inputs(folder)
    (tmp_path / "link").symlink_to(folder)
    # The folder itself, a link to it, and one image of it with the folder as output.
    for source, output in (
        (folder, folder),
        (folder, tmp_path / "link"),
        (folder / "a.png", folder),
    ):
        cfg = _compose(f"ckpt_path='{checkpoint}'", f"input={source}", f"output={output}")
        with pytest.raises(ValueError, match="is the input folder.*a rerun would read them back"):
            predict.run(cfg)
    assert sorted(p.name for p in folder.iterdir()) == [
        "a.png", "b.png", "broken.png", "huge.png", "notes.txt",
    ]  # fmt: skip

    out = folder / "predictions"  # inside the input folder: fine, the input is not recursive
    args = [f"ckpt_path='{checkpoint}'", f"input={folder}", f"output={out}", "progress=false"]
    first = predict.run(_compose(*args, "coco_json=true", "max_pixels=5000", "device=cpu"))
    assert set(first) == {"a.png", "b.png"}
    assert (out / "results.json").is_file() and len(
        list(csv.reader((out / "skipped.csv").open()))
    ) == 4
    for name in ("broken.png", "huge.png", "notes.txt"):
        (folder / name).unlink()
    second = predict.run(_compose(*args, "device=cpu"))  # a rerun: its own outputs not read back
    assert second == first
    assert not (out / "results.json").exists()  # an earlier run's, removed (coco_json=false)
    assert list(csv.reader((out / "skipped.csv").open())) == [["file", "reason"]]
    assert sorted(r[0] for r in list(csv.reader((out / "counts.csv").open()))[1:]) == [
        "a.png", "b.png",
    ]  # fmt: skip
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_summaries_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "counts.csv"
    target.write_text("old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new, half wri")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        predict.write_atomically(target, half_then_fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["counts.csv"]
    predict._write_csv(target, ["image", "instances"], [("a.png", 3)])
    assert target.read_text().splitlines() == ["image,instances", "a.png,3"]


def test_predict_refuses_checkpoints_that_are_not_a_segmenters(
    checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    _inputs(folder)
    fcn = _save_preprocessor_checkpoint(tmp_path / "fcn.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    for ckpt, message in (
        (fcn, r"does not hold a SegmenterModule: it holds a PreprocessorModule \(.*\); "
         r"ckpt_path must name a segmenter checkpoint \(a module=segmenter run\)"),
        (text, r"notes\.ckpt is not a recattend/Lightning checkpoint \(not written by torch\.save"),
    ):  # fmt: skip
        out = tmp_path / f"out-{ckpt.stem}"
        cfg = _compose(f"ckpt_path='{ckpt}'", f"input={folder}", f"output={out}", "device=cpu")
        with pytest.raises(ValueError, match=message):
            predict.run(cfg)
        assert list(out.iterdir()) == []  # refused before writing anything


# ------------------------------------------------------------- inputs unlike the training data
def _validation_images(folder: Path) -> list[str]:
    """The fixture's 4 validation images (tiny_data's, 32 x 32) as PNG files in ``folder``."""
    folder.mkdir()
    data = tiny_data()
    data.setup("validate")
    names = []
    for batch in data.val_dataloader():
        for image in batch["image"]:
            names.append(f"val_{len(names)}.png")
            pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / names[-1])
    return names


def _unlike(out: Path) -> dict[str, str]:
    """counts.csv's unlike_training column: {image: reasons}."""
    return {r["image"]: r["unlike_training"] for r in csv.DictReader((out / "counts.csv").open())}


def test_validation_statistics_survive_the_checkpoint_round_trip(checkpoint: Path) -> None:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["output_statistics"]
    assert saved["images"] == 4.0  # tiny_data's 4 validation images
    assert all(type(v) is float for v in saved.values())
    assert {"foreground_fraction.std", "instances.mean", "mean_score.mean"} <= set(saved)
    assert saved["image_area.mean"] == 32 * 32  # generated at the network's resolution
    # Resuming restores them, and the next checkpoint saves them again.
    module = tiny_segmenter(postprocess={"threshold": 0.0})
    assert module.output_statistics is None
    blank: dict = {}
    module.on_save_checkpoint(blank)
    assert "output_statistics" not in blank  # never validated: nothing to save
    module.on_load_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))
    assert module.output_statistics == saved
    again: dict = {}
    module.on_save_checkpoint(again)
    assert again["output_statistics"] == saved


def test_inputs_unlike_the_training_data_are_warned_about_not_refused(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    names = _validation_images(folder)
    rng = np.random.default_rng(3)
    # 264 x 264: 68 times the training images' area; 16 x 70: as large, 4.4 times wider.
    Image.fromarray(rng.integers(0, 255, (264, 264, 3), dtype=np.uint8)).save(folder / "big.png")
    Image.fromarray(rng.integers(0, 255, (16, 70, 3), dtype=np.uint8)).save(folder / "wide.png")
    out = tmp_path / "out"
    cfg = _compose(
        f"ckpt_path='{checkpoint}'", f"input={folder}", f"output={out}", "progress=false",
        "device=cpu",
    )  # fmt: skip
    with caplog.at_level("WARNING", logger=predict.__name__):
        counts = predict.run(cfg)
    assert set(counts) == {*names, "big.png", "wide.png"}  # warned about, still predicted
    # The validation images themselves give the recorded statistics: nothing to say. The
    # noise images are too large or too wide, and far more textured than any rosette.
    unlike = _unlike(out)
    assert {name: unlike[name] for name in names} == dict.fromkeys(names, "")
    assert unlike["big.png"].startswith("size 264x264 vs about 32x32; edge strength ")
    assert unlike["wide.png"].startswith("size 70x16 vs about 32x32; edge strength ")
    [warning] = [r.getMessage() for r in caplog.records if "look unlike" in r.getMessage()]
    assert warning.startswith(
        "2 of 6 image(s) look unlike the data the model was trained on (compared with its "
        "validation images: about 32x32, foreground fraction "
    )
    assert "results on them may be meaningless" in warning and "unlike_training" in warning
    assert "big.png: size 264x264 vs about 32x32" in warning and "val_0" not in warning

    # Only the validation images: no warning at all.
    caplog.clear()
    for name in ("big.png", "wide.png"):
        (folder / name).unlink()
    with caplog.at_level("WARNING", logger=predict.__name__):
        predict.run(cfg)
    assert not [r for r in caplog.records if "look unlike" in r.getMessage()]
    assert set(_unlike(out).values()) == {""}


def test_outputs_far_from_the_validation_statistics_are_warned_about(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The tiny model (two training steps) answers a flat white image as it answers its
    # validation images, so the checkpoint's record is made narrower by hand: validation
    # scores of 0.90±0.01, on a recorded dataset.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["output_statistics"].update({"mean_score.mean": 0.9, "mean_score.std": 0.01})
    saved["dataset"] = {"_target_": "recattend.data.SyntheticDataModule", "style": "leaves"}
    narrow = tmp_path / "narrow.ckpt"
    torch.save(saved, narrow)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(folder / "white.png")
    out = tmp_path / "out"
    args = [f"input={folder}", f"output={out}", "progress=false", "device=cpu"]
    with caplog.at_level("WARNING", logger=predict.__name__):
        predict.run(_compose(f"ckpt_path='{narrow}'", *args))
    with torch.no_grad():  # the white image's mean score, as predict computes it
        module = SegmenterModule.load_from_checkpoint(narrow).eval()
        x = torch.ones(1, 3, 32, 32)
        score = float(module.postprocess(module(x))[0].scores.mean())
    # Among its reasons (a flat white image has no rosette's colours or texture either).
    assert f"mean score {score:.2f} vs 0.90±0.01" in _unlike(out)["white.png"].split("; ")
    [warning] = [r.getMessage() for r in caplog.records if "look unlike" in r.getMessage()]
    assert warning.startswith(
        "1 of 1 image(s) look unlike the data the model was trained on (SyntheticDataModule "
        "(style=leaves)) (compared with its validation images: about 32x32"
    )

    # A checkpoint from before statistics were recorded: the size alone, against the network.
    del saved["output_statistics"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    Image.fromarray(np.full((264, 264, 3), 255, np.uint8)).save(folder / "big.png")
    caplog.clear()
    with caplog.at_level("INFO", logger=predict.__name__):
        predict.run(_compose(f"ckpt_path='{old}'", *args))
    assert _unlike(out) == {"white.png": "", "big.png": "size 264x264 vs about 32x32"}
    messages = [r.getMessage() for r in caplog.records]
    assert any("holds no output statistics" in m for m in messages)
    assert any("compared with its network input: 32x32" in m for m in messages)
