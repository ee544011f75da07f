"""The pre-processor's maps as the segmenter's input (paper section 2; no_angle, no_pre_proc)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from recattend.lit import PreprocessorModule, SegmenterModule, load_preprocessor
from recattend.utils.checkpoint import load_weights
from tests.helpers import SMALL_FCN, tiny_batch, tiny_data, tiny_network, tiny_segmenter


def _preprocessor_ckpt(tmp_path: Path, angles: bool = True) -> Path:
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    module = PreprocessorModule(image_size=[32, 32], net={**SMALL_FCN, "angles": angles})
    trainer.fit(module, datamodule=tiny_data())
    return next((tmp_path / "checkpoints").glob("*.ckpt"))


def _segmenter(ckpt: Path | None = None, **network) -> SegmenterModule:
    """The tiny segmenter reading the pre-processor of ``ckpt`` (None: raw pixels)."""
    return tiny_segmenter(preprocessor=load_preprocessor(ckpt), network=network)


def _first_conv_inputs(module: SegmenterModule) -> int:
    return module.net.segmenter.box_net.cnn.convs[0].in_channels  # x plus the canvas


def test_checkpoint_adds_nine_channels_or_one_without_angles(tmp_path: Path) -> None:
    ckpt = _preprocessor_ckpt(tmp_path)
    assert _first_conv_inputs(_segmenter()) == 3 + 1
    full = _segmenter(ckpt)
    assert _first_conv_inputs(full) == 3 + 9 + 1
    # no_angle reads an FCN trained without angles, never an angle-trained one cut down.
    with pytest.raises(ValueError, match="needs a pre-processor trained without angles"):
        _segmenter(ckpt, angles=False)
    x = full.net.inputs(tiny_batch(2)["image"])
    assert x.shape == (2, 12, 32, 32)
    # Foreground probability, then 8 angle probabilities summing to one.
    assert ((x[:, 3] >= 0) & (x[:, 3] <= 1)).all()
    torch.testing.assert_close(x[:, 4:].sum(1), torch.ones(2, 32, 32))
    # The same weights as the checkpoint's.
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in full.net.preprocessor.state_dict().items():
        assert torch.equal(saved[f"net.{name}"], value), name


def test_frozen_by_default_fine_tunable_by_flag(monkeypatch, tmp_path: Path) -> None:
    ckpt = _preprocessor_ckpt(tmp_path)
    batch = tiny_batch(2)
    for finetune in (False, True):
        module = _segmenter(ckpt, finetune=finetune)
        monkeypatch.setattr(module, "log", lambda *a, **k: None)
        monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
        module.train()
        assert module.net.preprocessor.training is finetune  # frozen: evaluation mode
        module.training_step(batch, 0).backward()
        grads = [p.grad for p in module.net.preprocessor.parameters()]
        if finetune:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
            assert not any(p.requires_grad for p in module.net.preprocessor.parameters())


def test_segmenter_checkpoint_rebuilds_without_the_preprocessor_file(tmp_path: Path) -> None:
    ckpt = _preprocessor_ckpt(tmp_path / "pre")
    trainer = L.Trainer(
        default_root_dir=tmp_path / "seg", max_steps=1, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    module = _segmenter(ckpt)
    trainer.fit(module, datamodule=tiny_data())
    ckpt.unlink()  # e.g. evaluated on another machine
    saved = next((tmp_path / "seg" / "checkpoints").glob("*.ckpt"))
    loaded = SegmenterModule.load_from_checkpoint(saved, weights_only=True)
    image = tiny_batch(1)["image"]
    module.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.net.inputs(image), module.net.inputs(image))


def test_missing_or_mismatched_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.preprocessor.ckpt_path=.*nope.ckpt"):
        _segmenter(tmp_path / "nope.ckpt")
    no_angles = _preprocessor_ckpt(tmp_path / "fg", angles=False)
    with pytest.raises(ValueError, match="has no angle head.*expects its 9 channels.*no_angle"):
        _segmenter(no_angles)
    assert _first_conv_inputs(_segmenter(no_angles, angles=False)) == 3 + 1 + 1
    segmenter_run = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": {}}, segmenter_run)
    with pytest.raises(ValueError, match="is not a pre-processor checkpoint"):
        _segmenter(segmenter_run)


def test_the_settings_rebuild_the_network_with_its_preprocessor() -> None:
    # The pre-processor's architecture is stored in the segmenter's settings: from them the
    # same network (the same entries, the same channels) is built, no file read.
    from recattend.models import Preprocessor, SegmenterNetwork

    net = tiny_network(preprocessor=Preprocessor(), finetune=True)
    assert net.settings["preprocessor"] == Preprocessor().settings
    rebuilt = SegmenterNetwork.from_settings(net.settings)
    assert isinstance(rebuilt.preprocessor, Preprocessor) and rebuilt.finetune
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    assert rebuilt.settings == net.settings
    # Raw pixels are stored as no pre-processor.
    assert SegmenterNetwork.from_settings(tiny_network().settings).preprocessor is None


def test_weights_from_another_resolution_fit_with_the_attention_resampled(tmp_path: Path) -> None:
    # 16x16 images give the box CNN (stride 8) a 2x2 grid; 32x32 a 4x4 one.
    small = tiny_segmenter(image_size=(16, 16))
    with torch.no_grad():
        logits = small.net.segmenter.box_net.glimpse_mlp[2]
        logits.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # cells row by row
        logits.weight.copy_(torch.arange(4.0)[:, None].expand(4, 16))
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, path)

    large = tiny_segmenter(image_size=(32, 32))
    with pytest.raises(
        ValueError, match=r"glimpse_mlp\.2\.bias \(checkpoint \(4,\), model \(16,\)"
    ):
        load_weights(large, path)
    fit = lambda state, saved: large.net.fit_state(state, saved["net"]["image_size"], "net.")  # noqa: E731
    assert load_weights(large, path, fit=fit) == []
    # Bilinear 2 -> 4 (half-pixel centres): along a line of [a, b] the four samples are
    # a, a + (b - a) / 4, a + 3 (b - a) / 4, b; rows [0, 1] over columns, [0, 2] down.
    row = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = (row[None, :] + 2 * row[:, None]).flatten()
    got = large.net.segmenter.box_net.glimpse_mlp[2]
    assert torch.allclose(got.bias, expected)
    assert torch.allclose(got.weight, expected[:, None].expand(16, 16))
    # Everything else is copied as it is.
    for name, value in small.state_dict().items():
        if "glimpse_mlp.2" not in name:
            assert torch.equal(large.state_dict()[name], value), name
