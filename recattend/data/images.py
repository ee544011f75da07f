"""Image files read faithfully for prediction: every PIL mode scaled to [0, 1] by its real range.

:func:`read_image` returns (H, W, 3) RGB pixels: ``uint8`` (0..255) for the modes of 8 bits or
fewer per channel, ``float32`` in [0, 1] for the deeper ones, whose values ``convert("RGB")``
would clip at 255. What each PIL mode becomes:

* ``1`` (1-bit): 0 and 255 (black, white), grey in all three channels;
* ``L`` (8-bit grey): the grey value in all three channels;
* ``LA``, ``PA``, ``RGBA``, ``RGBa``: the alpha channel is dropped (not composited): a
  transparent pixel reads as the colour stored under it, as the datasets read RGBA images
  (:func:`recattend.data.files.read_rgb`), so that prediction sees what training saw;
* ``P`` (palette): each index's palette colour (its transparency dropped likewise);
* ``RGB``, ``RGBX``: as stored; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB;
* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey, e.g. 16-bit PNG and TIFF): value /
  65535 in all three channels; a 12-bit camera image stored in 16 bits (0..4095) therefore reads
  dark, as in any viewer: its range is the file's, not stretched per image;
* ``I`` (32-bit integer; how PIL holds 16-bit PGM/PPM, rescaled from their maxval, and integer
  TIFFs): value / 65535 when every value lies in 0..65535 (16-bit data), else refused;
* ``F`` (32-bit float): taken as is when every value lies in [0, 1], else refused (no known
  range);
* any other mode PIL cannot convert to RGB (e.g. ``La``) is refused.

A refused image raises :class:`UnsupportedImageError` (a ``ValueError``, so it is one of
:data:`~recattend.data.files.READ_ERRORS`). 16-bit RGB(A) PNGs are decoded by PIL to 8 bits per
channel (their high bytes: the range is right, the low bits are lost). Only the first frame of
a multi-frame file (GIF, TIFF stack) is read. An EXIF orientation (a phone photo's JPEG; any
format but PNG) is applied,
so every output is the image as a viewer shows it; training, evaluation and prediction read
alike, and a dataset's label map must be in that orientation too (:func:`upright_size`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# The EXIF tag of the orientation, and its values that turn the image by 90 degrees (width and
# height swap when it is shown).
ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)


class UnsupportedImageError(ValueError):
    """An image PIL decodes but whose values have no known range (or no RGB conversion)."""


def read_image(path: Path, max_pixels: int) -> np.ndarray:
    """(H, W, 3) RGB of an image file: ``uint8`` for 8-bit modes, ``float32`` in [0, 1] for
    deeper ones (module docstring: what each PIL mode becomes).

    Raises:
        UnsupportedImageError: values without a known range, or a mode without RGB conversion.
        OSError, SyntaxError, Image.DecompressionBombError: not decodable, or more than
            ``max_pixels`` pixels (PIL refuses it while decoding).
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses anything larger while decoding too
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncation shows here
            return image_array(image)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def transparent_fraction(path: Path) -> float:
    """The share of an image file's pixels that are not fully opaque (8-bit alpha below 255,
    or a palette's or grey image's transparent value); 0 for an image without transparency."""
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            alpha = np.asarray(image.getchannel("A"))
        elif "transparency" in image.info:
            alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        else:
            return 0.0
    return float((alpha < 255).mean())


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1: as stored), read without decoding its pixels.
    PNG's rare EXIF chunk is not read: it may follow the pixels, and reading it would decode
    every file of a dataset's header check."""
    if image.format == "PNG":
        return 1
    return int(image.getexif().get(ORIENTATION, 1))


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) of an opened image as a viewer shows it: the stored size, swapped when its EXIF
    orientation turns it by 90 degrees. Read from the header, without decoding the pixels."""
    turned = orientation(image) in TURNED
    return (image.width, image.height) if turned else (image.height, image.width)


def image_array(image: Image.Image) -> np.ndarray:
    """:func:`read_image` on a decoded PIL image, its EXIF orientation applied."""
    if orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):  # never convert("RGB"): it clips at 255
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise UnsupportedImageError(
                f"mode {mode} with values {low}..{high}: only 0..65535 (16-bit data) has a known "
                "range; save the image with 8 or 16 bits per channel"
            )
        grey = values.astype(np.float32) / np.float32(65535)  # v < 2**24: one rounding
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and not (
            np.isfinite(values).all() and 0 <= values.min() <= values.max() <= 1
        ):
            raise UnsupportedImageError(
                f"mode F (32-bit float) with values {values.min()}..{values.max()}: only [0, 1] "
                "has a known range; save the image with 8 or 16 bits per channel"
            )
        grey = values
    else:
        try:
            return np.asarray(image.convert("RGB"))
        except ValueError as err:  # PIL: "conversion from La to RGB not supported"
            raise UnsupportedImageError(f"mode {mode}: {err}") from err
    return np.repeat(grey[:, :, None], 3, axis=2)


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) ``uint8`` of a :func:`read_image` array (deeper values rounded to 8 bits)."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.asarray(image, np.float32) * 255).astype(np.uint8)


def network_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A :func:`read_image` array resized to ``size`` (H, W) bicubically: (H, W, 3) ``float32``
    in [0, 1].

    ``uint8`` images are resized as 8-bit values and then divided by 255, exactly as the
    datasets feed the network (the result saturates at 0 and 255); ``float32`` ones are resized
    as they are and clipped to [0, 1] (bicubic overshoots at edges) — the same values as their
    8-bit equivalent up to the 8-bit rounding of the resized values, identical at the network's
    own size (e.g. a 16-bit ``v * 257`` and an 8-bit ``v``).
    """
    height, width = size
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    if image.dtype == np.uint8:
        return resized.astype(np.float32) / 255
    return np.clip(resized, 0.0, 1.0)
