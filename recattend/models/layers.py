"""Small building blocks shared by the networks."""

from __future__ import annotations

from torch import nn


def kaiming_init_(module: nn.Module) -> None:
    """He-normal weights (fan-out, ReLU) and zero biases for every conv and deconv of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def truncated_normal_init_(module: nn.Module, std: float = 0.01) -> None:
    """Every conv, deconv, linear and LSTM weight and bias of ``module`` from N(0, std^2)
    truncated at +-2 std (the authors' initialisation): small outputs everywhere at the start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.LSTMCell):
            for parameter in m.parameters(recurse=False):
                nn.init.trunc_normal_(parameter, std=std, a=-2 * std, b=2 * std)


INITS = ("kaiming", "authors")
"""The initialisations of :func:`initialise_` (``model.segmenter.init``, ``module.net.init``)."""


def initialise_(module: nn.Module, init: str, key: str) -> None:
    """Start ``module``'s weights as ``init`` says: ``"kaiming"`` (:func:`kaiming_init_`) or
    ``"authors"`` (:func:`truncated_normal_init_`); BatchNorm keeps gamma 1, beta 0 either way.

    Raises:
        ValueError: an unknown ``init``, naming the config ``key`` that set it.
    """
    if init not in INITS:
        raise ValueError(f"{key}={init!r}: use one of {list(INITS)}")
    if init == "authors":
        truncated_normal_init_(module)
    else:
        kaiming_init_(module)


class ConvBlock(nn.Sequential):
    """3x3 conv (stride 1, same padding) -> BatchNorm -> ReLU -> optional max-pool.

    Shapes: (B, C_in, H, W) -> (B, C_out, H / pool, W / pool).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)
        if pool > 1:
            self.pool = nn.MaxPool2d(pool)


class DeconvBlock(nn.Sequential):
    """3x3 transposed conv with stride = unpool factor, then BatchNorm -> ReLU unless ``final``.

    Shapes: (B, C_in, H, W) -> (B, C_out, H * unpool, W * unpool).
    """

    def __init__(
        self, in_channels: int, out_channels: int, unpool: int = 1, final: bool = False
    ) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=unpool, padding=1, output_padding=unpool - 1
        )
        if not final:
            self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
            self.relu = nn.ReLU(inplace=True)
