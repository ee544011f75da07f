"""SegmenterModule's training step: exactly the gradient of the joint loss over all steps in
every memory mode, with and without the parallel backward; learning; the non-finite guard."""

from __future__ import annotations

import pytest
import torch

from recattend import ops
from recattend.lit import SegmenterModule
from recattend.lit import segmenter as segmenter_module
from recattend.losses import segmenter_losses
from recattend.ops import step_backward
from tests.helpers import SMALL_FCN, tiny_batch, tiny_segmenter


def _full_graph_loss(module: SegmenterModule, batch: dict) -> torch.Tensor:
    """The joint loss with every step's graph kept alive (no checkpointing, no teacher forcing)."""
    model = module.net.segmenter
    x, canvas, outs = batch["image"], torch.zeros(len(batch["image"]), 1, 32, 32), []
    for t in range(model.steps):
        out = model.step(x, canvas, t)
        outs.append(out)
        canvas = torch.maximum(canvas, out.mask.detach()[:, None])
    return segmenter_losses(
        torch.stack([o.mask for o in outs], 1),
        torch.stack([o.score for o in outs], 1),
        torch.stack([o.soft_box for o in outs], 1),
        batch["masks"],
        batch["boxes"],
        batch["num_instances"],
        min_pad=module.box_min_pad,
    )["loss"]


@pytest.mark.parametrize("parallel_backward", [False, True], ids=["one-backward", "parallel"])
@pytest.mark.parametrize(
    "recompute", [True, "full_resolution", False], ids=["steps", "full-res", "all-graphs"]
)
def test_training_step_gives_the_full_graph_gradient_and_one_bn_update(
    monkeypatch, two_threads, recompute: bool | str, parallel_backward: bool
) -> None:
    torch.manual_seed(0)
    batch = tiny_batch()
    monkeypatch.setattr(step_backward, "ENABLED", parallel_backward)
    module = tiny_segmenter(recompute=recompute)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    module.train()
    assert ops.backward_workers(module.net.segmenter, 4, False) == (2 if parallel_backward else 1)
    state = {k: v.clone() for k, v in module.net.segmenter.state_dict().items()}

    expected_loss = _full_graph_loss(module, batch)
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in module.net.segmenter.named_parameters()}
    expected_stats = {
        k: v.clone() for k, v in module.net.segmenter.state_dict().items() if "running" in k
    }

    module.net.segmenter.load_state_dict(state)
    module.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    for name, param in module.net.segmenter.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # The parallel backward sums in another order (and its threads' kernels too); atol: a
        # conv bias feeding BatchNorm has a true gradient of 0, so its grad is rounding.
        atol = 1e-5 if parallel_backward else 1e-6
        assert torch.allclose(param.grad, expected[name], rtol=1e-4, atol=atol), name
    # Running statistics moved once per step (not again during a recomputation).
    for key, value in expected_stats.items():
        assert torch.allclose(module.net.segmenter.state_dict()[key], value, atol=1e-6), key


@pytest.mark.parametrize(
    ("recompute", "kept"), [(False, True), ("full_resolution", False), (True, False)]
)
def test_what_the_forward_pass_keeps_for_backward(recompute: bool | str, kept: bool) -> None:
    # The box CNN's first layer (8 channels here, unlike any other full-resolution tensor) is the
    # only layer at the input resolution: only without recomputation are its activations saved.
    module = tiny_segmenter(segmenter={"box_channels": [8, 4, 8]}, recompute=recompute)
    module.log = module.log_dict = lambda *a, **k: None
    assert module.net.segmenter.box_net.cnn.full_resolution_layers == 1
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module.train().training_step(tiny_batch(), 0)
    assert ((3, 8, 32, 32) in saved) is kept


def test_full_resolution_layers_and_bad_recompute() -> None:
    from recattend.models.timestep import TimestepConvStack

    for pools, layers in [([1, 2, 1, 2], 2), ([2, 2], 1), ([1, 1], 2)]:
        assert TimestepConvStack(4, [8] * len(pools), pools, 1).full_resolution_layers == layers
    with pytest.raises(ValueError, match="recompute='some'.*full_resolution"):
        tiny_segmenter(recompute="some")


@pytest.mark.parametrize(
    "variant", ["box-stage", "no-box-net", "finetuned-preprocessor", "coordinate-box-iou"]
)
def test_parallel_backward_matches_one_backward(monkeypatch, two_threads, variant: str) -> None:
    # The other ways a rollout runs: the bootstrap box stage (no masks), the no-box-network
    # ablation (no soft boxes), a fine-tuned pre-processor upstream of all steps (its gradient is
    # the sum over steps, backpropagated once), and the coordinate box IoU (the box loss reads the
    # steps' box edges too).
    net, extra = {}, {}
    if variant == "no-box-net":
        net["box_network"] = False
    if variant == "finetuned-preprocessor":
        extra["preprocessor"], extra["network"] = SMALL_FCN, {"finetune": True}
    if variant == "coordinate-box-iou":
        extra["box_iou"] = "coordinates"
    batch, results = tiny_batch(), []
    for parallel in (False, True):
        torch.manual_seed(0)
        monkeypatch.setattr(step_backward, "ENABLED", parallel)
        module = tiny_segmenter(segmenter=net, **extra)
        monkeypatch.setattr(module, "log", lambda *a, **k: None)
        monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
        module.stage = "box" if variant == "box-stage" else "full"
        module.train().training_step(batch, 0).backward()
        assert ops.backward_workers(module.net.segmenter, 4, False) == (2 if parallel else 1)
        results.append({n: p.grad for n, p in module.named_parameters()})
    one, parallel = results
    if variant == "finetuned-preprocessor":
        fcn = [g for n, g in one.items() if n.startswith("net.preprocessor.") and g is not None]
        assert fcn and any(g.abs().sum() > 0 for g in fcn)  # it is trained
    for name, grad in one.items():
        if grad is None:  # e.g. the segmentation network in the box stage
            assert parallel[name] is None, name
        else:
            torch.testing.assert_close(parallel[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16], ids=["32", "bf16-mixed"])
def test_two_images_overfit(monkeypatch, precision: torch.dtype) -> None:
    # Two images, 150 Adam steps with teacher forcing off: the joint loss must fall by at least
    # 0.6 (from about +0.7: random scores and near-zero IoUs, towards -2: perfect IoU and scores).
    # bf16-mixed (trainer.precision=bf16-mixed: CPU autocast) must learn as well.
    torch.manual_seed(0)
    batch = tiny_batch(2)
    module = tiny_segmenter()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3, eps=1e-7)
    module.train()
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            loss = module.training_step(batch, 0)
        assert loss.dtype == torch.float32  # the losses stay float32 under autocast
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.6, (losses[:10], losses[-10:])


def test_non_finite_loss_stops_with_the_step_and_term(monkeypatch, tmp_path) -> None:
    # A finite rollout whose loss term is NaN: the guard (recattend/lit/nonfinite.py, tested in
    # tests/lit/test_nonfinite.py) names the step and the term and saves the state before the step.
    module = tiny_segmenter()
    module.train()
    saved = []

    class FakeTrainer:
        default_root_dir = str(tmp_path)
        global_step, global_rank = 7, 0
        checkpoint_callback, optimizers = None, []

        def save_checkpoint(self, path: str) -> None:
            saved.append(path)

    monkeypatch.setattr(module, "_trainer", FakeTrainer())
    losses = segmenter_module.segmenter_losses
    monkeypatch.setattr(
        segmenter_module,
        "segmenter_losses",
        lambda *a, **k: {**losses(*a, **k), "loss_box": torch.tensor(float("nan"))},
    )
    with pytest.raises(
        FloatingPointError, match=r"^non-finite loss \(loss_box\) at training step 7\. The batch"
    ):
        module.training_step(tiny_batch(), 0)
    assert saved == [tmp_path / "checkpoints" / "nonfinite-step7.ckpt"]


def test_the_box_iou_and_the_jitter_reach_the_losses_and_teacher_forcing(monkeypatch) -> None:
    module = tiny_segmenter(box_iou="coordinates", fed_box_jitter="tight")
    forcing = module.teacher_forcing
    assert (forcing.box_iou, forcing.jitter) == ("coordinates", "tight")
    module.log = module.log_dict = lambda *a, **k: None
    seen, losses = {}, segmenter_module.segmenter_losses

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return losses(*args, **kwargs)

    monkeypatch.setattr(segmenter_module, "segmenter_losses", spy)
    module.train().training_step(tiny_batch(), 0)
    # The steps' predicted boxes as (B, T, 4) pixel edges, for the coordinate IoU.
    assert seen["box_iou"] == "coordinates" and seen["box_edges"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"module.box_iou='iou': use one of \['soft'"):
        tiny_segmenter(box_iou="iou")
    with pytest.raises(ValueError, match=r"module.fed_box_jitter='loose': use one of"):
        tiny_segmenter(fed_box_jitter="loose")


def test_loggers_record_the_networks_settings_too() -> None:
    # Loggers read hparams_initial: the network's settings must be in it, as in checkpoints.
    module = tiny_segmenter(max_instances=2, postprocess={"threshold": 0.4})
    assert module.hparams_initial["net"] == module.hparams["net"] == module.net.settings
    assert module.hparams_initial["net"]["max_instances"] == 2
    assert module.hparams_initial["postprocess"]["threshold"] == 0.4
