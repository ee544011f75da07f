"""The Python API (recattend.Segmenter): every kind of input segmented alike, at its own size,
through the module's own network and post-processing; Trainer.predict through predict_step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import recattend
from recattend.api import Segmentation, Segmenter
from recattend.data.images import network_input
from tests.helpers import tiny_data, tiny_segmenter


@pytest.fixture
def segmenter() -> Segmenter:
    # Threshold 0: every pixel goes to some instance, so no result is trivially empty.
    torch.manual_seed(0)
    return Segmenter(tiny_segmenter(postprocess={"threshold": 0.0}))


def _photo(height: int = 40, width: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_every_kind_of_input_gives_the_same_result(segmenter: Segmenter, tmp_path: Path) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    kinds = {
        "uint8 array": photo,
        "PIL image": Image.fromarray(photo),
        "path": tmp_path / "photo.png",
        "path as str": str(tmp_path / "photo.png"),
        "uint8 tensor": torch.from_numpy(photo).permute(2, 0, 1),
    }
    results = {kind: segmenter(image) for kind, image in kinds.items()}
    expected = results["uint8 array"]
    assert isinstance(expected, Segmentation) and expected.labels.shape == (40, 52)
    for kind, result in results.items():
        assert np.array_equal(result.labels, expected.labels), kind
    # What the API does, by hand: the network input predict.py makes, the module's forward and
    # its post-processing at the image's own size.
    module = segmenter.module
    x = torch.from_numpy(network_input(photo, module.net.image_size)).permute(2, 0, 1)[None]
    with torch.no_grad():
        [instances] = module.postprocess(module(x), (40, 52))
    assert np.array_equal(expected.labels, instances.labels.numpy())
    np.testing.assert_allclose(expected.scores, instances.scores.numpy())
    # The masks are the labels split by instance, in order; the count is K.
    k = expected.count
    assert k == int(expected.labels.max()) == len(expected.scores) == len(expected.masks) > 0
    for i in range(k):
        assert np.array_equal(expected.masks[i], expected.labels == i + 1)
    assert expected.masks.dtype == bool and expected.scores.dtype == np.float32
    # Float images in [0, 1] are resized as floats, the same values as their 8-bit original up
    # to the 8-bit rounding of the resized values: identical at the network's own size.
    small = _photo(32, 32)
    floats = small.astype(np.float32) / 255
    for image in (floats, torch.from_numpy(floats).permute(2, 0, 1)):
        assert np.array_equal(segmenter(image).labels, segmenter(small).labels)


def test_grey_inputs_are_read_as_rgb(segmenter: Segmenter) -> None:
    grey = _photo()[:, :, 0]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for image in (grey, grey[:, :, None], torch.from_numpy(grey), torch.from_numpy(grey)[None]):
        assert np.array_equal(segmenter(image).labels, segmenter(rgb).labels)


def test_batches_of_images_of_any_size_equal_one_by_one(segmenter: Segmenter) -> None:
    images = [_photo(40, 52, 0), _photo(32, 32, 1), _photo(64, 24, 2)]
    batched = segmenter.predict(images, batch_size=2)
    assert [r.labels.shape for r in batched] == [(40, 52), (32, 32), (64, 24)]
    for image, result in zip(images, batched, strict=True):
        # A batch of 2 and of 1 may round differently in the convolutions, which moves a pixel
        # where two of this untrained model's maps nearly tie; nothing more.
        alone = segmenter(image)
        assert (result.labels == alone.labels).mean() > 0.97
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
    assert segmenter.predict([]) == []


def test_bad_inputs_say_what_to_give(segmenter: Segmenter) -> None:
    for image, message in (
        (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\): give \(H, W, 3\) RGB or \(H, W\)"),
        (np.full((8, 8, 3), 2.0), r"values in 2\.0\.\.2\.0: float images must lie in \[0, 1\]"),
        (torch.zeros(5, 8, 8), r"shape \(5, 8, 8\): give \(3, H, W\) or \(H, W\)"),
        ([[0, 1]], "an image of type list: give a path, a numpy array, a PIL image or a tensor"),
    ):
        with pytest.raises(ValueError, match=message):
            segmenter(image)
    with pytest.raises(ValueError, match="batch_size=0: use 1 or more"):
        segmenter.predict([_photo()], batch_size=0)
    with pytest.raises(ValueError, match=r"precision='16': use one of \['32', 'bf16'\]"):
        Segmenter(segmenter.module, precision="16")


def test_bfloat16_gives_a_result_of_the_same_form(segmenter: Segmenter) -> None:
    result = Segmenter(segmenter.module, precision="bf16")(_photo())
    assert result.labels.shape == (40, 52) and result.scores.dtype == np.float32


def test_load_shipped_weights_and_checkpoints(tmp_path: Path) -> None:
    leaves = recattend.Segmenter.load("leaves", device="cpu", cpu_fast_path=False)
    assert leaves.image_size == (224, 224) and leaves.device.type == "cpu"
    # Post-processing over the checkpoint's: threshold 1 leaves no pixel (every value <= 1).
    strict = Segmenter.load("leaves", device="cpu", postprocess={"threshold": 1.0})
    assert strict.module.postprocess.threshold == 1.0
    assert strict(_photo(50, 53)).count == 0
    with pytest.raises(ValueError, match=r"postprocess\.blurr: not a post-processing setting"):
        Segmenter.load("leaves", device="cpu", postprocess={"blurr": False})
    with pytest.raises(FileNotFoundError, match="leavs"):
        Segmenter.load("leavs", device="cpu")
    # A run's checkpoint.
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    loaded = Segmenter.load(ckpt, device="cpu")
    assert loaded.image_size == (32, 32) and loaded(_photo()).labels.shape == (40, 52)


def test_trainer_predict_gives_instances_at_each_images_size() -> None:
    torch.manual_seed(0)
    module = tiny_segmenter(postprocess={"threshold": 0.0})
    data = tiny_data()
    data.setup("validate")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(module, dataloaders=data.val_dataloader())
    instances = [result for batch in batches for result in batch]
    assert len(instances) == len(data.datasets["val"])
    # Generated data is made at network resolution: labels at 32 x 32, numbered 1..K.
    for result in instances:
        assert result.labels.shape == (32, 32)
        assert int(result.labels.max()) == len(result.scores)
    # With an original size recorded, the labels come at that size.
    batch = next(iter(data.val_dataloader()))
    batch["meta"] = [{**m, "orig_size": (48, 40)} for m in batch["meta"]]
    with torch.no_grad():
        results = module.eval().predict_step(batch, 0)
    assert [r.labels.shape for r in results] == [(48, 40)] * len(results)
