"""Shipped weights: exported from a run, found by name, checksum-checked, evaluated on the data
they record, demonstrated; and the shipped `leaves` file reaches its card."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recattend import pretrained
from recattend.lit import SegmenterModule, load_module
from recattend.tasks import demo, train
from recattend.tasks import eval as eval_task
from recattend.tasks.ship_weights import main as export
from recattend.tasks.ship_weights import validation_statistics
from recattend.utils.checkpoint import load_weights, read_checkpoint
from tests.helpers import ROOT, TINY

DATA = [o for o in TINY if o.startswith("dataset.")]


@pytest.fixture
def weights(compose_train, tmp_path: Path) -> Path:
    """A tiny run's last checkpoint exported as a weights file (tmp_path/weights.pt)."""
    cfg = compose_train(*TINY, "test=false", "logger=none")
    train.run(cfg)
    hydra_dir = tmp_path / ".hydra"  # what Hydra writes beside a real run
    hydra_dir.mkdir()
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, hydra_dir / "config.yaml")
    OmegaConf.save(list(TINY), hydra_dir / "overrides.yaml")
    export([str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "weights.pt")])
    return tmp_path / "weights.pt"


def test_export_keeps_weights_settings_data_and_card_only(weights: Path, tmp_path: Path) -> None:
    saved = torch.load(weights, weights_only=True)
    assert set(saved) == {"state_dict", "hyper_parameters", "dataset", "card", "output_statistics"}
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["state_dict"].keys() == last["state_dict"].keys()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert saved["dataset"]["resolution"] == [32, 32] and saved["dataset"]["max_objects"] == 3
    assert "evaluator" in saved["dataset"]  # eval.py builds the test split's evaluator from it
    assert saved["card"]["command"] == "python train.py " + " ".join(TINY)
    assert saved["card"]["global_step"] == last["global_step"] == 2  # 8 images, batch 4, 1 epoch
    # The validation's output statistics, kept; for a checkpoint without them (written before
    # validation recorded them), computed again on the validation split with the same weights.
    assert saved["output_statistics"] == last["output_statistics"]
    del last["output_statistics"]
    again = validation_statistics(last, saved["dataset"])
    assert again == pytest.approx(saved["output_statistics"], rel=1e-5, nan_ok=True)


def test_eval_scores_weights_on_the_data_they_record(compose_train, weights: Path) -> None:
    # No dataset on the command line: the recorded 32x32 data, exactly as if given by hand.
    recorded = eval_task.run(compose_train(f"ckpt_path={weights}", config_name="eval"))
    by_hand = eval_task.run(compose_train(*DATA, f"ckpt_path={weights}", config_name="eval"))
    assert recorded == by_hand and "test/sbd" in recorded
    # A dataset chosen on the command line wins: here one of another T, which the network
    # does not fit.
    other = compose_train("dataset.max_instances=5", f"ckpt_path={weights}", config_name="eval")
    with pytest.raises(ValueError, match=r"dataset\.max_instances=5 \(checkpoint: 3\)"):
        eval_task.run(other)


def test_eval_runs_weights_at_the_datasets_resolution(
    compose_train, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Trained at 32x32 (one attention cell at the box CNN's stride 32), scored at 64x64: the
    # network is built for 64x64 and its attention layer resampled to 2x2 cells, each the one
    # cell's logit (bilinear resampling itself: tests/models, fit_state).
    with caplog.at_level("WARNING"):
        cfg = compose_train(
            *DATA, "dataset.resolution=[64,64]", f"ckpt_path={weights}", config_name="eval"
        )
        metrics = eval_task.run(cfg)
    assert "test/sbd" in metrics
    assert "trained at 32x32 and runs at dataset.resolution=[64, 64]" in caplog.text
    assert "objects appear 2.00x (height) by 2.00x (width)" in caplog.text
    saved = torch.load(weights, weights_only=True)
    module = load_module(SegmenterModule, weights, resolution=[64, 64])
    assert list(module.net.image_size) == [64, 64]
    for suffix in ("weight", "bias"):
        name = f"net.segmenter.box_net.glimpse_mlp.2.{suffix}"
        one = saved["state_dict"][name]
        assert one.shape[0] == 1
        assert torch.allclose(module.state_dict()[name], one.expand(4, *one.shape[1:]))
    # The weights' own resolution loads them unchanged.
    same = load_module(SegmenterModule, weights, resolution=[32, 32]).state_dict()[name]
    assert torch.equal(same, saved["state_dict"][name])


def test_demo_renders_predicts_and_draws(compose_train, weights: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        "weights=null", f"ckpt_path={weights}", "demo.num_images=3", "demo.size=[48,40]",
        config_name="demo",
    )  # fmt: skip
    figure = demo.run(cfg)
    images = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert images == ["demo_0.png", "demo_1.png", "demo_2.png"]
    counts = list(csv.DictReader((tmp_path / "predictions" / "counts.csv").open()))
    assert [row["image"] for row in counts] == images
    assert all((tmp_path / "predictions" / f"{name}_overlay.png").is_file() for name in images)
    assert figure == tmp_path / "figure1.png" and figure.stat().st_size > 0


def _registered(monkeypatch: pytest.MonkeyPatch, folder: Path, file: Path, digest: str) -> None:
    entry = pretrained.Pretrained("leaves", file.name, digest, "test", 0.5, 1.0)
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    monkeypatch.setattr(pretrained, "REGISTRY", {"leaves": entry})


def test_a_name_loads_the_registered_file_only_with_its_checksum(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    _registered(monkeypatch, tmp_path, weights, digest)
    assert pretrained.checkpoint_file("leaves", "weights") == weights
    saved = read_checkpoint("leaves", "weights")
    assert saved["card"]["global_step"] == 2
    module = SegmenterModule(**saved["hyper_parameters"])
    assert load_weights(module, "leaves") == []  # init_from=leaves: every entry loaded
    # A path is a path, even one named like shipped weights.
    with pytest.raises(FileNotFoundError, match=r"init_from=\./leaves: no such checkpoint file"):
        pretrained.checkpoint_file("./leaves", "init_from")
    # One byte changed: refused, with the fix.
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"weights=leaves: .* does not match its checksum .*git"):
        read_checkpoint("leaves", "weights")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"weights=leaves: the shipped weights file"):
        read_checkpoint("leaves", "weights")


def test_tasks_take_exactly_one_of_ckpt_path_and_weights() -> None:
    assert pretrained.chosen(None, "leaves") == ("weights", "leaves")
    assert pretrained.chosen("a.ckpt", None) == ("ckpt_path", "a.ckpt")
    with pytest.raises(ValueError, match="give one of them, not both"):
        pretrained.chosen("a.ckpt", "leaves")
    with pytest.raises(ValueError, match=r"no model given: pass ckpt_path=.* weights=<leaves>"):
        pretrained.chosen(None, None)
    with pytest.raises(FileNotFoundError, match=r"by name: leaves\)"):
        pretrained.checkpoint_file("leafs", "weights")


@pytest.mark.timeout(900)  # 256 images at 224x224, T = 21: minutes on a slow CPU
def test_shipped_leaves_weights_reach_their_card(compose_train) -> None:
    card = pretrained.REGISTRY["leaves"]
    assert pretrained.sha256(card.path) == card.sha256
    saved = torch.load(card.path, weights_only=True)
    assert "optimizer_states" not in saved and card.path.stat().st_size < 4 * 2**20
    assert SegmenterModule(**saved["hyper_parameters"]).net.steps == 21  # T = 21, as CVPPP A1
    metrics = eval_task.run(compose_train("weights=leaves", config_name="eval"))
    # The card's figures come from this very evaluation; the margin covers other CPUs' and
    # libraries' floating-point differences on 256 images.
    assert metrics["test/sbd"] == pytest.approx(card.test_sbd, abs=0.01)
    assert metrics["test/abs_dic"] == pytest.approx(card.test_dic_abs, abs=0.1)
    doc = (ROOT / "docs" / "pretrained.md").read_text()
    assert f"{100 * card.test_sbd:.1f}" in doc and f"{card.test_dic_abs:.2f}" in doc
