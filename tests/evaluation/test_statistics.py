"""Output statistics on hand-made label maps: per image, summarised, recorded through the
post-processing, computed from a module, and compared with a checkpoint's."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from recattend.data.rosette import render_rosette
from recattend.evaluation.statistics import (
    APPEARANCE_STATISTICS,
    StatisticsRecorder,
    appearance,
    image_statistics,
    output_statistics,
    reference_summary,
    saved_statistics,
    summarise,
    unlike_training,
)
from tests.evaluation.fakes import FakePostProcess, slots
from tests.metrics.labels import EMPTY, GT_ONE, GT_TWO


def test_image_statistics_by_hand() -> None:
    labels = torch.zeros(4, 4, dtype=torch.int64)
    labels[0, :4] = 1  # 4 px
    labels[1:3, 0] = 2  # 2 px
    stats = image_statistics(labels, torch.tensor([0.9, 0.5]), (30, 60))
    assert stats == pytest.approx(
        {
            "foreground_fraction": 6 / 16,
            "instances": 2.0,
            "mean_score": 0.7,
            "image_area": 1800.0,
            "aspect_ratio": 2.0,  # W / H
        }
    )
    empty = image_statistics(EMPTY, torch.zeros(0), (4, 4))
    assert empty["foreground_fraction"] == 0.0 and empty["instances"] == 0.0
    assert math.isnan(empty["mean_score"])  # no instance, no mean score


def test_summarise_gives_means_and_population_stds_of_plain_floats() -> None:
    rows = [
        image_statistics(GT_TWO, torch.tensor([0.9, 0.7]), (4, 4)),  # fg 1, 2 instances
        image_statistics(GT_ONE, torch.tensor([0.6]), (4, 8)),  # fg 12/16, 1 instance
        image_statistics(EMPTY, torch.zeros(0), (4, 4)),  # fg 0, none
    ]
    summary = summarise(rows)
    assert all(type(v) is float for v in summary.values())
    assert summary == pytest.approx(
        {
            "images": 3.0,
            "foreground_fraction.mean": (1 + 0.75 + 0) / 3,
            "foreground_fraction.std": math.sqrt(
                ((1 - 7 / 12) ** 2 + (1 / 6) ** 2 + (7 / 12) ** 2) / 3
            ),
            "instances.mean": 1.0,
            "instances.std": math.sqrt(2 / 3),
            # Over the two images with instances only: 0.8 and 0.6.
            "mean_score.mean": 0.7,
            "mean_score.std": 0.1,
            "image_area.mean": 16 * 4 / 3,
            "image_area.std": math.sqrt(2 * (16 / 3) ** 2 / 3 + (32 / 3) ** 2 / 3),
            "aspect_ratio.mean": 4 / 3,
            "aspect_ratio.std": math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 3),
        }
    )
    assert "mean_score.mean" not in summarise(rows[2:])  # no image had an instance
    assert summarise([]) == {"images": 0.0}


def test_the_recorder_watches_the_postprocessing_it_wraps() -> None:
    postprocess = FakePostProcess()
    recorder = StatisticsRecorder()
    image = torch.zeros(2, 3, 4, 4)
    out = {
        "masks": torch.stack([slots(GT_TWO, 3), slots(GT_ONE, 3)]),
        "scores": torch.tensor([[0.9, 0.7, 0.1], [0.6, 0.2, 0.1]]),
    }
    # The second image was resized from 8 x 16 to the network's 4 x 4.
    batch = {"image": image, "meta": [{"id": "a"}, {"id": "b", "orig_size": (8, 16)}]}
    results = recorder.recording(postprocess, batch)(out, pixel_area=2.0)
    assert [int(r.labels.max()) for r in results] == [2, 1]  # the results, passed through
    assert postprocess.calls == [{"images": 2, "size": None, "pixel_area": 2.0}]
    assert [(r["instances"], r["image_area"], r["aspect_ratio"]) for r in recorder.rows] == [
        (2.0, 16.0, 1.0),  # at network resolution: no orig_size
        (1.0, 128.0, 2.0),  # its orig_size
    ]
    # One image at its original size (the evaluators' original-resolution path): that size.
    # The images come one by one, in order: the first at 4 x 8, the second at 8 x 16.
    record = recorder.recording(postprocess, batch)
    for i, size in enumerate([(4, 8), (8, 16)]):
        record({k: v[i : i + 1] for k, v in out.items()}, size=size)
    assert [r["image_area"] for r in recorder.rows[-2:]] == [32.0, 128.0]
    assert recorder.rows[-2]["instances"] == 2.0  # GT_TWO, image 0
    assert recorder.rows[-1]["foreground_fraction"] == 0.75  # upsampled GT_ONE
    assert recorder.summary()["images"] == 4.0
    recorder.reset()
    assert recorder.summary() == {"images": 0.0}


class _Fixed(nn.Module):
    """Predicts GT_TWO (scores 0.9, 0.7) for every image, post-processed by FakePostProcess."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.postprocess = FakePostProcess()

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        assert not self.training and not torch.is_grad_enabled()
        b = image.shape[0]
        return {
            "masks": slots(GT_TWO, 3).expand(b, -1, -1, -1),
            "scores": torch.tensor([0.9, 0.7, 0.0]).expand(b, -1),
        }


def test_output_statistics_of_a_module_on_batches() -> None:
    module = _Fixed()
    batches = [
        {"image": torch.zeros(2, 3, 4, 4), "meta": [{}, {"orig_size": (4, 16)}]},
        {"image": torch.zeros(1, 3, 4, 4)},  # no meta: network resolution
    ]
    summary = output_statistics(module, batches)
    assert module.training  # its mode given back
    assert summary == pytest.approx(
        {
            "images": 3.0,
            "foreground_fraction.mean": 1.0,
            "foreground_fraction.std": 0.0,
            "instances.mean": 2.0,
            "instances.std": 0.0,
            "mean_score.mean": 0.8,
            "mean_score.std": 0.0,
            "image_area.mean": 32.0,
            "image_area.std": math.sqrt((16**2 * 2 + 32**2) / 3),
            "aspect_ratio.mean": 2.0,
            "aspect_ratio.std": math.sqrt(2),
            # Black images: every appearance statistic 0.
            **{f"{name}.{what}": 0.0 for name in APPEARANCE_STATISTICS for what in ("mean", "std")},
        }
    )
    # As validation does: the batch's pixel areas given to the post-processing (min_size).
    assert module.postprocess.calls[0]["pixel_area"].tolist() == [1.0, 4.0]


REFERENCE = {
    "images": 40.0,
    "foreground_fraction.mean": 0.2,
    "foreground_fraction.std": 0.01,  # below its floor: 0.05 counts, so 0.15 away is allowed
    "instances.mean": 5.0,
    "instances.std": 2.0,  # 6 away allowed
    "mean_score.mean": 0.8,
    "mean_score.std": 0.1,  # 0.3 away allowed
    "image_area.mean": 128.0 * 128.0,
    "aspect_ratio.mean": 1.0,
}


def _stats(fg: float = 0.2, k: float = 5, score: float = 0.8, h: int = 128, w: int = 128):
    return {
        "foreground_fraction": fg,
        "instances": float(k),
        "mean_score": score,
        "image_area": float(h * w),
        "aspect_ratio": w / h,
    }


def test_unlike_training_names_each_statistic_out_of_range() -> None:
    net = (64, 64)  # the network's resolution: only used without statistics
    assert unlike_training(_stats(), REFERENCE, net) == []
    # Just inside every bound (3 std, std at least its floor; area 64x; aspect 2x).
    inside = [_stats(fg=0.34), _stats(k=11), _stats(score=0.51), _stats(h=1024, w=1024)]
    inside += [_stats(h=16, w=16), _stats(h=128, w=256), _stats(h=92, w=46)]
    assert all(unlike_training(s, REFERENCE, net) == [] for s in inside)
    assert unlike_training(_stats(fg=0.36), REFERENCE, net) == [
        "foreground fraction 0.36 vs 0.20±0.01"
    ]
    assert unlike_training(_stats(k=12), REFERENCE, net) == ["12 instances vs 5.0±2.0"]
    assert unlike_training(_stats(score=0.45), REFERENCE, net) == ["mean score 0.45 vs 0.80±0.10"]
    assert unlike_training(_stats(h=3000, w=4000), REFERENCE, net) == [
        "size 4000x3000 vs about 128x128"
    ]
    assert unlike_training(_stats(h=15, w=15), REFERENCE, net) == ["size 15x15 vs about 128x128"]
    assert unlike_training(_stats(h=100, w=210), REFERENCE, net) == [
        "size 210x100 vs about 128x128"  # the same area, but more than twice as wide
    ]
    # No image had an instance: its mean score is not compared.
    assert unlike_training(_stats(k=5, score=math.nan), REFERENCE, net) == []
    # A flat white image: the whole image one object, with a low score.
    flat = _stats(fg=1.0, k=1, score=0.3)
    assert len(unlike_training(flat, REFERENCE, net)) == 2  # foreground and score; 1 of 5±2 is fine


def test_without_statistics_only_the_size_is_compared_with_the_network() -> None:
    assert unlike_training(_stats(fg=1.0, k=99, h=128, w=128), None, (64, 64)) == []
    assert unlike_training(_stats(h=513, w=512), None, (64, 64)) == ["size 512x513 vs about 64x64"]
    assert reference_summary(None, (32, 48)) == "network input: 48x32"
    assert reference_summary(REFERENCE, (32, 48)) == (
        "validation images: about 128x128, foreground fraction 0.20±0.01, 5.0±2.0 instances, "
        "mean score 0.80±0.10"
    )


def test_saved_statistics_are_plain_floats_or_none() -> None:
    assert saved_statistics({"output_statistics": {"images": 3, "instances.mean": 2}}) == {
        "images": 3.0,
        "instances.mean": 2.0,
    }
    assert saved_statistics({"state_dict": {}}) is None  # written before they were recorded
    assert saved_statistics({"output_statistics": {"images": "many"}}) is None


def test_appearance_by_hand() -> None:
    # Left half pure red, right half black: channel means 0.5 / 0 / 0; luminance 0.299 and 0,
    # so contrast 0.1495 (half at each); colourfulness 0.5 (1 on the red half); one edge
    # between columns 1 and 2 of a 4x4 image: across 0.299 / 3 per row, nothing down.
    image = torch.zeros(3, 4, 4)
    image[0, :, :2] = 1.0
    stats = appearance(image)
    assert stats == pytest.approx(
        {"red": 0.5, "green": 0.0, "blue": 0.0, "contrast": 0.1495, "colourfulness": 0.5,
         "edges": (0.299 / 3 + 0.0) / 2}
    )  # fmt: skip
    labels = torch.zeros(4, 4, dtype=torch.int64)
    assert image_statistics(labels, torch.zeros(0), (4, 4), image)["red"] == 0.5
    assert "red" not in image_statistics(labels, torch.zeros(0), (4, 4))


def _network_input(picture: np.ndarray) -> Tensor:
    small = cv2.resize(picture, (64, 64), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).float() / 255


def test_images_of_another_kind_are_unlike_rosettes() -> None:
    # The reference: 48 synthetic rosettes as validation would record them. Other rosettes pass;
    # a page of text, a clear sky and a night shot do not, on their looks alone.
    labels, none = torch.zeros(4, 4, dtype=torch.int64), torch.zeros(0)

    def stats(picture: np.ndarray) -> dict[str, float]:
        return image_statistics(labels, none, picture.shape[:2], _network_input(picture))

    def rosette(seed: int, i: int) -> np.ndarray:
        return render_rosette(np.random.default_rng([seed, i]), (200, 212), 12)[0]

    reference = summarise(stats(rosette(0, i)) for i in range(48))
    others = [unlike_training(stats(rosette(1, i)), reference, (64, 64)) for i in range(10)]
    assert sum(bool(reasons) for reasons in others) <= 1, others
    page = np.full((200, 212, 3), 245, np.uint8)
    for y in range(20, 190, 12):
        cv2.line(page, (20, y), (190, y), (20, 20, 20), 2)
    sky = np.zeros((200, 212, 3), np.uint8)
    sky[:] = (90, 150, 230)
    night = np.random.default_rng(0).normal(15, 4, (200, 212, 3)).clip(0, 255).astype(np.uint8)
    for name, picture, expected in (
        ("page", page, "mean blue"), ("sky", sky, "mean blue"), ("night", night, "contrast"),
    ):  # fmt: skip
        reasons = unlike_training(stats(picture), reference, (64, 64))
        assert any(r.startswith(expected) for r in reasons), (name, reasons)
