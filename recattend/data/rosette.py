"""Synthetic top-view rosettes modelled on real Arabidopsis photos (``dataset.style=leaves``).

A scene is what a phenotyping camera sees: one young rosette in a round dark pot of soil, the pot
standing in a tray whose walls and neighbouring pots fill the margins. The geometry follows the
plant:

* leaves emerge from the centre one after another at the golden angle (phyllotaxis) with a
  random sense of rotation; each leaf is a thin stalk (petiole) and a rounded-oval to spoon-shaped
  blade, slightly bent, and its label includes the stalk;
* leaf size grows with age, so old leaves are large and outside and young ones small at the
  centre, drawn last and so lying on top; the stalk's share of the leaf grows with age too;
* a younger leaf casts a soft shadow on the leaves and soil under it; a lighter midrib runs
  along each blade; the plant's colour varies a little from leaf to leaf (young leaves lighter
  and yellower).

The background is a tray (terracotta, or dark or grey plastic) with straight walls, the plant's
pot and its neighbours (dark rims, granular soil with light grains, moss or algae patches of any
extent) and, sometimes, leaves of neighbouring plants at the border, which are *not* labelled.
Then the whole image gets a random exposure, colour cast, light gradient, gamma, blur and sensor
noise (domain randomisation): the network sees many cameras and never the same light twice.

Every knob is a field of :class:`RosetteOptions` (``dataset.rosette.*``, docs/datasets.md); the
defaults match the aggregate statistics of the CVPPP A1 training plants, which
``python -m recattend.tasks.rosette_stats`` prints beside any setting's.

Sizes are fractions of the layout's shorter side, so a scene is the same plant at every
resolution. Draws that depend on the drawn size (per-pixel soil grain, sensor noise) come from
generators seeded by the sample's generator, so the scene's geometry does not move with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from recattend.data.drawing import SUBPIXEL, fill, frame, polygon, smooth_noise, to_drawn

_GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
_TERRACOTTA = np.array([204, 114, 66], np.float32)  # RGB
_SOIL = np.array([64, 48, 38], np.float32)
_MOSS = np.array([112, 118, 56], np.float32)


@dataclasses.dataclass(frozen=True)
class RosetteOptions:
    """The rosette generator's knobs (``dataset.rosette.<name>``). Pairs are [low, high] ranges
    a value is drawn from uniformly, per image; probabilities are per image.

    Attributes:
        plant_extent: the plant's diameter (tip to tip) over the image's shorter side.
        youngest_leaf: the youngest leaf's length over the largest leaf's.
        leaf_aspect: a blade's length over its width (1: round).
        petiole: the stalk's share of the length of the oldest leaves (young leaves: almost none).
        leaf_hue: the plant's hue in degrees (60: yellow, 120: green); per-leaf spread by
            ``dataset.shade_jitter``.
        leaf_value: the plant's brightness (HSV value, 0-1).
        overlap_shadow: how much a leaf darkens what lies just under its edge (0: no shadow).
        pot: probability that the plant stands in a visible round pot (else soil fills the frame).
        tray: probability that the tray is terracotta (else a random dark or grey plastic).
        moss: probability of moss or algae patches on the soil.
        neighbour_leaves: probability of unlabelled leaves of neighbouring plants at the border.
        brightness: exposure gain of the whole image.
        colour_cast: standard deviation of the per-channel gains (white balance), e.g. 0.06.
        light_gradient: largest brightness change of a linear light gradient across the image.
        blur: Gaussian blur sigma as a fraction of the image's shorter side (0.002: 1 px at 500).
        noise: sensor noise sigma in grey levels (0-255), per drawn pixel.
    """

    plant_extent: tuple[float, float] = (0.55, 0.95)
    youngest_leaf: tuple[float, float] = (0.06, 0.16)
    leaf_aspect: tuple[float, float] = (1.4, 2.1)
    petiole: tuple[float, float] = (0.35, 0.6)
    leaf_hue: tuple[float, float] = (72.0, 100.0)
    leaf_value: tuple[float, float] = (0.5, 0.75)
    overlap_shadow: tuple[float, float] = (0.1, 0.4)
    pot: float = 0.85
    tray: float = 0.8
    moss: float = 0.5
    neighbour_leaves: float = 0.4
    brightness: tuple[float, float] = (0.8, 1.2)
    colour_cast: float = 0.06
    light_gradient: float = 0.25
    blur: tuple[float, float] = (0.0, 0.002)
    noise: tuple[float, float] = (1.0, 6.0)

    def __post_init__(self) -> None:
        """Check every knob (and store ranges as float pairs, numbers as floats).

        Raises:
            ValueError: a range that is not [low, high] with low <= high inside the knob's span
                (:data:`SPANS`), or a number outside its span; the message names the knob.
        """
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            ranged = isinstance(field.default, tuple)
            object.__setattr__(self, field.name, _checked(field.name, value, ranged))

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> RosetteOptions:
        """Options from ``dataset.rosette`` (any subset of the fields; None: the defaults).

        Raises:
            ValueError: an unknown key (with the closest name), or a value out of its span
                (:meth:`__post_init__`).
        """
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"dataset.rosette={values!r} must be a mapping of knob: value")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(
                    f"dataset.rosette.{key}: no such knob{hint}; the knobs are {names}"
                )
        return cls(**dict(values))


# The allowed span of every knob: a range's low and high lie inside it, and so does a number.
SPANS = {
    "plant_extent": (0.05, 1.5),
    "youngest_leaf": (0.02, 1.0),
    "leaf_aspect": (0.5, 5.0),
    "petiole": (0.0, 0.8),
    "leaf_hue": (0.0, 360.0),
    "leaf_value": (0.0, 1.0),
    "overlap_shadow": (0.0, 1.0),
    "pot": (0.0, 1.0),
    "tray": (0.0, 1.0),
    "moss": (0.0, 1.0),
    "neighbour_leaves": (0.0, 1.0),
    "brightness": (0.1, 4.0),
    "colour_cast": (0.0, 0.5),
    "light_gradient": (0.0, 0.9),
    "blur": (0.0, 0.05),
    "noise": (0.0, 64.0),
}


def _number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _checked(key: str, value: Any, ranged: bool) -> float | tuple[float, float]:
    """``value`` of knob ``key`` checked against its span: a float, or a (low, high) pair."""
    lo, hi = SPANS[key]
    where = f"dataset.rosette.{key}={value!r}"
    if not ranged:
        if not _number(value) or not lo <= value <= hi:
            raise ValueError(f"{where} must be a number in [{lo}, {hi}]")
        return float(value)
    sequence = isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)
    pair = list(value) if sequence else None
    if pair is None or len(pair) != 2 or not all(map(_number, pair)):
        raise ValueError(f"{where} must be a range [low, high] of two numbers")
    if not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(f"{where} must have {lo} <= low <= high <= {hi}")
    return float(pair[0]), float(pair[1])


def _uniform(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def _hsv_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB (3,) float32 in 0-255 of a colour given as hue in degrees, saturation and value 0-1."""
    hsv = np.array([[[hue % 360, np.clip(saturation, 0, 1), np.clip(value, 0, 1)]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255


def leaf_outline(
    base: np.ndarray,
    angle: float,
    length: float,
    width: float,
    petiole: float,
    widest: float,
    roundness: float,
    bend: float,
    samples: int = 32,
) -> np.ndarray:
    """A leaf's outline: a stalk from ``base``, then the blade, in layout pixels.

    Args:
        base: (2,) x, y where the stalk starts.
        angle: the leaf's direction in radians (x towards y).
        length: stalk plus blade.
        width: the blade's greatest width.
        petiole: the stalk's share of ``length`` (0-1).
        widest: exponent p placing the blade's widest point at 0.5 ** (1 / p) of its length
            (p > 1: spoon-shaped, widest towards the tip).
        roundness: exponent q of the blade's profile sin(pi s^p)^q (0.5: rounded tip, 1:
            pointed).
        bend: sideways drift of the tip as a fraction of ``length`` (a quadratic curve).
        samples: points along each side of the blade.

    Returns:
        (K, 2) float64 x, y.
    """
    stalk_len = petiole * length
    blade = length - stalk_len
    s = np.linspace(0.0, 1.0, samples)
    half = 0.5 * width * np.sin(math.pi * s**widest) ** roundness
    stalk = max(0.07 * width, 0.4)  # half the stalk's width, never thinner than ~1 layout pixel
    along = stalk_len + blade * s
    side = np.maximum(half, stalk)
    u = np.concatenate([[0.0], along, along[::-1], [0.0]])
    v = np.concatenate([[stalk], side, -side[::-1], [-stalk]])
    v = v + bend * length * (u / length) ** 2
    cos, sin = math.cos(angle), math.sin(angle)
    return np.stack([base[0] + u * cos - v * sin, base[1] + u * sin + v * cos], axis=1)


def _disc(canvas: np.ndarray, centre: np.ndarray, radius: float, sy: float, sx: float) -> None:
    """Fill a disc given in layout pixels (an ellipse when the drawn frame is stretched)."""
    scale = 1 << SUBPIXEL
    cv2.ellipse(
        canvas,
        tuple(int(v) for v in np.round(to_drawn(centre, sy, sx) * scale)),
        (max(1, int(radius * sx * scale)), max(1, int(radius * sy * scale))),
        0,
        0,
        360,
        1,
        -1,
        cv2.LINE_8,
        SUBPIXEL,
    )


def _background(
    rng: np.random.Generator,
    streams: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
    size: tuple[int, int],
    layout: tuple[float, float, float, float],
    centre: np.ndarray,
    options: RosetteOptions,
) -> np.ndarray:
    """Tray, pots, soil and moss: (H, W, 3) float32 RGB about 0-255. ``streams`` draw the
    low-frequency textures, the per-pixel grain and the moss; ``rng`` the rest."""
    tex, pixels, moss_rng = streams
    h, w = size
    h0, w0, sy, sx = layout
    scale = min(h0, w0)
    dscale = min(h, w)
    # Tray: terracotta, or a random plastic; straight walls on a grid around the pots.
    terracotta = rng.uniform() < options.tray
    tray = _TERRACOTTA * rng.uniform(0.8, 1.12) * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    plastic = np.full(3, rng.uniform(25, 150), np.float32) * (1 + rng.normal(0, 0.04, 3))
    colour = tray if terracotta else plastic.astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = colour
    img *= (1 + 0.08 * smooth_noise(tex, size, 5) + 0.04 * smooth_noise(tex, size, 40))[..., None]
    # Pots: the plant's, and its neighbours on the tray's grid.
    in_pot = rng.uniform() < options.pot
    pot_radius = scale * rng.uniform(0.22, 0.38)
    pitch = 2 * pot_radius * rng.uniform(1.15, 1.6)
    pot_centre = centre + rng.normal(0, 0.03, 2) * scale
    rim = scale * rng.uniform(0.008, 0.03)
    rim_colour = np.full(3, rng.uniform(15, 70), np.float32)
    tilt = rng.uniform(-0.1, 0.1)
    # Tray walls: straight lines between the pot cells, each lighter or darker than the tray.
    walls = np.zeros((h, w), np.float32)
    direction = np.array([math.cos(tilt), math.sin(tilt)])
    normal = np.array([-direction[1], direction[0]])
    for axis, step in ((direction, normal), (normal, direction)):
        for k in (-1.5, -0.5, 0.5, 1.5):
            mid = pot_centre + step * k * pitch
            ends = to_drawn(np.stack([mid - 3 * scale * axis, mid + 3 * scale * axis]), sy, sx)
            thickness = max(1, round(0.012 * dscale * rng.uniform(0.5, 1.5)))
            cv2.polylines(
                walls,
                [polygon(ends)],
                False,
                float(rng.uniform(-1, 1)),
                thickness,
                cv2.LINE_8,
                SUBPIXEL,
            )
    img *= (1 + 0.25 * walls)[..., None]
    soil = np.zeros((h, w), np.uint8)
    rims = np.zeros((h, w), np.uint8)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            c = pot_centre + pitch * (i * direction + j * normal)
            _disc(rims, c, pot_radius + rim, sy, sx)
            _disc(soil, c, pot_radius, sy, sx)
    if not in_pot:  # soil to the edges of the frame
        soil[:] = 1
        rims[:] = 0
    rims &= ~soil.astype(bool)
    img[rims.astype(bool)] = rim_colour * (1 + 0.1 * pixels.normal(0, 1, (int(rims.sum()), 1)))
    # Soil: dark granular brown with light grains (perlite), moss patches.
    soil_colour = _SOIL * rng.uniform(0.7, 1.6) * (1 + rng.normal(0, 0.06, 3)).astype(np.float32)
    grain = cv2.GaussianBlur(
        pixels.normal(0, 1, (h, w)).astype(np.float32), (0, 0), max(0.3, 0.0025 * dscale)
    )
    grain /= max(float(grain.std()), 1e-6)
    earth = (
        soil_colour
        * (
            1
            + 0.15 * smooth_noise(tex, size, 8)
            + 0.12 * smooth_noise(tex, size, 60)
            + 0.18 * grain
        )[..., None]
    )
    specks = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 60))):
        spot = np.array([rng.uniform(0, w0), rng.uniform(0, h0)])
        _disc(specks, spot, scale * rng.uniform(0.002, 0.007), sy, sx)
    earth[specks.astype(bool)] = np.float32(rng.uniform(150, 230))
    if rng.uniform() < options.moss:
        cover = moss_rng.uniform(0.05, 0.9)
        cells = int(moss_rng.integers(4, 16))
        field = smooth_noise(moss_rng, size, cells) + 0.3 * smooth_noise(moss_rng, size, 4 * cells)
        edge = float(np.quantile(field, 1 - cover))
        alpha = moss_rng.uniform(0.4, 0.9) * np.clip((field - edge) * 4, 0, 1)[..., None]
        colour = moss_rng.uniform(0.7, 1.2) * (1 + moss_rng.normal(0, 0.08, 3))
        moss = _MOSS * colour.astype(np.float32)
        earth = earth * (1 - alpha) + moss * (1 + 0.2 * grain[..., None]) * alpha
    inside = soil.astype(bool)
    img[inside] = earth[inside]
    return img


def _paint_leaf(
    img: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    axis: tuple[np.ndarray, np.ndarray],
    blade_from: float,
    shadow: float,
    sigma: float,
) -> None:
    """Darken what lies under a leaf's edge (its soft shadow), then paint the leaf in ``colour``
    with a lighter midrib and a paler stalk, in place."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    h, w = mask.shape
    pad = int(3 * sigma) + 2
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    crop = mask[y0:y1, x0:x1].astype(np.float32)
    if shadow > 0:
        shade = cv2.GaussianBlur(crop, (0, 0), sigma) * (1 - crop)
        img[y0:y1, x0:x1] *= (1 - shadow * shade)[..., None]
    # Position along the leaf (0 at the base, 1 at the tip) and across it, per leaf pixel.
    start, tip = axis
    along = tip - start
    length = max(float(np.hypot(*along)), 1e-6)
    rel = np.stack([xs - start[0], ys - start[1]], axis=1)
    t = (rel @ along) / length**2
    across = np.abs(rel[:, 0] * along[1] - rel[:, 1] * along[0]) / length
    width = max(float(np.quantile(across, 0.95)), 1e-6)
    light = 1 + 0.1 * np.exp(-((across / (0.12 * width + 0.5)) ** 2)) * (t > blade_from)
    light *= 1 - 0.08 * np.clip(t, 0, 1)  # slightly darker towards the tip, as curved leaves are
    stalk = (t < blade_from)[:, None]
    paint = colour[None, :] * light[:, None]
    paint = np.where(stalk, paint * 1.08 + 8, paint)
    img[ys, xs] = paint


def render_rosette(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_leaves: int,
    shade_jitter: float = 1.0,
    layout_size: tuple[int, int] | None = None,
    options: RosetteOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a rosette of ``num_leaves`` leaves in its pot, with domain randomisation.

    Args:
        rng: the sample's generator.
        size: (H, W) drawn.
        num_leaves: leaves drawn (a leaf hidden entirely under younger ones has an empty mask).
        shade_jitter: spread of the per-leaf colour around the plant's; 0: every leaf the same.
        layout_size: (H0, W0) the scene is laid out in: the same generator state gives the same
            scene at every ``size`` of one aspect, scaled by H / H0. The scene takes the drawn
            aspect (W0 becomes H0 W / H), so the plant stays round in an image of any shape;
            None: ``size``.
        options: the knobs (:class:`RosetteOptions`); None: the defaults.

    Returns:
        image (H, W, 3) uint8 RGB, and visible masks (N, H, W) bool, oldest leaf first
        (N = ``num_leaves``); neighbouring plants' leaves are in no mask.
    """
    options = options or RosetteOptions()
    h, w = size
    h0, _, sy, _ = frame(size, layout_size)
    # A plant is round in a photo of any shape: the scene takes the drawn image's aspect, and the
    # layout only sets its scale (H0 layout pixels across the image's height).
    w0, sx = w * h0 / h, sy
    scaled = (h0, w0) != (h, w)
    scale = min(h0, w0)
    dscale = min(h, w)
    edge = max(1, round(sx)) if scaled else 1  # the masks' margin (drawing.fill)
    # Side streams: the low-frequency textures, the per-pixel draws (grain, sensor noise) and the
    # optional parts, so that neither the drawn size nor a part switched on or off moves the
    # scene's other draws.
    seed = int(rng.integers(1 << 62))
    tex, pixels, noise_rng, moss_rng, neighbour_rng = (
        np.random.default_rng([seed, k]) for k in range(5)
    )

    radius = 0.5 * _uniform(rng, options.plant_extent) * scale
    centre = np.array([w0 / 2, h0 / 2]) + rng.normal(0, 0.04, 2) * scale
    img = _background(rng, (tex, pixels, moss_rng), size, (h0, w0, sy, sx), centre, options)

    # The plant's colour, and the light: the shadows fall away from it.
    hue = _uniform(rng, options.leaf_hue)
    value = _uniform(rng, options.leaf_value)
    saturation = rng.uniform(0.65, 0.9)
    shadow = _uniform(rng, options.overlap_shadow)
    sigma = max(0.5, 0.006 * dscale * rng.uniform(0.6, 1.6))

    # Neighbours' leaves: unlabelled, entering from the border.
    if rng.uniform() < options.neighbour_leaves:
        other = neighbour_rng
        for _ in range(int(other.integers(1, 6))):
            side = other.uniform(0, 2 * math.pi)
            reach = scale * other.uniform(0.6, 0.85)
            base = centre + reach * np.array([math.cos(side), math.sin(side)])
            length = radius * other.uniform(0.4, 0.9)
            width = length / other.uniform(1.2, 2.0)
            angle = side + math.pi + other.normal(0, 0.6)
            shape = (other.uniform(1, 1.6), other.uniform(0.45, 0.8), other.normal(0, 0.08))
            outline = leaf_outline(base, angle, length, width, 0.3, *shape)
            mask = np.zeros((h, w), np.uint8)
            fill(mask, polygon(to_drawn(outline, sy, sx)), edge)
            shade = (hue + other.normal(0, 6), saturation, value * other.uniform(0.8, 1.1))
            img[mask.astype(bool)] = _hsv_rgb(*shade)

    labels = np.zeros((h, w), np.int32)
    # Leaf k is the k-th to emerge: age 1 for the first (largest, outermost), 0 for the last.
    largest = radius * rng.uniform(0.95, 1.05)
    youngest = _uniform(rng, options.youngest_leaf)
    growth = rng.uniform(1.0, 1.8)
    peak = rng.uniform(0.6, 1.0)  # the age of the largest leaves: the first ones may be smaller
    old_petiole = _uniform(rng, options.petiole)
    phase = rng.uniform(0, 2 * math.pi)
    turn = _GOLDEN_ANGLE if rng.uniform() < 0.5 else -_GOLDEN_ANGLE
    for k in range(num_leaves):
        age = 1.0 - k / max(num_leaves - 1, 1)
        size_of_age = (age / peak) ** growth if age <= peak else 1 - 0.25 * (age - peak)
        length = largest * (youngest + (1 - youngest) * size_of_age) * rng.uniform(0.85, 1.1)
        petiole = old_petiole * age * rng.uniform(0.8, 1.2)
        blade = length * (1 - petiole)
        # Adult leaves are more elongated than juvenile ones.
        width = blade / (_uniform(rng, options.leaf_aspect) * (0.8 + 0.45 * age))
        angle = phase + k * turn + rng.normal(0, 0.12)
        base = centre + rng.normal(0, 0.015, 2) * radius
        outline = leaf_outline(
            base, angle, length, width, petiole, rng.uniform(1.0, 1.6), rng.uniform(0.45, 0.75),
            rng.normal(0, 0.06),
        )  # fmt: skip
        leaf_hue = hue - 6 * (1 - age) + shade_jitter * rng.normal(0, 3)
        leaf_value = value * (1 + 0.12 * (1 - age) + shade_jitter * rng.normal(0, 0.05))
        colour = _hsv_rgb(leaf_hue, saturation + shade_jitter * rng.normal(0, 0.04), leaf_value)
        drawn = to_drawn(outline, sy, sx)
        mask = np.zeros((h, w), np.uint8)
        fill(mask, polygon(drawn), edge)
        tip = base + length * np.array([math.cos(angle), math.sin(angle)])
        axis = (to_drawn(base, sy, sx), to_drawn(tip, sy, sx))
        _paint_leaf(img, mask.astype(bool), colour, axis, petiole, shadow, sigma)
        labels[mask.astype(bool)] = k + 1

    # The camera: exposure, white balance, a light gradient, gamma, blur, sensor noise.
    gains = rng.uniform(*options.brightness) * (1 + rng.normal(0, options.colour_cast, 3))
    slope = options.light_gradient * rng.uniform(-1, 1)
    tilt = rng.uniform(0, 2 * math.pi)
    gamma = rng.uniform(0.8, 1.25)
    blur = _uniform(rng, options.blur) * dscale
    noise = _uniform(rng, options.noise)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * math.cos(tilt) + (yy / h - 0.5) * math.sin(tilt)) * slope
    img *= (gains.astype(np.float32)[None, None, :]) * (1 + ramp)[..., None]
    img = 255 * (np.clip(img, 0, 255) / 255) ** gamma
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += noise_rng.normal(0, noise, img.shape).astype(np.float32)
    masks = labels[None] == np.arange(1, num_leaves + 1)[:, None, None]
    return np.clip(img, 0, 255).astype(np.uint8), masks
