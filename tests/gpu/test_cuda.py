"""The CUDA path: a training step, bf16-mixed training with a Lightning Trainer, resuming from a
checkpoint, predict.py with ``device=auto`` and the benchmark's GPU mode, all on the first CUDA
device. Every test is skipped where ``torch.cuda.is_available()`` is False (the CPU-only machines
this project is developed on); ``tests/models/test_devices.py`` checks the device and dtype
handling without a GPU."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from recattend.lit import SegmenterModule
from recattend.models.segmenter import RecurrentSegmenter
from recattend.ops import kernels, step_backward
from tests.helpers import SMALL_FCN, TINY, tiny_batch, tiny_data, tiny_segmenter

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)

DEVICE = "cuda"
ACCELERATOR = "gpu"  # the trainer config group: conf/trainer/gpu.yaml
# The tiny synthetic run of the CPU tests (32x32, 8 training images: 2 steps per epoch), on the GPU.
TINY_GPU = [o for o in TINY if not o.startswith("trainer.accelerator=")]


@pytest.fixture(autouse=True)
def restored_fast_path(monkeypatch):
    """The tasks switch the CPU fast path off for a GPU run: restored afterwards."""
    monkeypatch.setattr(kernels, "ENABLED", kernels.ENABLED)
    monkeypatch.setattr(step_backward, "ENABLED", step_backward.ENABLED)


@pytest.fixture
def exact_float32():
    """No TF32 in matrix products and convolutions, so CUDA and CPU results agree to ~1e-5."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _to(batch: dict, device: str | torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _no_cpu_kernels(monkeypatch) -> None:
    """The compiled CPU kernels must never run on CUDA tensors."""

    def refuse(*args):
        raise AssertionError("a CPU kernel ran in a CUDA run")

    monkeypatch.setattr(kernels._BatchNormReLU, "apply", refuse)
    monkeypatch.setattr(kernels._Conv3x3, "apply", refuse)


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------ one training step
def test_a_training_step_on_cuda(monkeypatch, exact_float32) -> None:
    # Both bootstrap stages with teacher forcing of boxes and masks, the losses (the Hungarian
    # matching goes to the CPU and back by design), backward, the fused Adam step, inference and
    # post-processing: every tensor on the GPU, and inference as on the CPU.
    torch.manual_seed(0)
    module = tiny_segmenter(preprocessor=SMALL_FCN)
    batch = tiny_batch(3)
    monkeypatch.setattr(kernels, "ENABLED", False)  # the CPU reference: PyTorch's kernels
    with torch.no_grad():
        expected = module.eval()(batch["image"])
    weights = copy.deepcopy(module.state_dict())
    # The fast path switched on, as a CPU run leaves it: nothing of it may apply to CUDA tensors.
    monkeypatch.setattr(kernels, "ENABLED", True)
    _no_cpu_kernels(monkeypatch)
    module.train().to(DEVICE)
    module.log = module.log_dict = lambda *a, **k: None
    steps = module.net.steps
    module.teacher_forcing.probabilities = {
        kind: torch.full((steps,), 0.5, device=DEVICE) for kind in ("box", "mask")
    }
    batch = _to(batch, DEVICE)
    optimizer = module.configure_optimizers()["optimizer"]
    for stage in ("box", "full"):
        module.stage = stage
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        assert loss.device.type == DEVICE and loss.isfinite(), stage
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(g.device.type == DEVICE and g.isfinite().all() for g in grads)
        optimizer.step()
    assert all(p.isfinite().all() for p in module.parameters())
    # Inference with the weights from before the steps: as on the CPU.
    module.load_state_dict(weights)
    module.eval()
    with torch.no_grad():
        out = module(batch["image"])
    for key, value in out.items():
        assert value.device.type == DEVICE, key
        torch.testing.assert_close(value.cpu(), expected[key], atol=1e-3, rtol=1e-3)
    instances = module.postprocess(out, size=(40, 48))
    assert instances[0].labels.device.type == DEVICE and instances[0].labels.shape == (40, 48)


# --------------------------------------------------------------------------------- with a Trainer
def test_bf16_mixed_training_on_cuda(compose_train, tmp_path: Path) -> None:
    # python train.py trainer=gpu trainer.precision=bf16-mixed: two epochs (4 steps) with
    # validation, the losses in float32, the Evaluate callback's metrics on the GPU's outputs.
    from recattend.tasks import train

    if DEVICE == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    cfg = compose_train(
        *TINY_GPU, f"trainer={ACCELERATOR}", "trainer.precision=bf16-mixed",
        "trainer.max_epochs=2", "logger=none", "test=false",
    )  # fmt: skip
    train.run(cfg)
    if ACCELERATOR != "cpu":
        assert not kernels.ENABLED  # a GPU run switches the CPU fast path off
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and "val/sbd" in metrics
    state = _last(tmp_path)
    assert state["global_step"] == 4
    assert all(v.isfinite().all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("first", [ACCELERATOR, "cpu"], ids=["written_on_gpu", "written_on_cpu"])
def test_resume_from_a_checkpoint_on_cuda(compose_train, tmp_path: Path, first: str) -> None:
    # One epoch (2 steps), then `ckpt_path=<run>/checkpoints/last.ckpt` on the GPU to two epochs:
    # weights, optimizer state, step and schedule continue there, and the test split runs.
    from recattend.tasks import train

    train.run(compose_train(*TINY_GPU, f"trainer={first}", "logger=none", "test=false"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert _last(tmp_path)["global_step"] == 2
    resumed = compose_train(
        *TINY_GPU, f"trainer={ACCELERATOR}", "trainer.max_epochs=2", f"ckpt_path='{last}'",
        "logger=none", "test=true",
    )  # fmt: skip
    train.run(resumed)
    state = _last(tmp_path)
    assert state["global_step"] == 4
    adam = state["optimizer_states"][0]["state"]
    assert adam and all(float(s["step"]) == 4 for s in adam.values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test/sbd"] <= 1.0
    module = SegmenterModule.load_from_checkpoint(last, map_location=DEVICE)
    assert module.device.type == DEVICE
    with torch.no_grad():
        out = module.eval()(tiny_batch(2)["image"].to(DEVICE))
    assert out["masks"].device.type == DEVICE and out["masks"].isfinite().all()


# ------------------------------------------------------------------------------------ predict.py
def _compose_predict(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from tests.helpers import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("predict", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_predict_with_device_auto_uses_cuda(tmp_path: Path, monkeypatch) -> None:
    # A checkpoint trained on the CPU; predict.py's default device=auto picks the GPU.
    from recattend.tasks import predict

    trainer = L.Trainer(
        default_root_dir=tmp_path / "run", max_steps=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(tiny_segmenter(postprocess={"threshold": 0.0}), datamodule=tiny_data())
    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 50)), ("b.png", (48, 30))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    devices = []
    original = RecurrentSegmenter.predict

    def spy(self, x, *args, **kwargs):
        devices.append(x.device.type)
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(RecurrentSegmenter, "predict", spy)
    out = tmp_path / "out"
    cfg = _compose_predict(
        f"ckpt_path='{ckpt}'", f"input={images}", f"output={out}", "device=auto",
        "progress=false",
    )  # fmt: skip
    assert cfg.device == "auto"
    counts = predict.run(cfg)
    assert set(counts) == {"a.png", "b.png"}
    assert devices == [DEVICE, DEVICE]
    if DEVICE != "cpu":
        assert not kernels.ENABLED  # the fast path is off for a GPU run
    for name, size in (("a", (40, 50)), ("b", (48, 30))):
        labels = np.asarray(Image.open(out / f"{name}.png_labels.png"))
        assert labels.shape == size and labels.max() == counts[f"{name}.png"] >= 1


# -------------------------------------------------------------------------------------- the bench
def test_the_benchmark_measures_the_gpu(monkeypatch) -> None:
    # make bench-gpu's measurement (recattend.tasks.bench.measure) at a small size.
    from recattend.tasks import bench

    monkeypatch.setitem(
        bench.CONFIGS, "small", {"resolution": [64, 64], "max_instances": 2, "batch_size": 2}
    )
    monkeypatch.setattr(bench, "TRAIN_WARMUP", 1)
    for bf16 in (False, True):
        if bf16 and not torch.cuda.is_bf16_supported():
            continue
        figures = bench.measure("small", 2, bf16=bf16, device=DEVICE)
        assert figures["train_images_per_s"] > 0 and figures["infer_images_per_s"] > 0
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        assert 0 < figures["peak_train_memory_gib"] < total  # GPU memory, not the process's
        assert figures["gpu"] == torch.cuda.get_device_name()
        assert 0 < figures["matching_loss_share"] < 1
    assert not kernels.ENABLED  # measured without the CPU fast path
