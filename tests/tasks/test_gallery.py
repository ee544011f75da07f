"""make gallery: rosettes beside their label maps, as one picture."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from recattend.data.rosette import RosetteOptions, render_rosette
from recattend.tasks import gallery
from recattend.visualise import PALETTE


def test_label_image_colours_each_leaf_by_its_order() -> None:
    masks = np.zeros((2, 3, 4), bool)
    masks[0, 0, 0] = masks[1, 2, 3] = True
    out = gallery.label_image(masks)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[0, 0] == PALETTE[0]).all() and (out[2, 3] == PALETTE[1]).all()
    assert out.sum() == int(PALETTE[0].sum()) + int(PALETTE[1].sum())  # the rest is black


def test_gallery_pairs_each_image_with_its_labels(tmp_path) -> None:
    # Three pairs two to a row: two rows, the last pair blank. At scale 1 the first tile is the
    # first draw exactly: the image left, its labels right.
    picture = gallery.gallery(3, (40, 50), (3, 5), 0, RosetteOptions(), columns=2, scale=1.0)
    assert picture.shape == (80, 200, 3)
    rng = np.random.default_rng([0, 0])
    image, masks = render_rosette(rng, (40, 50), int(rng.integers(3, 6)))
    assert np.array_equal(picture[:40, :50], image)
    assert np.array_equal(picture[:40, 50:100], gallery.label_image(masks))
    assert not picture[40:, 100:].any()
    out = gallery.main(["--out", str(tmp_path / "g.png"), "--num", "2", "--size", "40", "50"])
    written = cv2.imread(str(out))
    assert written.shape == (16, 80, 3)  # one row of 2 pairs at scale 0.4
    with pytest.raises(SystemExit) as error:
        gallery.main(["--out", str(tmp_path / "g.unknown"), "--num", "1", "--size", "40", "50"])
    assert error.value.code == 2 and not (tmp_path / "g.unknown").exists()
