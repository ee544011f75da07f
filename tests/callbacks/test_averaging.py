"""The moving average of the weights: what it averages, from when, and where it goes."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from recattend.callbacks import BootstrapStages, EMAWeights
from recattend.lit import SegmenterModule, load_module
from tests.helpers import quiet_trainer, tiny_data, tiny_segmenter


class Record(L.Callback):
    """The live weights of one layer after every optimiser step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(layer(pl_module).detach().clone())


def layer(module: SegmenterModule) -> torch.Tensor:
    return module.net.segmenter.score_head.weight


def test_average_from_the_full_stage_goes_to_validation_checkpoints_and_the_end(tmp_path) -> None:
    torch.manual_seed(0)
    module = tiny_segmenter(lr=1e-2)
    record = Record()
    ema = EMAWeights(decay=0.5)
    stages = BootstrapStages([{"name": "box", "steps": 2}, {"name": "full", "steps": None}])
    trainer = quiet_trainer(tmp_path, 5, [stages, record, ema])
    trainer.fit(module, datamodule=tiny_data())
    assert ema.first_step == 2  # the full stage's first step
    w = record.weights  # after optimiser steps 0..4
    # Step 2 copies, then w_ema <- 0.5 w_ema + 0.5 w: 0.25 w2 + 0.25 w3 + 0.5 w4.
    expected = 0.25 * w[2] + 0.25 * w[3] + 0.5 * w[4]
    assert not torch.allclose(expected, w[4])
    assert torch.allclose(layer(module), expected, atol=1e-6)  # swapped in at the end
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    saved = torch.load(tmp_path / "end.ckpt", weights_only=True)
    key = "net.segmenter.score_head.weight"
    assert torch.allclose(saved["state_dict"][key], expected, atol=1e-6)
    assert key in saved["current_model_state"]
    loaded = load_module(SegmenterModule, tmp_path / "end.ckpt", {}, "cpu")
    assert torch.allclose(layer(loaded), expected, atol=1e-6)  # eval and predict read the average


def test_before_the_average_starts_everything_sees_the_live_weights(tmp_path) -> None:
    torch.manual_seed(0)
    module = tiny_segmenter(lr=1e-2)
    ema = EMAWeights(decay=0.5, start_step=10)
    trainer = quiet_trainer(tmp_path, 2, [ema], limit_val_batches=1, val_check_interval=1)
    trainer.fit(module, datamodule=tiny_data())
    assert not ema.averaging
    live = layer(module).detach().clone()
    trainer.save_checkpoint(tmp_path / "early.ckpt")
    saved = torch.load(tmp_path / "early.ckpt", weights_only=True)
    assert "current_model_state" not in saved  # the plain checkpoint of the live weights
    assert torch.equal(saved["state_dict"]["net.segmenter.score_head.weight"], live)
    initial = ema._average_model.module.net.segmenter.score_head.weight
    assert not torch.equal(initial, live)  # what an early swap would have shown


def test_a_run_without_stages_averages_from_the_first_step(tmp_path) -> None:
    ema = EMAWeights(decay=0.9)
    trainer = quiet_trainer(tmp_path, 1, [ema])
    trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    assert ema.first_step == 0 and ema.state_dict()["latest_update_step"] == 1


@pytest.mark.parametrize(
    ("decay", "start", "match"), [(1.0, None, "decay=1.0"), (0.9, -1, "start_step=-1")]
)
def test_bad_settings_name_the_key(decay, start, match) -> None:
    with pytest.raises(ValueError, match=match):
        EMAWeights(decay=decay, start_step=start)
