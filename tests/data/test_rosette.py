"""The rosette generator (dataset.style=leaves): leaf geometry, the plant's layering, parts that
change only themselves, its knobs' validation, and its statistics against real plants'."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from recattend.data import SyntheticDataModule
from recattend.data.fixtures import write_cvppp
from recattend.data.rosette import RosetteOptions, leaf_outline, render_rosette
from recattend.tasks import rosette_stats
from recattend.tasks.rosette_stats import elongation, image_statistics, summarise
from tests.helpers import CONF

# Fixed camera and light, so that two draws differ only where the scene does.
STILL = dict(blur=(0.0, 0.0), noise=(0.0, 0.0))


def test_leaf_outline_is_a_stalk_then_a_blade() -> None:
    # Base (10, 20), pointing along +x, 100 long, 40 wide, 30 % stalk, widest at mid-blade (p = 1),
    # pointed profile (q = 1), straight.
    out = leaf_outline(np.array([10.0, 20.0]), 0.0, 100.0, 40.0, 0.3, 1.0, 1.0, 0.0)
    x, y = out[:, 0], out[:, 1]
    assert x.min() == pytest.approx(10) and x.max() == pytest.approx(110)
    assert np.allclose(y - 20, -(y[::-1] - 20)), "symmetric about the axis"
    # The stalk: half-width 0.07 * 40 = 2.8 from the base to x = 40.
    stalk = (x >= 10) & (x <= 40)
    assert np.abs(y[stalk] - 20).max() == pytest.approx(2.8)
    # The blade: half-width 20 * sin(pi s) at s = (x - 40) / 70, widest (20) at x = 75.
    widest = np.argmax(y)
    assert x[widest] == pytest.approx(75, abs=70 / 31) and y[widest] - 20 == pytest.approx(20, 0.01)
    # Turned by 90 degrees, the same leaf points along +y.
    turned = leaf_outline(np.array([10.0, 20.0]), math.pi / 2, 100.0, 40.0, 0.3, 1.0, 1.0, 0.0)
    assert np.allclose(turned[:, 1] - 20, x - 10) and np.allclose(turned[:, 0] - 10, -(y - 20))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_young_leaves_are_small_central_and_on_top() -> None:
    youngest, oldest, centre_distance, reach = [], [], [], []
    for seed in range(12):
        opts = RosetteOptions(**STILL, neighbour_leaves=0.0)
        image, masks = render_rosette(np.random.default_rng(seed), (200, 200), 14, options=opts)
        assert masks.shape == (14, 200, 200) and image.shape == (200, 200, 3)
        centre = _centroid(masks.any(0))
        youngest.append(masks[-1].sum())
        oldest.append(masks[: len(masks) // 3].sum((1, 2)).max())
        centre_distance.append(np.hypot(*(_centroid(masks[-1]) - centre)))
        reach.append(max(np.hypot(*(_centroid(m) - centre)) for m in masks[:4] if m.any()))
    # Drawn last, the youngest leaf is never hidden; it is a few times smaller than the old ones
    # and lies nearer the centre.
    assert min(youngest) > 0
    assert np.median(np.array(oldest) / np.array(youngest)) > 4
    assert np.median(np.array(centre_distance) / np.array(reach)) < 0.5


def test_parts_switched_on_or_off_change_only_their_pixels() -> None:
    def draw(**knobs) -> tuple[np.ndarray, np.ndarray]:
        options = RosetteOptions(**STILL, **knobs)
        return render_rosette(np.random.default_rng(3), (160, 170), 12, options=options)

    base_image, base_masks = draw(neighbour_leaves=0.0, moss=0.0)
    for knobs in ({"neighbour_leaves": 1.0, "moss": 0.0}, {"neighbour_leaves": 0.0, "moss": 1.0}):
        image, masks = draw(**knobs)
        # The same plant, labelled the same: neighbours' leaves are in no mask, moss is soil.
        assert np.array_equal(masks, base_masks), knobs
        changed = (image != base_image).any(-1)
        assert changed.sum() > 100, knobs
        assert not (changed & masks.any(0)).any(), f"{knobs} changed the plant's pixels"


def _narrow_share(petiole: float) -> float:
    """The share of a lone old leaf's length (along its main axis) where its label is at most a
    quarter of its greatest width, drawn at 300x300."""
    options = RosetteOptions(**STILL, petiole=(petiole, petiole), neighbour_leaves=0.0)
    _, masks = render_rosette(np.random.default_rng(0), (300, 300), 1, options=options)
    points = np.stack(np.nonzero(masks[0]), axis=1).astype(float)
    points -= points.mean(0)
    axis = np.linalg.eigh(np.cov(points.T))[1][:, -1]
    along = np.floor(points @ axis).astype(int)
    widths = np.bincount(along - along.min())
    return float((widths <= widths.max() / 4).mean())


def test_a_leaf_is_labelled_with_its_stalk() -> None:
    # The label's thin part (the stalk, and the blade's tapering ends) grows with the stalk's
    # share of the leaf (drawn at 0.8-1.2 times the knob): a stalkless leaf has almost none.
    shares = [_narrow_share(p) for p in (0.0, 0.3, 0.6)]
    assert shares[0] < 0.15 and 0.25 < shares[1] < 0.55 and 0.55 < shares[2] < 0.85, shares


def test_options_from_config_check_every_knob() -> None:
    assert RosetteOptions.from_config(None) == RosetteOptions()
    options = RosetteOptions.from_config({"moss": 0, "plant_extent": [0.3, 0.5]})
    assert options.moss == 0.0 and options.plant_extent == (0.3, 0.5)
    assert dataclasses.replace(options, moss=0.5, plant_extent=(0.55, 0.95)) == RosetteOptions()
    bad = [
        ({"mos": 0.2}, r"dataset\.rosette\.mos: no such knob \(did you mean moss\?\)"),
        ({"moss": 1.5}, r"dataset\.rosette\.moss=1\.5 must be a number in \[0\.0, 1\.0\]"),
        ({"moss": True}, r"dataset\.rosette\.moss=True must be a number"),
        ({"moss": 10**400}, r"dataset\.rosette\.moss=.* must be a number"),
        ({"blur": {0.0: 1, 0.001: 2}}, r"dataset\.rosette\.blur=.* must be a range"),
        ({"blur": {0.0, 0.001}}, r"dataset\.rosette\.blur=.* must be a range"),
        ({"blur": "0,1"}, r"dataset\.rosette\.blur=.* must be a range"),
        ({"blur": [0.01, 0.0]}, r"dataset\.rosette\.blur=.* low <= high"),
        ({"leaf_hue": 90}, r"dataset\.rosette\.leaf_hue=90 must be a range \[low, high\]"),
        ({"colour_cast": [0, 1]}, r"dataset\.rosette\.colour_cast=.* a number in \[0\.0, 0\.5\]"),
        ({"plant_extent": [0.2, float("nan")]}, r"dataset\.rosette\.plant_extent"),
    ]
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            RosetteOptions.from_config(values)
    # Built directly, the options are checked too; a range may be any sequence, ListConfig too.
    with pytest.raises(ValueError, match=r"dataset\.rosette\.petiole=\(0\.5, 0\.2\)"):
        RosetteOptions(petiole=(0.5, 0.2))
    assert RosetteOptions(noise=OmegaConf.create([1, 2])).noise == (1.0, 2.0)
    # The DataModule checks them when it is built, not at the first batch.
    with pytest.raises(ValueError, match=r"dataset\.rosette\.pots: no such knob"):
        SyntheticDataModule(
            resolution=[32, 32], max_instances=4, batch_size=2, rosette={"pots": 0.5}
        )


# The statistics tool.


def test_image_statistics_by_hand() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[..., 1] = 200  # green leaves ...
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 1:3, 1:3] = True  # a 2x2 square: elongation 1
    masks[1, 5:7, 2:6] = True  # a 2x4 bar: coordinate variances 10/7 and 2/7, sqrt(5)
    image[~masks.any(0)] = (90, 60, 30)  # ... on brown; the third mask is empty (hidden)
    stats = image_statistics(image, masks)
    assert stats["leaves"] == 2 and stats["plant fraction"] == pytest.approx(0.12)
    assert stats["extent / width"] == pytest.approx(0.6)  # rows 1-6, columns 1-5: 6 of 10
    assert stats["smallest leaf"] == pytest.approx(0.04)
    assert stats["median leaf"] == pytest.approx(0.06)
    assert stats["largest leaf"] == pytest.approx(0.08)
    assert elongation(masks[1]) == pytest.approx(math.sqrt(5))
    assert stats["elongation"] == pytest.approx((1 + math.sqrt(5)) / 2)
    assert np.allclose(stats["leaf colour"], (0, 200, 0))
    assert np.allclose(stats["background colour"], (90, 60, 30))
    rows = [{"leaves": n, "leaf colour": np.array([n, 0, 0])} for n in range(1, 12)]
    summary = summarise(rows)
    assert summary["leaves"] == pytest.approx((2, 6, 10))  # p10 / median / p90 of 1..11
    assert summary["leaf colour"] == pytest.approx((6, 0, 0))


def test_the_default_generator_matches_real_plants_medians() -> None:
    # The defaults were chosen so that each median lies within the real plants' p10-p90.
    rows = rosette_stats.synthetic(24, (250, 265), (11, 20), 0, RosetteOptions())
    ours = summarise(rows)
    for key in ("plant fraction", "extent / width", "median leaf", "largest leaf", "elongation"):
        low, _, high = rosette_stats.REAL_A1[key]
        assert low <= ours[key][1] <= high, (key, ours[key])


def test_the_command_prints_the_table_and_measures_a_cvppp_folder(tmp_path, capsys) -> None:
    truth = write_cvppp(tmp_path / "A1", [1, 2, 3], size=(64, 72))
    out = rosette_stats.main(
        ["--num", "2", "--size", "64", "72", "--cvppp", str(tmp_path / "A1"), "--knob", "moss=0"]
    )
    assert out == capsys.readouterr().out.strip()
    header, rule, *rows = out.splitlines()
    assert header.count("|") == 5 and "real A1 (96 plants)" in header
    assert str(tmp_path / "A1") in header
    leaves = next(r for r in rows if r.startswith("| leaves |")).split("|")
    counts = sorted(len(m) for m in truth.values())
    expected = np.percentile(counts, [10, 50, 90])
    assert leaves[-2].strip() == " / ".join(f"{v:.0f}" for v in expected)
    with pytest.raises(SystemExit) as error:
        rosette_stats.main(["--num", "1", "--knob", "mos=0"])
    assert error.value.code == 2
    assert "did you mean moss" in capsys.readouterr().err


def test_the_config_lists_every_knob_at_its_default() -> None:
    # conf/dataset/synthetic.yaml documents the knobs: each at the dataclass's default, so the
    # statistics, the gallery and training draw the same rosettes.
    listed = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "synthetic.yaml").rosette)
    defaults = dataclasses.asdict(RosetteOptions())
    assert listed.keys() == defaults.keys()
    assert RosetteOptions.from_config(listed) == RosetteOptions()
