"""External semantic predictions for Cityscapes (``preprocessors.semantic_dir``, the authors' LRR
input): found per image in the official layout, they replace the FCN's maps for the foreground AND
and the instance classes, at the original size (test, export) and at network resolution
(validation)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recattend.data import CityscapesDataModule
from recattend.data.fixtures import write_cityscapes
from recattend.evaluation import CityscapesEvaluator, InstanceEvaluator
from recattend.evaluation.statistics import StatisticsRecorder
from recattend.postprocess import PostProcess
from tests.helpers import TINY

SIZE = (64, 128)  # the fixture's original size; the network runs at half of it
STEMS = ("frankfurt_000000_000019", "frankfurt_000001_000019")


def lrr_prediction() -> np.ndarray:
    """(64, 128) uint8 Cityscapes label ids: road (7) on rows 0..15, then car (26) on columns
    0..63 and person (24) on columns 64..127, with a caravan (29, not an instance class) on rows
    48..63 of the right half."""
    ids = np.full(SIZE, 26, np.uint8)
    ids[:, 64:] = 24
    ids[48:, 64:] = 29
    ids[:16] = 7
    return ids


def write_predictions(folder: Path, suffix: str = "_lrr_labelIds.png") -> None:
    """One prediction per val image, ``<folder>/val/frankfurt/<stem><suffix>``."""
    (folder / "val" / "frankfurt").mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        Image.fromarray(lrr_prediction()).save(folder / "val" / "frankfurt" / f"{stem}{suffix}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_cityscapes(tmp_path / "cityscapes", "val", {"frankfurt": 2}, size=SIZE)
    write_predictions(tmp_path / "lrr")
    return tmp_path / "cityscapes"


def data(root: Path, semantic: Path | None) -> CityscapesDataModule:
    return CityscapesDataModule(
        root=root, semantic=semantic, resolution=[32, 64], max_instances=6, batch_size=2,
        num_workers=0, on_bad_file="fail",
    )  # fmt: skip


def outputs() -> dict[str, torch.Tensor]:
    """Two images' outputs at 32x64: slot 0 covers the left half, slot 1 the right half (score 1
    each), the other 5 slots nothing."""
    masks = torch.zeros(2, 7, 32, 64)
    masks[:, 0, :, :32] = 1.0
    masks[:, 1, :, 32:] = 1.0
    scores = torch.zeros(2, 7)
    scores[:, :2] = 1.0
    return {"masks": masks, "scores": scores}


def postprocess() -> PostProcess:
    """The outputs carry no pre-processor maps: without external maps there is neither a
    foreground AND nor classes."""
    return PostProcess(threshold=0.5, foreground=True, blur=False, upsample="nearest")


def test_the_maps_are_found_by_prefix_and_read_as_train_ids(root: Path, tmp_path: Path) -> None:
    dm = data(root, tmp_path / "lrr")
    dm.setup("test")
    meta = dm.datasets["test"][0]["meta"]
    assert meta["semantic"] == str(tmp_path / "lrr/val/frankfurt" / f"{STEMS[0]}_lrr_labelIds.png")
    # Car 26 -> 3, person 24 -> 1; road and caravan (no instance class) -> 0.
    expected = np.zeros(SIZE, np.int64)
    expected[16:, :64] = 3
    expected[16:48, 64:] = 1
    semantic = dm.semantic_map(meta)
    assert semantic.dtype == np.int64 and (semantic == expected).all()
    # The training split needs none (and without a folder no split has any).
    assert data(root, None).semantic_map(meta | {"semantic": None}) is None


def test_at_the_original_size_they_give_classes_and_remove_background(
    root: Path, tmp_path: Path
) -> None:
    dm = data(root, tmp_path / "lrr")
    batch = next(iter(dm.test_dataloader()))
    evaluator = CityscapesEvaluator(per_image=False)
    evaluator.setup(dm, tmp_path / "run", export=True)
    evaluator.reset()
    evaluator.process(batch, outputs(), postprocess())

    # Each instance keeps only the pixels the prediction calls an instance class: the left one
    # loses the road rows, the right one the road rows and the caravan.
    expected = np.zeros(SIZE, np.uint8)
    expected[16:, :64] = 1
    expected[16:48, 64:] = 2
    for stem in STEMS:
        with Image.open(tmp_path / "run/predictions/labels" / f"{stem}.png") as png:
            assert (np.asarray(png) == expected).all()
        # The classes: car (label id 26) on the left, person (24) on the right.
        lines = (tmp_path / "run/predictions/cityscapes" / f"{stem}_pred.txt").read_text()
        assert [line.split()[:2] for line in lines.splitlines()] == [
            [f"masks/{stem}_001.png", "26"],
            [f"masks/{stem}_002.png", "24"],
        ]
    assert "ap" in evaluator.evaluate()

    # Without the folder the same outputs keep every pixel and have no class (no FCN here).
    result = postprocess()(outputs(), size=SIZE)[0]
    assert result.classes is None and bool((result.labels > 0).all())


def test_at_network_resolution_validation_uses_them_too(root: Path, tmp_path: Path) -> None:
    dm = data(root, tmp_path / "lrr")
    batch = next(iter(dm.val_dataloader()))
    seen = []

    def instances(*args, **kwargs):
        seen.extend(postprocess()(*args, **kwargs))
        return seen[-2:]

    # Wrapped as the Evaluate callback wraps it for validation (its statistics).
    evaluator = InstanceEvaluator(original_resolution=False, per_image=False)
    evaluator.setup(dm)
    evaluator.process(batch, outputs(), StatisticsRecorder().recording(instances, batch))
    # The 64x128 prediction at 32x64: road on rows 0..7, the caravan on rows 24..31 (right).
    expected = torch.zeros(32, 64, dtype=torch.int64)
    expected[8:, :32] = 1
    expected[8:24, 32:] = 2
    assert len(seen) == 2
    for result in seen:
        assert torch.equal(result.labels, expected)
        assert result.classes.tolist() == [3, 1]


def test_bad_input_says_what_is_wrong_and_how_to_fix_it(root: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"preprocessors\.semantic_dir=.*nowhere: no such folder"
    ):
        data(root, tmp_path / "nowhere")

    # An image without a prediction: named, with the path expected.
    (tmp_path / "lrr/val/frankfurt" / f"{STEMS[1]}_lrr_labelIds.png").unlink()
    expected = re.escape(f"{tmp_path / 'lrr/val/frankfurt' / STEMS[1]}_*.png")
    with pytest.raises(
        FileNotFoundError, match=f"no semantic prediction for .*{STEMS[1]}.*{expected}"
    ):
        data(root, tmp_path / "lrr").setup("test")

    # Two candidates for one image.
    write_predictions(tmp_path / "lrr")
    Image.fromarray(lrr_prediction()).save(tmp_path / "lrr/val/frankfurt" / f"{STEMS[0]}_x.png")
    with pytest.raises(
        ValueError, match=f"2 files could be the semantic prediction of .*{STEMS[0]}"
    ):
        data(root, tmp_path / "lrr").setup("test")

    # A prediction of another size than its image.
    (tmp_path / "lrr/val/frankfurt" / f"{STEMS[0]}_x.png").unlink()
    small = Image.fromarray(lrr_prediction()).resize((64, 32), Image.NEAREST)
    small.save(tmp_path / "lrr/val/frankfurt" / f"{STEMS[0]}_lrr_labelIds.png")
    dm = data(root, tmp_path / "lrr")
    batch = next(iter(dm.test_dataloader()))
    evaluator = CityscapesEvaluator(per_image=False)
    evaluator.setup(dm)
    with pytest.raises(ValueError, match=r"_lrr_labelIds\.png is 32x64 but its image .* is 64x128"):
        evaluator.process(batch, outputs(), postprocess())


def test_another_dataset_is_refused_before_any_work(compose_train, tmp_path: Path) -> None:
    from recattend.tasks import train

    cfg = compose_train(*TINY, f"preprocessors.semantic_dir={tmp_path}", "logger=none")
    with pytest.raises(ValueError, match=r"preprocessors\.semantic_dir=.*Cityscapes only.*"
                       r"SyntheticDataModule: use dataset=cityscapes"):  # fmt: skip
        train.run(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_eval_reads_them_end_to_end(root: Path, compose_train, tmp_path: Path) -> None:
    """``python eval.py ... preprocessors.semantic_dir=<folder> export=true``: every exported mask
    lies on the prediction's instance classes and carries their majority label id."""
    from recattend.tasks import eval as eval_task
    from recattend.tasks import train

    write_cityscapes(root, "train", {"aachen": 2}, size=SIZE)
    dataset = [
        "dataset=cityscapes", f"dataset.root={root}", "dataset.resolution=[32,64]",
        "dataset.max_instances=6", "dataset.num_workers=0", "dataset.batch_size=2",
    ]  # fmt: skip
    train.run(compose_train(*dataset, "trainer.max_steps=1", "test=false", "logger=none"))
    cfg = compose_train(
        *dataset, f"ckpt_path={tmp_path / 'checkpoints/last.ckpt'}", "trainer.accelerator=cpu",
        f"preprocessors.semantic_dir={tmp_path / 'lrr'}", "export=true",
        "postprocess.threshold=0.0", "postprocess.foreground=true", "logger=none",
        config_name="eval",
    )  # fmt: skip
    metrics = eval_task.run(cfg)
    assert "test/ap" in metrics  # classes came from the folder: this checkpoint has no FCN
    ids = lrr_prediction()
    exported = 0
    for stem in STEMS:
        with Image.open(tmp_path / "predictions/labels" / f"{stem}.png") as png:
            labels = np.asarray(png)
        assert not labels[(ids != 24) & (ids != 26)].any()  # road and caravan removed
        folder = tmp_path / "predictions/cityscapes"
        for line in (folder / f"{stem}_pred.txt").read_text().splitlines():
            name, label_id, _ = line.split()
            with Image.open(folder / name) as png:
                mask = np.asarray(png) > 0
            values, counts = np.unique(ids[mask], return_counts=True)
            assert int(label_id) == values[counts.argmax()]
            exported += 1
    assert exported > 0
