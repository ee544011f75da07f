"""The FCN pre-processor recipes (``experiment=<dataset>_preprocessor``) compose with the real
configs and build the authors' networks, wiring, optimiser and schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recattend.lit import PreprocessorModule
from recattend.models import Preprocessor
from recattend.utils.config import instantiate_data

RECIPES = ["kitti", "cityscapes", "cvppp", "coco_zebra", "synthetic"]
PAPER_SIZED = ["kitti", "cityscapes", "cvppp", "coco_zebra"]

# Parameters per layer, counted by hand. Encoder layer (3x3 conv + BatchNorm): 9 * cin * cout
# kernel + cout bias + 2 * cout BatchNorm scale and shift = 9 * cin * cout + 3 * cout.
# Decoder layer (3x3 transposed conv + BatchNorm): the same, its cin widened by the skip it
# receives; the output layer has no BatchNorm: 9 * cin * cout + cout.
KITTI_LAYERS = [
    9 * 3 * 32 + 3 * 32,  # e0: 960
    9 * 32 * 64 + 3 * 64,  # e1: 18,624
    9 * 64 * 64 + 3 * 64,  # e2: 37,056
    9 * 64 * 96 + 3 * 96,  # e3: 55,584
    9 * 96 * 96 + 3 * 96,  # e4: 83,232
    9 * 96 * 128 + 3 * 128,  # e5: 110,976
    *[9 * 128 * 128 + 3 * 128] * 7,  # e6-e12: 7 x 147,840
    9 * 128 * 256 + 3 * 256,  # e13: 295,680
    *[9 * 256 * 256 + 3 * 256] * 3,  # e14-e16: 3 x 590,592
    9 * 256 * 512 + 3 * 512,  # e17: 1,181,184 (encoder: 4,589,952)
    9 * 512 * 256 + 3 * 256,  # d0: 1,180,416
    9 * (256 + 256) * 256 + 3 * 256,  # d1 + h16: 1,180,416
    9 * 256 * 128 + 3 * 128,  # d2: 295,296
    9 * (128 + 128) * 128 + 3 * 128,  # d3 + h12: 295,296
    9 * 128 * 96 + 3 * 96,  # d4: 110,880
    9 * (96 + 96) * 96 + 3 * 96,  # d5 + h4: 166,176
    9 * 96 * 64 + 3 * 64,  # d6: 55,488
    9 * 64 * 64 + 3 * 64,  # d7: 37,056
    9 * 64 * 32 + 3 * 32,  # d8: 18,528
    9 * 32 * 32 + 3 * 32,  # d9: 9,312
    9 * (32 + 3) * 9 + 9,  # d10 + RGB, output: 2,844 (decoder: 3,351,708)
]
KITTI_TOTAL = 7_941_660
KITTI_KERNELS = 7_929_459  # without the 4,073 biases and 8,128 BatchNorm parameters

CITYSCAPES_LAYERS = [
    9 * 3 * 64 + 3 * 64,  # e0: 1,920
    9 * 64 * 96 + 3 * 96,  # e1: 55,584
    9 * 96 * 96 + 3 * 96,  # e2: 83,232
    9 * 96 * 128 + 3 * 128,  # e3: 110,976
    9 * 128 * 128 + 3 * 128,  # e4: 147,840
    9 * 128 * 192 + 3 * 192,  # e5: 221,760
    9 * 192 * 192 + 3 * 192,  # e6: 332,352
    9 * 192 * 256 + 3 * 256,  # e7: 443,136
    *[9 * 256 * 256 + 3 * 256] * 7,  # e8-e14: 7 x 590,592
    9 * 256 * 512 + 3 * 512,  # e15: 1,181,184
    *[9 * 512 * 512 + 3 * 512] * 4,  # e16-e19: 4 x 2,360,832 (encoder: 16,155,456)
    9 * 512 * 512 + 3 * 512,  # d0: 2,360,832
    9 * (512 + 512) * 512 + 3 * 512,  # d1 + h16: 4,720,128
    9 * 512 * 256 + 3 * 256,  # d2: 1,180,416
    9 * (256 + 256) * 256 + 3 * 256,  # d3 + h7: 1,180,416
    9 * 256 * 192 + 3 * 192,  # d4: 442,944
    9 * (192 + 192) * 192 + 3 * 192,  # d5 + h5: 664,128
    9 * 192 * 128 + 3 * 128,  # d6: 221,568
    9 * (128 + 128) * 128 + 3 * 128,  # d7 + h3: 295,296
    9 * 128 * 96 + 3 * 96,  # d8: 110,880
    9 * (96 + 96) * 96 + 3 * 96,  # d9 + h1: 166,176
    9 * 96 * 64 + 3 * 64,  # d10: 55,488
    9 * (64 + 3) * 64 + 3 * 64,  # d11 + RGB: 38,784
    9 * 64 * 17 + 17,  # d12, output (9 semantic + 8 angle channels): 9,809 (decoder: 11,446,865)
]
CITYSCAPES_TOTAL = 27_602_321
CITYSCAPES_KERNELS = 27_578_304  # without the 8,017 biases and 16,000 BatchNorm parameters


def _module(compose_train, recipe: str, *overrides: str) -> PreprocessorModule:
    cfg = compose_train(f"experiment={recipe}_preprocessor", *overrides)
    return instantiate(cfg.module, _convert_="all")


def _default_rule_net(compose_train, recipe: str) -> Preprocessor:
    """The recipe's network with its skip sources left to the default rule."""
    cfg = compose_train(f"experiment={recipe}_preprocessor")
    kwargs = OmegaConf.to_container(cfg.module.net, resolve=True)
    del kwargs["decoder_skip_sources"], kwargs["_target_"]
    return Preprocessor(**kwargs)


def _layer_counts(net: Preprocessor) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) for layer in [*net.encoder, *net.decoder]]


def _kernels(net: Preprocessor) -> int:
    return sum(p.numel() for p in net.parameters() if p.dim() > 1)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_builds(compose_train, recipe: str) -> None:
    cfg = compose_train(f"experiment={recipe}_preprocessor")
    assert cfg.module._target_ == "recattend.lit.PreprocessorModule"
    assert "preprocessor" in cfg.tags
    # The authors' augmentation: a random shift per batch; flips only in the segmenter's box
    # stage, which an FCN run (no bootstrap stages) never enters.
    assert cfg.hydra.runtime.choices["dataset/augment"] == "paper"
    assert cfg.dataset.augment.shift == 16 and list(cfg.dataset.augment.flip_stages) == ["box"]
    assert cfg.dataset.batch_size == 8
    instantiate_data(cfg.dataset)  # the data module builds (files are read later)
    module = instantiate(cfg.module, _convert_="all")
    assert isinstance(module, PreprocessorModule)
    h, w = cfg.dataset.resolution
    assert h % module.net.stride == 0 and w % module.net.stride == 0
    if recipe in PAPER_SIZED:
        assert cfg.trainer.max_steps == 40000 and cfg.trainer.max_epochs == -1
        assert cfg.callbacks.last_checkpoint.every_n_train_steps == 1000
        assert module.hparams.optimizer == "sgd" and module.hparams.weight_decay == 5e-5
    else:  # the CPU recipe: ten minutes
        assert cfg.trainer.max_time == "00:00:10:00"


def test_kitti_fcn_parameters_by_hand(compose_train) -> None:
    assert sum(KITTI_LAYERS) == KITTI_TOTAL
    net = _module(compose_train, "kitti").net
    assert _layer_counts(net) == KITTI_LAYERS
    assert sum(p.numel() for p in net.parameters()) == KITTI_TOTAL
    # The authors' 7.93M counts kernels only (7,929,459); biases (4,073) cannot be told apart at
    # this precision, but with BatchNorm's scales and shifts the total rounds to 7.94M.
    assert _kernels(net) == KITTI_KERNELS
    assert round(KITTI_KERNELS / 1e6, 2) == 7.93 and round(KITTI_TOTAL / 1e6, 2) == 7.94


def test_cityscapes_fcn_parameters_by_hand(compose_train) -> None:
    assert sum(CITYSCAPES_LAYERS) == CITYSCAPES_TOTAL
    net = _module(compose_train, "cityscapes").net
    assert net.stride == 64 and net.num_classes == 8 and net.head_channels == 17
    assert _layer_counts(net) == CITYSCAPES_LAYERS
    assert sum(p.numel() for p in net.parameters()) == CITYSCAPES_TOTAL
    # 27.6M fits both the kernels alone (27.58M, taken to be the authors' count, as for KITTI)
    # and the whole network (27.60M).
    assert _kernels(net) == CITYSCAPES_KERNELS
    assert math.isclose(CITYSCAPES_KERNELS / 1e6, 27.6, abs_tol=0.05)


@pytest.mark.parametrize("recipe", ["cvppp", "coco_zebra"])
def test_224_recipes_reuse_the_kitti_fcn_and_optimiser(compose_train, recipe: str) -> None:
    kitti = compose_train("experiment=kitti_preprocessor").module
    other = compose_train(f"experiment={recipe}_preprocessor").module
    assert OmegaConf.to_container(other.net) == OmegaConf.to_container(kitti.net)
    for key in ("optimizer", "lr", "lr_decay", "lr_decay_steps", "weight_decay"):
        assert other[key] == kitti[key], key


def _skip_inputs(net: Preprocessor, x: torch.Tensor, encoder: list[int], decoder: int) -> dict:
    """Outputs of the ``encoder`` layers and the input of decoder layer ``decoder``."""
    seen: dict = {}
    hooks = [
        net.encoder[i].register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(i, out.clone())
        )
        for i in encoder
    ]
    hooks.append(
        net.decoder[decoder].register_forward_pre_hook(
            lambda _m, args: seen.__setitem__("decoder", args[0].clone())
        )
    )
    with torch.no_grad():
        net.eval()(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_kitti_decoder_layer_3_gets_h12(compose_train) -> None:
    net = _module(compose_train, "kitti").net
    assert net.skip_sources == (None, 16, None, 12, None, 4, None, None, None, None, -1)
    # 32x64 is the smallest input of two bottleneck pixels; decoder layer 3 runs at stride 8.
    seen = _skip_inputs(net, torch.rand(1, 3, 32, 64), [11, 12], decoder=3)
    assert seen["decoder"].shape == (1, 128 + 128, 4, 8)
    skip = seen["decoder"][:, 128:]
    assert torch.equal(skip, seen[12]) and not torch.equal(skip, seen[11])
    # The default rule (last encoder output per stride) picks the same sources.
    assert _default_rule_net(compose_train, "kitti").skip_sources == net.skip_sources


def test_cityscapes_decoder_layer_1_gets_h16(compose_train) -> None:
    net = _module(compose_train, "cityscapes").net
    assert net.skip_sources == (None, 16, None, 7, None, 5, None, 3, None, 1, None, -1, None)
    # 64x128 (stride 64): decoder layer 1 runs at stride 32 on 2x4 pixels.
    seen = _skip_inputs(net, torch.rand(1, 3, 64, 128), [16, 18], decoder=1)
    assert seen["decoder"].shape == (1, 512 + 512, 2, 4)
    skip = seen["decoder"][:, 512:]
    # h16, not h18, the last encoder output at stride 32 that the default rule would take.
    assert torch.equal(skip, seen[16]) and not torch.equal(skip, seen[18])
    assert _default_rule_net(compose_train, "cityscapes").skip_sources[1] == 18


@pytest.mark.parametrize(
    ("recipe", "lr", "decay", "every"),
    [("cityscapes", 1e-2, 0.8, 10000), ("kitti", 1e-3, 0.96, 5000)],
)
def test_sgd_and_staircase_schedule(compose_train, recipe, lr, decay, every) -> None:
    config = _module(compose_train, recipe).configure_optimizers()
    opt, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["lr"] == lr for g in opt.param_groups)
    # L2 5e-5 on kernels only; biases and BatchNorm parameters are not decayed.
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-5, 0.0]
    assert scheduler["interval"] == "step"
    sched = scheduler["scheduler"]
    opt.step()  # no gradients: nothing moves, but the scheduler may now step
    lrs = {}
    for step in range(1, 2 * every + 1):
        sched.step()
        if step in (every - 1, every, 2 * every - 1, 2 * every):
            lrs[step] = opt.param_groups[0]["lr"]
    assert math.isclose(lrs[every - 1], lr) and math.isclose(lrs[every], lr * decay)
    assert math.isclose(lrs[2 * every - 1], lr * decay) and math.isclose(
        lrs[2 * every], lr * decay**2
    )


def test_synthetic_foreground_only_variant(compose_train) -> None:
    # The FCN for the no_angle ablation: trained without the angle head.
    module = _module(compose_train, "synthetic", "module.net.angles=false")
    assert module.net.head_channels == 1
    out = module.eval()(torch.rand(1, 3, 32, 32))
    assert set(out) == {"foreground"}
