"""The recurrent segmenter: shapes, per-image stopping, ablations, start-up errors."""

from __future__ import annotations

import pytest
import torch

from recattend.models import RecurrentSegmenter
from recattend.models.filterbank import filterbank, reproject
from recattend.models.segmenter import BETA
from tests.helpers import TINY_SEGMENTER


def make(**kwargs) -> RecurrentSegmenter:
    torch.manual_seed(0)
    return RecurrentSegmenter(image_size=(32, 32), steps=4, **{**TINY_SEGMENTER, **kwargs})


def test_step_shapes_and_ranges() -> None:
    model = make().train()
    out = model.step(torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32), 0)
    assert (
        out.mask.shape == (2, 32, 32)
        and out.soft_box.shape == (2, 32, 32)
        and out.score.shape == (2,)
    )
    assert out.mask.min() > 0 and out.mask.max() < 1 and out.score.min() > 0 and out.score.max() < 1
    # The D-CNN ends in ReLU, so the logit is at least -beta: y >= sigmoid(-5).
    assert out.mask.min() >= torch.sigmoid(torch.tensor(-5.0)) - 1e-6
    assert out.box.attention.shape == (2, 2, 4, 4)  # K = 2 glimpses over the 4x4 feature map


def test_first_box_is_the_whole_image() -> None:
    # The box head starts near zero: centre at the image centre, size exp(0) * H = the image.
    box = make().eval().locate(torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), 0)
    assert torch.allclose(box.center, torch.tensor([[16.0, 16.0]]), atol=1.0)
    assert torch.allclose(box.size, torch.tensor([[32.0, 32.0]]), rtol=0.1)


def test_batch_of_one_equals_the_same_image_inside_a_batch() -> None:
    model = make().eval()
    with torch.no_grad():
        for norm in model.modules():  # make per-image stopping differ across the batch
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.uniform_(-0.5, 0.5)
        images = torch.rand(3, 3, 32, 32)
        batch = model.predict(images, threshold=0.5)
        for i in range(3):
            alone = model.predict(images[i : i + 1], threshold=0.5)
            for key in ("masks", "scores", "boxes"):
                assert torch.allclose(alone[key][0], batch[key][i], atol=1e-5), key


def test_stopped_images_get_empty_steps() -> None:
    model = make().eval()
    with torch.no_grad():
        model.score_head.bias.fill_(-20.0)  # every score ~0: stop at once
        out = model.predict(torch.rand(2, 3, 32, 32))
    assert out["masks"].sum() == 0 and out["scores"].sum() == 0


def test_ablations() -> None:
    no_box = make(box_network=False).train()
    out = no_box.step(torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32), 1)
    assert out.soft_box is None and out.box.z is None and out.mask.shape == (2, 32, 32)
    assert make(glimpses=1).box_net.glimpses == 1
    with pytest.raises(ValueError, match="glimpses=0"):
        make(glimpses=0)


def test_resolution_not_divisible_by_the_box_stride_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"dataset\.resolution=\[30, 32\].*stride 8.*\[32, 32\]"):
        RecurrentSegmenter(image_size=(30, 32), steps=4, **TINY_SEGMENTER)


def test_weight_decay_only_on_weight_matrices_and_kernels() -> None:
    from recattend.lit.optim import decay_groups

    model = make()
    decayed, free = decay_groups(model, 5e-5)
    assert decayed["weight_decay"] == 5e-5 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])
    norm = model.segm_net.dcnn.norms[3][0]
    assert any(p is norm.weight for p in free["params"])  # BatchNorm scales are not decayed
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_adam_is_fused_on_cpu_and_updates_as_the_per_parameter_loop() -> None:
    from recattend.lit.optim import adam, decay_groups

    model = make()
    twin = make()
    twin.load_state_dict(model.state_dict())
    fused = adam(model, 5e-5, lr=1e-2, eps=1e-7)
    assert fused.defaults["fused"] is True
    looped = torch.optim.Adam(decay_groups(twin, 5e-5), lr=1e-2, eps=1e-7, foreach=False)
    torch.manual_seed(1)
    for _ in range(3):  # same gradients for both, including the decay of weight matrices
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        looped.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    moved = torch.nn.Linear(2, 2).to("meta")  # no fused kernel there: the per-parameter loop
    assert not adam(moved, 0.0, lr=1e-3).defaults["fused"]


def test_the_authors_initialisation_is_a_truncated_normal_of_std_0_01() -> None:
    model = make(init="authors", hidden=64)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers
    for layer in layers:  # weights and biases alike, truncated at 2 std
        for parameter in layer.parameters(recurse=False):
            assert parameter.abs().max() <= 0.02
    lstm = model.box_net.lstm
    weights = torch.cat([lstm.weight_ih.flatten(), lstm.weight_hh.flatten()])
    assert weights.abs().max() <= 0.02
    # N(0, 0.01^2) truncated at +-2 std has std 0.01 * 0.8796 (0.88 of the untruncated one).
    assert weights.std().item() == pytest.approx(0.0088, rel=0.05)
    forget = lstm.bias_ih[64:128]
    assert torch.equal(forget, torch.ones_like(forget))  # the gate biases override the init
    assert torch.equal(lstm.bias_hh, torch.zeros_like(lstm.bias_hh))
    kaiming = make(hidden=64).box_net.cnn  # the default: He-normal, far larger than 0.02
    assert (
        max(m.weight.abs().max() for m in kaiming.modules() if isinstance(m, torch.nn.Conv2d)) > 0.1
    )
    with pytest.raises(ValueError, match="model.segmenter.init='xavier'"):
        make(init="xavier")


def test_soft_box_is_the_reprojected_all_ones_patch() -> None:
    # eq. (25): b_t = sigmoid(gamma_box F_Y 1 F_X^T - beta), computed from the filters' row sums.
    model = make().train()
    box = model.locate(torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32), 0)
    f_y, f_x = filterbank(box.center, box.size, box.var, model.image_size, model.patch_size)
    ones = torch.ones(2, 1, *model.patch_size)
    expected = torch.sigmoid(box.gains[:, 1, None, None] * reproject(ones, f_y, f_x)[:, 0] - BETA)
    assert torch.allclose(model.soft_box(box), expected, atol=1e-6)
