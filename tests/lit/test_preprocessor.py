"""The FCN pre-processor network and its LightningModule losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recattend.lit import PreprocessorModule
from recattend.models import Preprocessor
from recattend.structures import ANGLE_IGNORE

KITTI_FCN = dict(  # the authors' KITTI FCN (experiment=kitti_preprocessor)
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


def test_kitti_configuration_matches_the_authors() -> None:
    net = Preprocessor(**KITTI_FCN)
    assert net.stride == 32 and net.head_channels == 9
    # Skip widths as the authors wire them: +h16 (256), +h12 (128), +h4 (96), +RGB (3).
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
    assert math.isclose(weights / 1e6, 7.93, abs_tol=0.01)  # the authors' count: about 7.93M
    assert net(torch.rand(1, 3, 128, 448))["angles"].shape == (1, 8, 128, 448)


def test_the_authors_initialisation_is_the_segmenters() -> None:
    # module.net.init: "authors" starts every conv and deconv weight and bias from N(0, 0.01^2)
    # truncated at +-2 std, as model.segmenter.init; BatchNorm at gamma 1, beta 0 either way.
    # The default "kaiming" gives He-normal kernels (std sqrt(2 / fan_out): 0.12 for the first
    # 16-channel 3x3 layer) and zero biases.
    torch.manual_seed(0)
    authors = PreprocessorModule(image_size=[32, 32], net={"init": "authors"}).net
    kaiming = Preprocessor()
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    layers = [m for m in authors.modules() if isinstance(m, convs)]
    assert len(layers) == 12
    for layer in layers:
        assert layer.weight.abs().max() <= 0.02 and layer.bias.abs().max() <= 0.02
        assert layer.bias.abs().max() > 0  # biases drawn too
    kernels = torch.cat([m.weight.flatten() for m in layers])
    # N(0, 0.01^2) truncated at +-2 std has std 0.01 * 0.8796.
    assert kernels.std().item() == pytest.approx(0.0088, rel=0.05)
    first = kaiming.encoder[0].conv
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.15)
    assert all(m.bias.eq(0).all() for m in kaiming.modules() if isinstance(m, convs))
    for net in (authors, kaiming):
        for norm in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            assert norm.weight.eq(1).all() and norm.bias.eq(0).all()
    with pytest.raises(ValueError, match=r"module.net.init='xavier'"):
        Preprocessor(init="xavier")


def test_inconsistent_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="decoder_unpools must multiply"):
        Preprocessor(decoder_unpools=[2, 1, 2, 1, 1, 1])
    with pytest.raises(ValueError, match="one entry per decoder layer"):
        Preprocessor(decoder_skips=[True])


def test_default_skip_rule_takes_the_last_encoder_output_per_stride() -> None:
    # Default network: h0 at stride 1, h1-h2 at 2, h3-h4 at 4, h5 at 8; decoder layers 1, 3 and
    # 5 run at strides 4, 2 and 1 and take h4, h2 and the image (not h0, also at stride 1).
    assert Preprocessor().skip_sources == (None, 4, None, 2, None, -1)


def test_named_skip_sources_are_wired_and_load_old_weights() -> None:
    torch.manual_seed(0)
    # h1 and h2 both 16 channels at stride 2, h3 and h4 both 32 at stride 4: either can be a skip.
    widths = {"encoder_channels": [16, 16, 16, 32, 32, 64]}
    old = Preprocessor(**widths).eval()  # the default rule: h4, h2, x
    named = Preprocessor(**widths, decoder_skip_sources=[None, 3, None, 1, None, "x"]).eval()
    assert named.skip_sources == (None, 3, None, 1, None, -1)
    # Skips have no parameters: the same state_dict fits both wirings.
    named.load_state_dict(old.state_dict())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(named(x)["angles"], old(x)["angles"])
        # The same sources named explicitly give the default network's outputs exactly.
        same = Preprocessor(**widths, decoder_skip_sources=[None, 4, None, 2, None, -1]).eval()
        same.load_state_dict(old.state_dict())
        assert torch.equal(same(x)["angles"], old(x)["angles"])
    # decoder_skips may be left out, or must agree with the sources.
    assert Preprocessor(decoder_skips=None, decoder_skip_sources=[None, 3, None, 1, None, -1])
    with pytest.raises(ValueError, match=r"decoder layer 3: decoder_skips says False"):
        Preprocessor(
            decoder_skips=[False, True, False, False, False, True],
            decoder_skip_sources=[None, 3, None, 1, None, "x"],
        )


def test_skip_source_at_the_wrong_resolution_names_layers_and_strides() -> None:
    message = (
        r"decoder layer 1 runs at stride 4 but its skip source encoder layer 2 \(h2\) is at "
        r"stride 2; sources at stride 4: encoder layer 3 \(h3\), encoder layer 4 \(h4\)"
    )
    with pytest.raises(ValueError, match=message):
        Preprocessor(decoder_skip_sources=[None, 2, None, 1, None, "x"])
    # Upsampling in the last layer leaves decoder layer 5 at stride 2, where the image is not.
    with pytest.raises(
        ValueError, match=r"decoder layer 5 runs at stride 2 .* the input image x is at stride 1"
    ):
        Preprocessor(
            decoder_unpools=[2, 1, 2, 1, 1, 2], decoder_skip_sources=[None, 4, None, 2, None, "x"]
        )


@pytest.mark.parametrize("source", [6, -2, "y", True, 1.0])
def test_unknown_skip_source_is_refused(source) -> None:
    with pytest.raises(ValueError, match=r"decoder_skip_sources\[1\]=.*encoder layer index 0\.\.5"):
        Preprocessor(decoder_skip_sources=[None, source, None, 1, None, "x"])


def test_checkpoint_with_named_sources_loads(tmp_path) -> None:
    from recattend.lit import load_preprocessor

    config = {"decoder_skip_sources": [None, 3, None, 1, None, "x"]}
    net = Preprocessor(**config)
    path = tmp_path / "fcn.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"image_size": [16, 16], "net": config},
        },
        path,
    )
    loaded = load_preprocessor(path)  # weights_only=True
    assert loaded.skip_sources == net.skip_sources and loaded.settings == net.settings


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
