"""Every tensor the networks, losses, post-processing and metrics create takes its device and dtype
from their inputs, so the same code runs on a GPU and in any precision.

No GPU is needed. Two ways make a tensor created on the wrong device fail loudly:

* **meta**: the model and its inputs on the ``meta`` device (shapes, no values); a tensor
  created on the default device (the CPU) then meets a meta tensor and raises a device mismatch.
  Code that reads values (the early stop of ``predict``, the teacher forcing's switches, the
  Hungarian matching, which runs in SciPy on the CPU by design, the post-processing and metrics)
  cannot run on meta, so:
* **default device meta**: the model and inputs on the CPU while the *default* device is
  ``meta`` (``with torch.device("meta")``): a tensor created without an explicit device lands on
  meta and raises the same mismatch at its first use with the real tensors.

And a whole training step (loss and backward), inference, post-processing and the metrics in
float64 catch hard-coded float32 tensors. (The compiled CPU kernels take float32 CPU tensors only;
anything else runs PyTorch's kernels.)
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from recattend.losses import (
    box_stage_losses,
    coordinate_iou,
    matched_iou_loss,
    monotonic_score_loss,
    padded_box_edges,
    padded_box_masks,
    score_target,
    segmenter_losses,
    soft_iou,
    supervised_counts,
)
from recattend.metrics import CityscapesAP, instance_metrics
from recattend.models import SegmenterNetwork
from recattend.models.preprocessor import Preprocessor, foreground_probability
from recattend.postprocess import PostProcess, image_instances, majority_class
from tests.helpers import SMALL_FCN, tiny_batch, tiny_data, tiny_network, tiny_segmenter

META = torch.device("meta")
FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def assert_on(tensors, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Every tensor in ``tensors`` (nested dicts, lists, dataclass fields) on ``device``, and the
    floating ones of ``dtype`` when given."""
    if isinstance(tensors, torch.Tensor):
        assert tensors.device.type == device.type, tensors.device
        if dtype is not None and tensors.dtype in FLOAT:
            assert tensors.dtype == dtype, tensors.dtype
    elif isinstance(tensors, dict):
        for value in tensors.values():
            assert_on(value, device, dtype)
    elif isinstance(tensors, list | tuple):
        for value in tensors:
            assert_on(value, device, dtype)
    elif hasattr(tensors, "__dataclass_fields__"):
        for name in tensors.__dataclass_fields__:
            assert_on(getattr(tensors, name), device, dtype)


def _network(**segmenter) -> SegmenterNetwork:
    """The tiny segmenter reading the image and a small FCN's 9 maps (rebuilt from its settings)."""
    torch.manual_seed(0)
    return tiny_network(segmenter=segmenter, preprocessor=SMALL_FCN)


def _as(batch: dict, dtype: torch.dtype) -> dict:
    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in batch.items()
    }


# ----------------------------------------------------------------------------------------- meta
@pytest.mark.parametrize(
    "segmenter",
    [{}, {"box_network": False}, {"fixed_gamma": False, "dynamic_var": True}],
    ids=["full", "no_box_network", "predicted_gains"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_segmenter_runs_on_meta(segmenter: dict, training: bool) -> None:
    net = _network(**segmenter).to(META).train(training)
    model = net.segmenter
    image = torch.rand(2, 3, 32, 32, device=META)
    x = model.prepare(net.inputs(image))
    canvas = x.new_zeros(2, 1, 32, 32)
    for t in range(model.steps):  # every step's own BatchNorm
        box = model.locate(x, canvas, t)
        out = model.segment(x, canvas, t, box)
        assert_on(out, META, torch.float32)
        canvas = torch.maximum(canvas, out.mask[:, None])
    # Teacher forcing's patch from another box, and the bootstrap box stage's step.
    assert_on(model.segment(x, canvas, 0, box, box), META, torch.float32)
    if model.box_net is not None:
        assert_on(model.box_only(box), META, torch.float32)
        assert_on(model.soft_box(box), META, torch.float32)


@pytest.mark.parametrize("num_classes", [0, 3], ids=["foreground", "semantic"])
def test_the_preprocessor_runs_on_meta(num_classes: int) -> None:
    torch.manual_seed(0)
    fcn = Preprocessor(**SMALL_FCN, num_classes=num_classes).to(META)
    image = torch.rand(2, 3, 32, 32, device=META)
    out = fcn(image)
    assert_on(out, META, torch.float32)
    assert_on(fcn.features(image), META, torch.float32)
    assert_on(foreground_probability(out), META, torch.float32)
    # And as the segmenter's input and the post-processing's maps in its outputs.
    net = tiny_network(preprocessor={**SMALL_FCN, "num_classes": num_classes}).to(META)
    assert net.inputs(image).shape == (2, 3 + fcn.feature_channels(), 32, 32)
    out = net.eval().predict(image, threshold=0.0)
    assert_on(out, META)
    assert out["foreground"].shape == (2, 32, 32) and out["foreground"].dtype == torch.float32
    assert ("semantic" in out) == (num_classes > 0)


def test_the_losses_run_on_meta_but_the_matching() -> None:
    # The Hungarian matching runs in SciPy on the CPU by design (no GPU assignment solver); it
    # moves its (B, T, N) result back to the IoU's device. Everything around it runs on meta.
    b, t = 2, 4
    masks = torch.rand(b, t, 32, 32, device=META)
    boxes = torch.rand(b, t, 4, device=META)
    counts = supervised_counts(torch.tensor([2, 3], device=META), boxes)
    iou = soft_iou(masks, masks)
    match = torch.zeros(b, t, t, device=META)
    padded = padded_box_masks(boxes, (32, 32), counts, min_pad=2.0)
    assert_on([counts, iou, padded, matched_iou_loss(iou, match, counts)], META, torch.float32)
    edges = padded_box_edges(boxes, counts, min_pad=2.0)
    assert_on([edges, coordinate_iou(boxes, edges)], META, torch.float32)
    scores = torch.rand(b, t, device=META)
    assert_on(monotonic_score_loss(scores, score_target(match)), META, torch.float32)


# ------------------------------------------------------------------ the default device is meta
def test_predict_creates_no_tensor_on_the_default_device() -> None:
    net = _network().eval()
    image = torch.rand(2, 3, 32, 32)
    for threshold in (0.0, 0.5, 1.01):  # all T steps, the early stop, every image stops at once
        with torch.device(META):
            out = net.predict(image, threshold=threshold)
        assert_on(out, torch.device("cpu"), torch.float32)
        assert out["masks"].shape == (2, net.steps, 32, 32)


@pytest.mark.parametrize(
    ("stage", "box_iou"), [("full", "soft"), ("box", "soft"), ("full", "coordinates")]
)
def test_a_training_step_creates_no_tensor_on_the_default_device(stage: str, box_iou: str) -> None:
    # The module's rollout with teacher forcing of boxes and masks at every step, the joint loss
    # (or the box stage's) with its matching, and the backward pass.
    torch.manual_seed(0)
    module = tiny_segmenter(preprocessor=SMALL_FCN, box_iou=box_iou)
    module.log = module.log_dict = lambda *a, **k: None
    module.stage = stage
    steps = module.net.steps
    module.teacher_forcing.probabilities = {"box": torch.ones(steps), "mask": torch.ones(steps)}
    batch = tiny_batch(3)
    with torch.device(META):
        loss = module.training_step(batch, 0)
        loss.backward()
    assert_on(loss, torch.device("cpu"), torch.float32)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cpu" and g.isfinite().all() for g in grads)


def test_the_losses_create_no_tensor_on_the_default_device() -> None:
    batch = tiny_batch(3)
    t = batch["masks"].shape[1]
    masks, scores = torch.rand(3, t, 32, 32), torch.rand(3, t)
    soft_boxes = torch.rand(3, t, 32, 32)
    with torch.device(META):
        joint = segmenter_losses(
            masks, scores, soft_boxes, batch["masks"], batch["boxes"], batch["num_instances"],
            min_pad=2.0,
        )  # fmt: skip
        box = box_stage_losses(
            soft_boxes, scores, batch["boxes"], batch["num_instances"], min_pad=2.0
        )
        no_box = segmenter_losses(
            masks, scores, None, batch["masks"], batch["boxes"], batch["num_instances"],
            min_pad=2.0,
        )  # fmt: skip
        coordinates = segmenter_losses(
            masks, scores, soft_boxes, batch["masks"], batch["boxes"], batch["num_instances"],
            min_pad=2.0, box_edges=batch["boxes"], box_iou="coordinates",
        )  # fmt: skip
    assert_on([joint, box, no_box, coordinates], torch.device("cpu"), torch.float32)


def _outputs(b: int = 2, t: int = 4, size: int = 16, dtype=torch.float32) -> dict:
    torch.manual_seed(1)
    masks = torch.zeros(b, t, size, size, dtype=dtype)
    masks[:, 0, 2:8, 2:8] = 0.9
    masks[:, 1, 9:15, 9:15] = 0.8
    masks[:, 2, 0:2, 12:14] = 0.7  # small: dropped by min_size
    return {"masks": masks, "scores": torch.tensor([0.9, 0.8, 0.7, 0.1], dtype=dtype).repeat(b, 1)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_postprocessing_creates_no_tensor_on_the_default_device(dtype) -> None:
    out = _outputs(dtype=dtype)
    every_step = PostProcess(
        threshold=0.3, stop_rule="first_below", blur=True, dilate=3, foreground=True, min_size=80
    )
    foreground = torch.ones(2, 24, 24, dtype=dtype)
    semantic = torch.randint(0, 3, (24, 24))
    pixel_area = torch.tensor([1.5, 2.0])
    # The pre-processor's maps as the network gives them, at network resolution.
    maps = {"foreground": torch.ones(2, 16, 16, dtype=dtype)}
    maps["semantic"] = torch.rand(2, 3, 16, 16, dtype=dtype).softmax(1)
    with torch.device(META):
        slots = every_step.slots(out["masks"], out["scores"], (24, 24), foreground, pixel_area)
        results = every_step({**out, **maps}, (24, 24), pixel_area)
        instances = image_instances(slots[0], out["scores"][0])
        classes = majority_class(instances.labels, semantic)
    assert_on([slots, list(instances), classes], torch.device("cpu"))
    assert_on([list(result) for result in results], torch.device("cpu"))
    assert slots.dtype == results[0].labels.dtype == torch.int64
    assert instances.scores.dtype == dtype and int(results[0].labels.max()) == 2


def test_the_metrics_create_no_tensor_on_the_default_device() -> None:
    out = _outputs()
    pred = torch.stack([result.labels for result in PostProcess()(out)])
    target = torch.zeros_like(pred)
    target[:, 2:8, 2:8], target[:, 10:15, 10:15] = 1, 2
    metrics = instance_metrics()
    ap = CityscapesAP()
    gt_ids = torch.full((16, 16), 7, dtype=torch.int64)  # road
    gt_ids[:12, :12] = 26 * 1000  # one car instance
    counts, car, score = torch.tensor([2, 3]), torch.tensor([26]), torch.tensor([0.9])
    found = gt_ids[None] == 26 * 1000
    with torch.device(META):
        for name, metric in metrics.items():
            if name == "dic":
                metric.update(pred, target, target_counts=counts)
            else:
                metric.update(pred, target)
        ap.update([found], [car], [score], [gt_ids])
        results = {name: metric.compute() for name, metric in metrics.items()}
        results["ap"] = ap.compute()
    assert_on(results, torch.device("cpu"), torch.float32)
    assert results["sbd"]["sbd"] > 0 and results["ap"]["ap"] == 1


# -------------------------------------------------------------------------------------- float64
@pytest.mark.parametrize("stage", ["full", "box"])
def test_a_training_step_in_float64(stage: str, monkeypatch) -> None:
    # model.double() and a float64 batch: every step output, every gradient and the inference
    # outputs stay float64 (a hard-coded float32 tensor would promote or fail).
    torch.manual_seed(0)
    module = tiny_segmenter(preprocessor=SMALL_FCN).double()
    module.log = module.log_dict = lambda *a, **k: None
    module.stage = stage
    steps = module.net.steps
    module.teacher_forcing.probabilities = {
        "box": torch.full((steps,), 0.5, dtype=torch.float64),
        "mask": torch.full((steps,), 0.5, dtype=torch.float64),
    }
    batch = _as(tiny_batch(3), torch.float64)
    outs = []  # every step's outputs, as the rollout gets them
    segmenter = module.net.segmenter
    for name in ("segment", "box_only"):
        original = getattr(segmenter, name)

        def spy(*args, _original=original, **kwargs):
            outs.append(_original(*args, **kwargs))
            return outs[-1]

        monkeypatch.setattr(segmenter, name, spy)
    loss = module.training_step(batch, 0)
    assert len(outs) == steps
    assert_on(outs, torch.device("cpu"), torch.float64)
    assert loss.isfinite()
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    assert grads
    for name, grad in grads.items():
        assert grad.dtype == torch.float64 and grad.isfinite().all(), name
    module.eval()
    with torch.no_grad():
        out = module(batch["image"])
    assert_on(out, torch.device("cpu"), torch.float64)
    instances = module.postprocess(out)
    assert instances[0].scores.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_inference_in_the_model_dtype(dtype: torch.dtype) -> None:
    # A whole network in one dtype (model.to(dtype)): the outputs keep it, early stop included.
    net = _network().to(dtype).eval()
    image = torch.rand(2, 3, 32, 32, dtype=dtype)
    for threshold in (0.0, 0.5):
        assert_on(net.predict(image, threshold=threshold), torch.device("cpu"), dtype)
    assert net.predict(image, threshold=0.0)["foreground"].dtype == dtype


def test_the_losses_in_float64() -> None:
    batch = _as(tiny_batch(3), torch.float64)
    t = batch["masks"].shape[1]
    masks = torch.rand(3, t, 32, 32, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(3, t, dtype=torch.float64, requires_grad=True)
    terms = segmenter_losses(
        masks, scores, masks, batch["masks"], batch["boxes"], batch["num_instances"], min_pad=2.0
    )
    assert_on(terms, torch.device("cpu"), torch.float64)
    terms["loss"].backward()
    assert masks.grad.dtype == scores.grad.dtype == torch.float64


def test_the_training_loss_keeps_float64() -> None:
    module = tiny_segmenter().double()
    module.log = module.log_dict = lambda *a, **k: None
    loss = module.training_step(_as(tiny_batch(2), torch.float64), 0)
    assert loss.dtype == torch.float64


def test_bf16_mixed_training_with_gradient_clipping() -> None:
    # What trainer=gpu trainer.precision=bf16-mixed runs, here on the CPU (tests/gpu on CUDA).
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(tiny_segmenter(), datamodule=tiny_data())
    assert trainer.global_step == 1
