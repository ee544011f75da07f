"""The FCN pre-processor network and its LightningModule losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recattend.data.targets import ANGLE_IGNORE
from recattend.lit import PreprocessorModule
from recattend.models import Preprocessor

KITTI_FCN = dict(  # reference/original-system.md section 1.2
    encoder_channels=[
        32,
        64,
        64,
        96,
        96,
        128,
        128,
        128,
        128,
        128,
        128,
        128,
        128,
        256,
        256,
        256,
        256,
        512,
    ],
    encoder_pools=[1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 2],
    decoder_channels=[256, 256, 128, 128, 96, 96, 64, 64, 32, 32],
    decoder_unpools=[2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 1],
    decoder_skips=[False, True, False, True, False, True, False, False, False, False, True],
)


def test_output_shapes_and_heads() -> None:
    out = Preprocessor()(torch.rand(2, 3, 32, 48))
    assert out["foreground"].shape == (2, 1, 32, 48) and out["angles"].shape == (2, 8, 32, 48)
    semantic = Preprocessor(num_classes=8, angles=False)(torch.rand(1, 3, 16, 16))
    assert set(semantic) == {"semantic"} and semantic["semantic"].shape == (1, 9, 16, 16)


def test_kitti_configuration_matches_the_reference() -> None:
    net = Preprocessor(**KITTI_FCN)
    assert net.stride == 32 and net.head_channels == 9
    # Skip widths as the reference wires them: +h16 (256), +h12 (128), +h4 (96), +RGB (3).
    assert [layer.deconv.in_channels for layer in net.decoder] == [
        512,
        512,
        256,
        256,
        128,
        192,
        96,
        64,
        64,
        32,
        35,
    ]
    weights = sum(
        p.numel() for name, p in net.named_parameters() if name.endswith("weight") and p.dim() > 1
    )
    assert math.isclose(weights / 1e6, 7.93, abs_tol=0.01)  # the reference's count: about 7.93M
    assert net(torch.rand(1, 3, 128, 448))["angles"].shape == (1, 8, 128, 448)


def test_inconsistent_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="decoder_unpools must multiply"):
        Preprocessor(decoder_unpools=[2, 1, 2, 1, 1, 1])
    with pytest.raises(ValueError, match="one entry per decoder layer"):
        Preprocessor(decoder_skips=[True])


def test_resolution_not_divisible_by_the_stride_names_the_key() -> None:
    with pytest.raises(
        ValueError, match=r"dataset\.resolution=\[100, 128\].*stride 8.*\[104, 128\]"
    ):
        PreprocessorModule(image_size=[100, 128])


def _batch() -> dict:
    foreground = torch.zeros(1, 1, 2, 2)
    foreground[0, 0, 0, 0] = 1
    angles = torch.full((1, 2, 2), ANGLE_IGNORE)
    angles[0, 0, 0] = 3
    return {"foreground": foreground, "angles": angles}


def test_losses_by_hand() -> None:
    module = PreprocessorModule(image_size=[8, 8])
    out = {"foreground": torch.zeros(1, 1, 2, 2), "angles": torch.zeros(1, 8, 2, 2)}
    out["angles"][0, 3, 0, 0] = 2.0
    terms = module.losses(out, _batch())
    # BCE of logit 0 is ln 2 at every pixel; angle CE at the single fg pixel: -log(e^2 / (e^2 + 7)).
    assert math.isclose(terms["loss_fg"].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(
        terms["loss_angle"].item(), -math.log(math.e**2 / (math.e**2 + 7)), rel_tol=1e-6
    )
    assert math.isclose(
        terms["loss"].item(), terms["loss_fg"].item() + terms["loss_angle"].item(), rel_tol=1e-6
    )


def test_semantic_variant_uses_cross_entropy_and_needs_a_semantic_map() -> None:
    # Background + 2 classes, uniform logits except class 2 at pixel (0, 0) with logit 3:
    # CE there is -log(e^3 / (e^3 + 2)); elsewhere ln 3. Mean over the 4 pixels.
    module = PreprocessorModule(image_size=[8, 8], net={"num_classes": 2, "angles": False})
    out = {"semantic": torch.zeros(1, 3, 2, 2)}
    out["semantic"][0, 2, 0, 0] = 3.0
    batch = {**_batch(), "semantic": torch.tensor([[[2, 0], [1, 0]]])}
    expected = (-math.log(math.e**3 / (math.e**3 + 2)) + 3 * math.log(3)) / 4
    assert math.isclose(module.losses(out, batch)["loss_fg"].item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="needs a dataset with a semantic map"):
        module.losses(out, _batch())


def test_angle_loss_ignores_background_pixels() -> None:
    module = PreprocessorModule(image_size=[8, 8])
    out = {"foreground": torch.zeros(1, 1, 2, 2), "angles": torch.randn(1, 8, 2, 2)}
    before = module.losses(out, _batch())["loss_angle"]
    out["angles"][0, :, 1, :] = torch.randn(8, 2) * 100  # background pixels only
    assert torch.equal(module.losses(out, _batch())["loss_angle"], before)
    # No foreground at all: the angle loss is 0, not NaN.
    empty = {"foreground": torch.zeros(1, 1, 2, 2), "angles": torch.full((1, 2, 2), ANGLE_IGNORE)}
    assert module.losses(out, empty)["loss_angle"].item() == 0.0


def test_a_few_steps_reduce_the_loss_on_one_batch() -> None:
    from recattend.data import SyntheticDataModule

    torch.manual_seed(0)
    dm = SyntheticDataModule(
        resolution=[32, 32],
        max_instances=4,
        batch_size=4,
        num_train=4,
        augment=None,
        min_objects=2,
        max_objects=4,
    )
    batch = next(iter(dm.train_dataloader()))
    module = PreprocessorModule(image_size=[32, 32], lr=1e-2)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = module.losses(module(batch["image"]), batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
    assert (
        F.binary_cross_entropy_with_logits(
            module(batch["image"])["foreground"], batch["foreground"]
        )
        < 0.69
    )
