"""CVPPP, KITTI, Cityscapes and COCO loaders on fixtures written in the official layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recattend.data import (
    CityscapesDataModule,
    COCODataModule,
    CVPPPDataModule,
    KITTIDataModule,
)
from recattend.data.check import main as check_main
from recattend.data.cvppp import split_ids
from recattend.data.files import BadFileError, FileInstances
from recattend.data.fixtures import write_cityscapes, write_coco, write_cvppp, write_kitti

PLANTS = [1, 2, 4, 7, 9, 10, 13, 15, 16, 20]  # ids with gaps, as A1


def _samples(dm, split: str) -> dict[str, dict]:
    """Every sample of a split by id, straight from the dataset (no shuffling)."""
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    dataset = dm.datasets[split]
    return {s["meta"]["id"]: s for s in (dataset[i] for i in range(len(dataset)))}


def _same_instances(sample: dict, truth: np.ndarray) -> None:
    """The contract's slots hold exactly the true masks, largest first."""
    n = len(truth)
    assert int(sample["num_instances"]) == n
    areas = truth.sum(axis=(1, 2))
    expected = truth[np.argsort(-areas, kind="stable")]
    got = sample["masks"][:n].numpy().astype(bool)
    assert (got == expected).all()
    assert sample["masks"][n:].sum() == 0


def test_cvppp_reads_palette_labels_rgba_images_and_splits(tmp_path: Path) -> None:
    truth = write_cvppp(tmp_path / "A1", PLANTS)
    assert Image.open(tmp_path / "A1" / "plant001_label.png").mode == "P"
    assert Image.open(tmp_path / "A1" / "plant001_rgb.png").mode == "RGBA"
    dm = CVPPPDataModule(
        root=tmp_path / "A1", resolution=[96, 104], max_instances=8, batch_size=2, augment=None
    )
    train, val = _samples(dm, "train"), _samples(dm, "val")
    assert len(train) == 8 and len(val) == 2  # ceil(0.8 * 10) = 8
    assert set(train) | set(val) == set(truth) and not set(train) & set(val)
    for plant, sample in {**train, **val}.items():
        assert sample["image"].shape == (3, 96, 104)  # RGBA converted
        _same_instances(sample, truth[plant])
        assert sample["meta"]["orig_size"] == (96, 104)
        assert sample["meta"]["label"].endswith(f"{plant}_label.png")
    # The test split defaults to val; a labelled test_root is read as the test split.
    write_cvppp(tmp_path / "test", [3, 5])
    dm = CVPPPDataModule(
        root=tmp_path / "A1", test_root=tmp_path / "test", resolution=[48, 52], max_instances=8,
        batch_size=2,
    )  # fmt: skip
    test = _samples(dm, "test")
    assert set(test) == {"plant003", "plant005"}
    assert test["plant003"]["meta"]["orig_size"] == (96, 104)  # before resizing to 48x52


def test_cvppp_split_matches_the_authors_103_25() -> None:
    ids = [f"plant{i:03d}" for i in range(128)]
    split = split_ids(ids, 0.2, 2)
    assert (len(split["train"]), len(split["val"])) == (103, 25)
    assert split == split_ids(ids, 0.2, 2)  # seeded


def test_cvppp_unlabelled_test_root_serves_prediction_only(tmp_path: Path) -> None:
    write_cvppp(tmp_path / "A1", PLANTS[:4])
    write_cvppp(tmp_path / "official_test", [3, 5], labels=False)
    dm = CVPPPDataModule(
        root=tmp_path / "A1", test_root=tmp_path / "official_test", resolution=[48, 48],
        max_instances=8, batch_size=2,
    )  # fmt: skip
    assert not dm.labelled("test") and dm.labelled("train")
    with pytest.raises(ValueError, match="test split of CVPPPDataModule has no labels"):
        dm.setup("test")
    unlabelled = dm.read(dm.entries("test")[0])
    assert unlabelled.masks.shape[0] == 0 and unlabelled.meta["label"] is None


def test_kitti_reads_colour_maps_and_the_split_files(tmp_path: Path) -> None:
    splits = {"train": ["000000", "000001", "000002"], "val": ["000003"], "test": ["000004"]}
    truth = write_kitti(tmp_path, splits)
    dm = KITTIDataModule(root=tmp_path, resolution=[75, 248], max_instances=5, batch_size=2)
    for split, ids in splits.items():
        samples = _samples(dm, split)
        assert sorted(samples) == ids
        for i, sample in samples.items():
            _same_instances(sample, truth[i])
            expected_folder = "gt" if split == "train" else "gt_man"
            assert Path(sample["meta"]["label"]).parent.name == expected_folder


def test_cityscapes_instances_classes_semantic_and_ignored_regions(tmp_path: Path) -> None:
    truth = write_cityscapes(tmp_path, "train", {"aachen": 2, "bochum": 1})
    write_cityscapes(tmp_path, "val", {"frankfurt": 1})
    label = next((tmp_path / "gtFine" / "train" / "aachen").glob("*instanceIds.png"))
    assert Image.open(label).mode in ("I;16", "I")  # 16-bit
    dm = CityscapesDataModule(root=tmp_path, resolution=[64, 128], max_instances=6, batch_size=2)
    samples = _samples(dm, "train")
    assert sorted(samples) == sorted(truth)
    for stem, sample in samples.items():
        masks, classes = truth[stem]
        _same_instances(sample, masks)
        order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
        n = len(masks)
        assert sample["instance_classes"][:n].tolist() == classes[order].tolist()
        assert sample["instance_classes"][n:].sum() == 0
        semantic = sample["semantic"]
        assert semantic.dtype == torch.int64
        assert (semantic[:8, :16] == 3).all()  # the car crowd region: car, but no instance
        assert sample["masks"][:, :8, :16].sum() == 0 or n == 0
        assert set(semantic.unique().tolist()) <= {0, 1, 3, 8}  # caravan (29) and road: 0
    assert len(_samples(dm, "test")) == 1  # test -> the official val folder


def test_coco_polygons_rle_crowd_and_category_filter(tmp_path: Path) -> None:
    truth = write_coco(tmp_path, "train2017", images=6)
    write_coco(tmp_path, "val2017", images=3)
    dm = COCODataModule(root=tmp_path, resolution=[60, 80], max_instances=4, batch_size=2)
    samples = _samples(dm, "train")
    with_zebras = {i for i, (masks, _) in truth.items() if len(masks)}
    assert set(samples) == with_zebras  # giraffe-only images skipped
    for image_id, sample in samples.items():
        masks, _ = truth[image_id]
        _same_instances(sample, masks)  # polygon + compressed RLE; giraffe and crowd left out
        assert sample["instance_classes"][:2].tolist() == [1, 1]
        assert sample["semantic"][52, 10] == 0  # the crowd region is not a zebra instance
    kept = COCODataModule(
        root=tmp_path, keep_empty=True, resolution=[60, 80], max_instances=4, batch_size=2
    )
    assert len(_samples(kept, "train")) == 6
    both = COCODataModule(
        root=tmp_path, categories=["zebra", "giraffe"], resolution=[60, 80], max_instances=4,
        batch_size=2,
    )  # fmt: skip
    sample = _samples(both, "train")[str(1000)]
    assert int(sample["num_instances"]) == 3 and sorted(
        sample["instance_classes"][:3].tolist()
    ) == [1, 1, 2]
    with pytest.raises(ValueError, match=r"\['zebr'\] not in instances_train2017.json.*zebra"):
        COCODataModule(root=tmp_path, categories=["zebr"], resolution=[60, 80], max_instances=4,
                       batch_size=2).setup("fit")  # fmt: skip


def test_augmentation_keeps_masks_on_their_pixels(tmp_path: Path) -> None:
    # One white square on black: after flips, rotation and scaling, the mask must still cover
    # the white pixels (two pixels away from the border, which bicubic resizing blurs).
    folder = tmp_path / "A1"
    folder.mkdir()
    image = np.zeros((80, 80, 3), np.uint8)
    image[20:50, 30:60] = 255
    label = Image.fromarray((image[..., 0] > 0).astype(np.uint8)).convert("P")
    for plant in ("plant001", "plant002"):  # one for train, one for val
        Image.fromarray(image).save(folder / f"{plant}_rgb.png")
        label.save(folder / f"{plant}_label.png")
    augment = {
        "HorizontalFlip": {"p": 1.0},
        "Transpose": {"p": 0.5},
        "Affine": {"rotate": [-30, 30], "scale": [0.8, 1.2], "p": 1.0},
    }
    dm = CVPPPDataModule(
        root=folder, val_fraction=0.5, resolution=[64, 64], max_instances=2, batch_size=1,
        augment={"per_image": augment},
    )  # fmt: skip
    dm.setup("fit")
    torch.manual_seed(0)
    for _ in range(5):
        sample = dm.datasets["train"][0]
        mask = sample["masks"][0].bool()
        brightness = sample["image"].mean(0)
        inner = torch.nn.functional.max_pool2d((~mask).float()[None, None], 5, 1, 2)[0, 0] == 0
        outer = torch.nn.functional.max_pool2d(mask.float()[None, None], 5, 1, 2)[0, 0] == 0
        assert inner.any() and (brightness[inner] > 0.9).all()
        assert (brightness[outer] < 0.1).all()


def test_missing_root_names_the_folder_the_layout_and_the_source(tmp_path: Path) -> None:
    cases = [
        (CVPPPDataModule, "plant001_label.png", "plant-phenotyping.org"),
        (KITTIDataModule, "gt/000000.png", "cvlibs"),
        (CityscapesDataModule, "gtFine_instanceIds.png", "cityscapes-dataset.com"),
        (COCODataModule, "annotations/instances_train2017.json", "cocodataset.org"),
    ]
    for cls, example, source in cases:
        dm = cls(root=tmp_path / "nowhere", resolution=[32, 32], max_instances=2, batch_size=1)
        with pytest.raises(FileNotFoundError) as err:
            dm.setup("fit")
        message = str(err.value)
        assert f"dataset.root={tmp_path / 'nowhere'}" in message
        assert example in message and source in message


def _damaged_cvppp(tmp_path: Path) -> Path:
    folder = tmp_path / "A1"
    write_cvppp(folder, PLANTS[:5])
    data = (folder / "plant002_rgb.png").read_bytes()
    (folder / "plant002_rgb.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.new("P", (10, 10)).save(folder / "plant004_label.png")  # wrong size
    (folder / "plant007_label.png").unlink()  # missing label
    return folder


def test_bad_files_are_skipped_with_a_count_or_fail(tmp_path: Path, caplog) -> None:
    folder = _damaged_cvppp(tmp_path)
    kwargs = dict(root=folder, val_fraction=0.0, resolution=[32, 32], max_instances=8, batch_size=1)
    dm = CVPPPDataModule(**kwargs)
    with caplog.at_level(logging.WARNING):
        source = dm.build_source("train")
        ids = [source[i].meta["id"] for i in range(len(source))]
    assert "2 file(s) of the train split skipped" in caplog.text
    assert "plant004_label.png: label size 10x10 does not match" in caplog.text
    assert "plant007_label.png" in caplog.text
    # The truncated image only shows when decoded: skipped, counted, the next sample served.
    assert (
        "skipped unreadable sample plant002" in caplog.text and "1 file(s) skipped" in caplog.text
    )
    assert "plant002" not in ids and len(ids) == 3
    with pytest.raises(BadFileError, match="2 problem\\(s\\) in the train split"):
        CVPPPDataModule(**kwargs, on_bad_file="fail").build_source("train")
    entry = next(e for e in dm.entries("train") if e.id == "plant002")
    with pytest.raises(BadFileError, match="cannot read sample plant002"):
        FileInstances([entry], dm.read, "fail")[0]


def test_a_split_with_only_bad_files_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "A1"
    write_cvppp(folder, [1])
    (folder / "plant001_label.png").unlink()
    dm = CVPPPDataModule(root=folder, val_fraction=0.0, resolution=[32, 32], max_instances=8,
                         batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match="the train split of CVPPPDataModule is empty"):
        dm.setup("fit")


def test_check_command_lists_counts_and_problems(tmp_path: Path, capsys) -> None:
    folder = _damaged_cvppp(tmp_path)
    csv = folder / "A1.csv"
    csv.write_text(csv.read_text().replace("plant009_rgb.png,", "plant009_rgb.png,1"))
    status = check_main(["dataset=cvppp", f"dataset.root={folder}", "dataset.val_fraction=0"])
    out = capsys.readouterr().out
    assert status == 1
    assert "train: 5 image(s), instances per image min" in out
    assert "plant002_rgb.png: cannot decode" in out
    assert "plant004_label.png: label size 10x10" in out
    assert "plant007_label.png" in out and "no label" in out
    assert "the dataset index says 1" in out  # A1.csv disagrees with the label
    assert "the val split is empty" in out  # dataset.val_fraction=0
    assert "problem(s) found" in out
    # More instances than slots, and a half-transparent photo: flagged.
    busy = tmp_path / "busy"
    truth = write_cvppp(busy, PLANTS[:5])
    most = max(len(m) for m in truth.values())
    photo = busy / "plant001_rgb.png"
    rgba = np.asarray(Image.open(photo).convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, :, 3] = 0
    Image.fromarray(rgba).save(photo)
    assert check_main(["dataset=cvppp", f"dataset.root={busy}",
                       f"dataset.max_instances={most - 1}"]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert f"{most} instances, more than the {most - 1} slots (dataset.max_instances)" in out
    assert "plant001_rgb.png: 50.0 % of it is transparent" in out
    good = tmp_path / "good"
    write_cvppp(good, PLANTS[:5])  # 4 train, 1 val
    assert check_main(["dataset=cvppp", f"dataset.root={good}"]) == 0
    assert "no problems found" in capsys.readouterr().out


@pytest.mark.slow
def test_training_runs_on_a_cvppp_layout_folder(compose_train, tmp_path: Path) -> None:
    import json

    from recattend.tasks import train

    write_cvppp(tmp_path / "A1", PLANTS)
    cfg = compose_train(
        "dataset=cvppp",
        f"dataset.root={tmp_path / 'A1'}",
        "dataset.resolution=[64,64]",
        "dataset.num_workers=0",
        "dataset.batch_size=4",
        "trainer.max_steps=2",
        "trainer.accelerator=cpu",
        "logger=csv",
    )
    train.run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test/sbd"] <= 1.0 and "train/loss_box" in metrics
