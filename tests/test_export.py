"""Exported models (recattend.export): TorchScript and ONNX files of the inference graph give the
eager network's outputs, and the API and predict.py run them as they run checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from recattend.api import Segmenter, exported_metadata
from recattend.export import InferenceGraph, export, main
from tests.helpers import SMALL_FCN, tiny_data, tiny_segmenter

# Exported against eager outputs on the same inputs: the traced graph runs the same operators
# in the same order, so float32 rounding is all that may differ.
ATOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    trainer = L.Trainer(
        default_root_dir=folder, max_steps=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tiny_segmenter(postprocess={"threshold": 0.0}), datamodule=tiny_data())
    return next((folder / "checkpoints").glob("*.ckpt"))


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_torchscript_gives_the_eager_outputs_on_several_images(
    checkpoint: Path, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = export(checkpoint, tmp_path, formats=["torchscript"])
    # A TracerWarning marks Python-side data flow frozen into the graph (e.g. a shape test).
    traced = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert traced == []
    path = written["torchscript"]
    assert path.name.endswith(".torchscript.pt")
    eager = Segmenter.load(checkpoint, device="cpu", cpu_fast_path=False).module
    graph = torch.jit.load(str(path))
    x = _images(3)  # a batch of 3, though traced with 2
    with torch.no_grad():
        expected = eager(x)
        masks, scores = graph(x)
    assert masks.shape == (3, 4, 32, 32) and scores.shape == (3, 4)  # T = 4 steps, always
    torch.testing.assert_close(masks, expected["masks"], atol=ATOL, rtol=0)
    torch.testing.assert_close(scores, expected["scores"], atol=ATOL, rtol=0)
    info = exported_metadata(path)
    assert info["image_size"] == [32, 32] and info["steps"] == 4
    assert info["outputs"] == ["masks", "scores"] and info["postprocess"]["threshold"] == 0.0
    # The API runs the file as it runs the checkpoint: the same labels on images of any size.
    exported, loaded = Segmenter.load(path, device="cpu"), Segmenter.load(checkpoint, device="cpu")
    photos = [
        np.random.default_rng(i).integers(0, 256, (40 + i, 36, 3), np.uint8) for i in range(3)
    ]
    for a, b in zip(exported.predict(photos), loaded.predict(photos), strict=True):
        assert np.array_equal(a.labels, b.labels) and a.count > 0
        np.testing.assert_allclose(a.scores, b.scores, atol=ATOL)


def test_onnx_gives_the_eager_outputs(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the onnx extra (pip install recattend[onnx]) is absent")
    written = export(checkpoint, tmp_path, formats=["onnx"])
    info = exported_metadata(written["onnx"])
    assert info["outputs"] == ["masks", "scores"] and info["steps"] == 4
    pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
    onnx_run = Segmenter.load(written["onnx"], device="cpu")
    eager = Segmenter.load(checkpoint, device="cpu", cpu_fast_path=False).module
    x = _images(3)
    with torch.no_grad():
        expected, got = eager(x), onnx_run.module(x)
    torch.testing.assert_close(got["masks"], expected["masks"], atol=ATOL, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=ATOL, rtol=0)


def test_the_graph_runs_every_step_and_names_its_outputs() -> None:
    torch.manual_seed(0)
    module = tiny_segmenter(preprocessor={**SMALL_FCN, "num_classes": 2})
    graph = InferenceGraph(module.net)
    assert graph.outputs == ["masks", "scores", "foreground", "semantic"]
    with torch.no_grad():
        masks, scores, foreground, semantic = graph(_images(2))
    assert masks.shape == (2, 4, 32, 32) and scores.shape == (2, 4)
    assert foreground.shape == (2, 32, 32) and semantic.shape == (2, 3, 32, 32)


def test_the_command_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    main([str(checkpoint), "--out", str(tmp_path), "--formats", "torchscript"])
    out = capsys.readouterr().out
    assert out.startswith("torchscript: ") and out.strip().endswith(".torchscript.pt")
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)])


def test_predict_runs_an_exported_file(checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    from recattend.tasks import predict
    from tests.tasks.test_predict import _compose

    path = export(checkpoint, tmp_path / "exported", formats=["torchscript"])["torchscript"]
    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (40, 36, 3), np.uint8)
    Image.fromarray(photo).save(folder / "a.png")
    counts = predict.run(
        _compose(f"ckpt_path='{path}'", f"input={folder}", f"output={tmp_path / 'out'}",
                 "device=cpu", "progress=false")
    )  # fmt: skip
    expected = Segmenter.load(checkpoint, device="cpu")(photo)
    assert counts == {"a.png": expected.count}
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png_labels.png"))
    assert np.array_equal(labels, expected.labels)
