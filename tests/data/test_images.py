"""Training and prediction read every image file alike (deep images scaled, never clipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from recattend.data.files import read_rgb
from recattend.data.images import read_image, to_display


def test_datasets_read_16_bit_images_as_predict_does(tmp_path: Path) -> None:
    # A 16-bit grey ramp: convert("RGB") would clip every value above 255 to white.
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096 + 257).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    # v / 65535 rounded to 8 bits, in all three channels: hand-computed for the first two pixels.
    assert rgb[0, 0].tolist() == [1, 1, 1] and rgb[0, 1].tolist() == [17, 17, 17]
    assert np.array_equal(rgb, to_display(read_image(tmp_path / "deep.png", 10**6)))
