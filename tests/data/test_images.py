"""Training and prediction read every image file alike (deep images scaled, never clipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from recattend.data.files import image_size, read_rgb
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


def test_a_phone_photo_is_read_as_a_viewer_shows_it(tmp_path: Path) -> None:
    # Stored 2 rows x 4 columns: left half red, right half blue. EXIF orientation 6 means
    # "turn 90 degrees clockwise to show it": shown 4 rows x 2 columns, red on top (the stored
    # left edge becomes the top), blue below.
    stored = np.zeros((2, 4, 3), np.uint8)
    stored[:, :2] = (255, 0, 0)
    stored[:, 2:] = (0, 0, 255)
    image = Image.fromarray(stored).resize((64, 32), Image.NEAREST)  # JPEG blocks stay flat
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    image.save(path, quality=100, exif=exif)
    for read in (read_rgb, lambda p: read_image(p, max_pixels=10_000)):
        shown = read(path)
        assert shown.shape == (64, 32, 3)
        top, bottom = shown[:32].reshape(-1, 3).mean(0), shown[32:].reshape(-1, 3).mean(0)
        assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    # The datasets' header check sees the same size (a label map must match the shown image).
    assert image_size(path) == (64, 32)
    # Without the tag the stored grid is what is read.
    image.save(tmp_path / "plain.jpg", quality=100)
    assert read_rgb(tmp_path / "plain.jpg").shape == (32, 64, 3)
