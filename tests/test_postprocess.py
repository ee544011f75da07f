"""Post-processing into label maps on hand-made soft masks with hand-computed labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recattend.postprocess import (
    PostProcess,
    bilateral_blur,
    image_instances,
    relabel_consecutive,
    stop_outputs,
)

# Score weighting, argmax and threshold only: the hand computations of the first tests.
RAW = PostProcess(blur=False)


def label_map(
    masks: torch.Tensor,
    scores: torch.Tensor,
    settings: PostProcess = PostProcess(),  # noqa: B008 (frozen)
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(B, H, W) the instance labels the post-processing gives each image, stacked."""
    results = settings({"masks": masks, "scores": scores}, size)
    return torch.stack([result.labels for result in results])


def test_score_weighting_decides_the_winner() -> None:
    # One pixel, two timesteps. Raw masks: y_0 = 0.9 > y_1 = 0.6, so unweighted t=0 would win.
    # Weighted: y_0 * s_0 = 0.9 * 0.5 = 0.45 < y_1 * s_1 = 0.6 * 1.0 = 0.6, so t=1 wins; t=0 keeps
    # no pixel, hence t=1 is the first (and only) instance: label 1.
    masks = torch.tensor([0.9, 0.6]).view(1, 2, 1, 1)
    scores = torch.tensor([[0.5, 1.0]])
    out = label_map(masks, scores, RAW)
    assert out.dtype == torch.int64 and out.shape == (1, 1, 1)
    assert out.item() == 1
    # Label 1 alone cannot tell t=0 from t=1, so add a second pixel only t=0 covers:
    # pixel 0: 0.45 vs 0.6 -> t=1; pixel 1: 0.9 * 0.5 = 0.45 vs 0.0 -> t=0.
    # Both timesteps present, numbered in timestep order: t=0 -> 1, t=1 -> 2.
    masks = torch.tensor([[0.9, 0.9], [0.6, 0.0]]).view(1, 2, 1, 2)
    out = label_map(masks, torch.tensor([[0.5, 1.0]]), RAW)
    assert out.tolist() == [[[2, 1]]]
    # Unweighted (equal scores), t=0 wins pixel 0 as well (0.9 > 0.6): one instance only.
    assert label_map(masks, torch.ones(1, 2), RAW).tolist() == [[[1, 1]]]


def test_threshold_is_strict_and_drops_weak_pixels() -> None:
    # One timestep with s = 1, pixel values 0.2, 0.3, 0.31, 0.8.
    # Default threshold 0.3 (strict >): 0.2 and 0.3 -> background, 0.31 and 0.8 -> instance 1.
    masks = torch.tensor([0.2, 0.3, 0.31, 0.8]).view(1, 1, 1, 4)
    scores = torch.ones(1, 1)
    assert label_map(masks, scores, RAW).tolist() == [[[0, 0, 1, 1]]]
    # Cityscapes threshold 0.6: only 0.8 survives.
    cityscapes = PostProcess(blur=False, threshold=0.6)
    assert label_map(masks, scores, cityscapes).tolist() == [[[0, 0, 0, 1]]]
    # A low score pushes every pixel under the threshold: 0.8 * 0.3 = 0.24 <= 0.3.
    assert label_map(masks, torch.tensor([[0.3]]), RAW).tolist() == [[[0, 0, 0, 0]]]


def test_empty_timesteps_get_no_label_and_labels_are_consecutive_in_timestep_order() -> None:
    # T = 4 on a 1x3 image, all scores 1:
    #   t=0: all zero            -> below the threshold everywhere
    #   t=1: 0.9 on pixel 2
    #   t=2: 0.5 on pixels 0..2
    #   t=3: 0.7 on pixel 0
    # Pixel 0: max(0, 0, 0.5, 0.7) -> t=3; pixel 1: max(0, 0, 0.5, 0) -> t=2;
    # pixel 2: max(0, 0.9, 0.5, 0) -> t=1.
    # Present timesteps in order: 1, 2, 3 -> labels 1, 2, 3 (t=0 gets none).
    masks = torch.zeros(1, 4, 1, 3)
    masks[0, 1, 0, 2] = 0.9
    masks[0, 2, 0, :] = 0.5
    masks[0, 3, 0, 0] = 0.7
    assert label_map(masks, torch.ones(1, 4), RAW).tolist() == [[[3, 2, 1]]]
    # Now t=2 also loses pixel 1 (t=3 covers it at 0.7): t=2 ends up empty, so t=3 becomes 2.
    masks[0, 3, 0, 1] = 0.7
    assert label_map(masks, torch.ones(1, 4), RAW).tolist() == [[[2, 2, 1]]]
    # The slot map keeps the output slots (t + 1), and the instances their slots' scores.
    slots = RAW.slots(masks, torch.tensor([[0.9, 0.8, 0.7, 1.0]]))
    # Weighted: pixel 0, 1: t=3 (0.7) vs t=2 (0.35) -> slot 4; pixel 2: t=1 (0.72) -> slot 2.
    assert slots.tolist() == [[[4, 4, 2]]]
    result = image_instances(slots[0], torch.tensor([0.9, 0.8, 0.7, 1.0]))
    assert result.labels.tolist() == [[2, 2, 1]]
    assert result.scores.tolist() == pytest.approx([0.8, 1.0])  # slots 2 and 4 in order


def test_batch_images_are_independent() -> None:
    # Random soft masks, every switch that acts per image on: the batched result equals the
    # single-image results stacked.
    torch.manual_seed(0)
    masks = torch.rand(3, 4, 5, 6)
    scores = torch.rand(3, 4)
    settings = PostProcess(dilate=3, min_size=4)
    batched = label_map(masks, scores, settings, size=(7, 9))
    singles = torch.cat(
        [label_map(masks[i : i + 1], scores[i : i + 1], settings, (7, 9)) for i in range(3)]
    )
    assert batched.shape == (3, 7, 9) and torch.equal(batched, singles)
    # Image a uses only t=2, image b uses t=0 (top row) and t=1 (bottom row): each image is
    # numbered from 1 on its own, so a's t=2 is 1 although b holds two instances.
    a = torch.zeros(1, 3, 2, 2)
    a[0, 2] = 0.9
    b = torch.zeros(1, 3, 2, 2)
    b[0, 0, 0] = 0.9
    b[0, 1, 1] = 0.9
    out = label_map(torch.cat([a, b]), torch.ones(2, 3), RAW)
    assert out[0].tolist() == [[1, 1], [1, 1]]
    assert out[1].tolist() == [[1, 1], [2, 2]]


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="scores"):
        label_map(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([[0, 7, 9], [9, 0, 7]], [[0, 1, 2], [2, 0, 1]]),  # gaps: 7 -> 1, 9 -> 2
        ([[100, 0], [101, 102]], [[1, 0], [2, 3]]),  # offset +99: order kept
        ([[3, 1], [2, 0]], [[3, 1], [2, 0]]),  # already consecutive: unchanged
        ([[5, 5], [5, 5]], [[1, 1], [1, 1]]),  # no background at all
        ([[0, 0], [0, 0]], [[0, 0], [0, 0]]),  # background only
    ],
)
def test_relabel_consecutive(labels: list[list[int]], expected: list[list[int]]) -> None:
    out = relabel_consecutive(torch.tensor(labels, dtype=torch.int32))
    assert out.dtype == torch.int64
    assert out.tolist() == expected


# ------------------------------------------------------------------------------------------ blur
# With sigma_space = sigma_colour = 10, one unit of squared distance and one unit of squared value
# difference both weigh a = exp(-1/200). The diameter-5 window is the disc r^2 <= 4: the centre
# (weight 1), 4 pixels at r^2 = 1 (a), 4 at r^2 = 2 (a^2), 4 at r^2 = 4 (a^4); its spatial sum is
# S = 1 + 4a + 4a^2 + 4a^4 (= 12.86104).
A = math.exp(-1 / 200)
S = 1 + 4 * A + 4 * A**2 + 4 * A**4


def test_blur_of_a_single_bright_pixel_by_hand() -> None:
    image = torch.zeros(7, 7)
    image[3, 3] = 1.0
    out = bilateral_blur(image)
    assert out.shape == (7, 7) and out.dtype == torch.float32
    expected = {
        # The bright pixel itself: its 12 dark neighbours differ by 1, colour weight a each.
        (3, 3): 1 / (1 + A * (S - 1)),  # 0.078113
        # A dark pixel sees the bright one at r^2 = d (spatial a^d, colour a); the rest, dark like
        # itself, keep their spatial weights: a^(d+1) / (S - a^d + a^(d+1)).
        (3, 4): A**2 / (S - A + A**2),  # d = 1: 0.077010
        (2, 2): A**3 / (S - A**2 + A**3),  # d = 2: 0.076626
        (3, 5): A**5 / (S - A**4 + A**5),  # d = 4: 0.075863
        (4, 5): 0.0,  # r^2 = 5: outside the disc (a 5 x 5 square would reach it)
        (1, 1): 0.0,  # r^2 = 8: the square's corner, outside too
        (0, 0): 0.0,
    }
    for (y, x), value in expected.items():
        assert out[y, x].item() == pytest.approx(value, abs=1e-7), (y, x)


def test_blur_mirrors_the_border_about_the_edge_pixel_by_hand() -> None:
    # Bright pixel at (0, 1) on the top edge of a 5 x 5 map. BORDER_REFLECT_101 mirrors column -1
    # onto column 1 and row -1 onto row 1 (the edge pixel itself is not repeated).
    image = torch.zeros(5, 5)
    image[0, 1] = 1.0
    out = bilateral_blur(image)
    # (0, 0): the offsets (0, +1) and (0, -1) (mirrored) both land on the bright pixel: twice the
    # interior value, 2a^2 / (S - 2a + 2a^2) = 0.154080.
    assert out[0, 0].item() == pytest.approx(2 * A**2 / (S - 2 * A + 2 * A**2), abs=1e-7)
    # (0, 1), the bright pixel: offset (0, -2) lands on column -1, mirrored onto itself (spatial
    # a^4, colour 1); its 11 other neighbours are dark (colour a):
    # (1 + a^4) / (1 + a^4 + a (S - 1 - a^4)) = 0.154620.
    self_twice = (1 + A**4) / (1 + A**4 + A * (S - 1 - A**4))
    assert out[0, 1].item() == pytest.approx(self_twice, abs=1e-7)
    # (1, 1), below it: row -1 mirrors onto row 1, never row 0, so just the interior value.
    assert out[1, 1].item() == pytest.approx(A**2 / (S - A + A**2), abs=1e-7)


def test_blur_matches_opencv_and_keeps_dtype() -> None:
    import cv2

    rng = np.random.default_rng(0)
    for shape in [(9, 11), (2, 3), (1, 4), (1, 1)]:
        image = rng.random(shape).astype(np.float32)
        expected = cv2.bilateralFilter(image, 5, 10, 10)
        got = bilateral_blur(torch.from_numpy(image)).numpy()
        assert np.abs(got - expected).max() < 1e-6, shape
    # Constant maps are unchanged; a float64 batch of maps stays float64.
    flat = torch.full((2, 3, 6, 5), 0.25, dtype=torch.float64)
    out = bilateral_blur(flat)
    assert out.dtype == torch.float64 and torch.allclose(out, flat)


# -------------------------------------------------------------------------------------- dilation
def test_dilating_each_soft_map_before_the_argmax_by_hand() -> None:
    # Two soft maps on a 1 x 4 row, scores 1, threshold 0.3, no blur:
    #   t=0: [0.9, 0,   0,   0  ]
    #   t=1: [0,   0.4, 0.4, 0  ]
    # Without dilation: [1, 2, 2, 0].
    masks = torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.4, 0.4, 0.0]]).view(1, 2, 1, 4)
    scores = torch.ones(1, 2)
    assert label_map(masks, scores, RAW).tolist() == [[[1, 2, 2, 0]]]
    # 3-wide max filter of each map (the row is the whole window's height):
    #   t=0: [0.9, 0.9, 0,   0  ]
    #   t=1: [0.4, 0.4, 0.4, 0.4]
    # Argmax: pixel 1 goes to t=0 (0.9 > 0.4), pixel 3 to t=1: [1, 1, 2, 2].
    per_map = PostProcess(blur=False, dilate=3)
    assert label_map(masks, scores, per_map).tolist() == [[[1, 1, 2, 2]]]
    # Dilating the label map after the argmax instead (grow each instance into background, the
    # larger id winning) leaves pixel 1 to instance 2 and grows 2 into pixel 3: [1, 2, 2, 2].
    labels = label_map(masks, scores, RAW)[0].float()
    grown = torch.nn.functional.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0]
    after = torch.where(labels > 0, labels, grown).long()
    assert after.tolist() == [[1, 2, 2, 2]]
    # KITTI's 5 x 5: t=0's 0.9 reaches two pixels each side, so t=0 also takes pixel 2
    # (0.9 > 0.4): [1, 1, 1, 2].
    kitti = PostProcess(blur=False, dilate=5)
    assert label_map(masks, scores, kitti).tolist() == [[[1, 1, 1, 2]]]


# ------------------------------------------------------------------------------------ stop rules
def test_stop_rules_agree_while_every_score_is_high() -> None:
    torch.manual_seed(1)
    masks = torch.rand(2, 5, 6, 7)
    scores = 0.5 + 0.5 * torch.rand(2, 5)  # every s_t >= 0.5
    for blur, dilate in ((False, 0), (True, 5)):
        weighted = PostProcess(blur=blur, dilate=dilate, stop_rule="weighted")
        first_below = PostProcess(blur=blur, dilate=dilate, stop_rule="first_below")
        assert torch.equal(weighted.slots(masks, scores), first_below.slots(masks, scores))


def test_stop_rules_differ_after_a_low_score_by_hand() -> None:
    # Three disjoint masks of value 1 on a 1 x 4 row, scores 0.9, 0.4, 0.8, 0.9:
    #   t=0 on pixel 0, t=1 on pixel 1, t=2 on pixel 2, t=3 on pixel 3 with value 0.3.
    masks = torch.zeros(1, 4, 1, 4)
    for t in range(3):
        masks[0, t, 0, t] = 1.0
    masks[0, 3, 0, 3] = 0.3
    scores = torch.tensor([[0.9, 0.4, 0.8, 0.9]])
    # weighted: 0.9, 0.4, 0.8 pass the threshold 0.3 (t=1 although s_1 < 0.5, and t=2 after
    # it); 0.3 * 0.9 = 0.27 does not: [1, 2, 3, 0].
    weighted = PostProcess(blur=False, stop_rule="weighted")
    assert weighted.slots(masks, scores).tolist() == [[[1, 2, 3, 0]]]
    # first_below: s_1 = 0.4 < 0.5 stops the image at t=1, so t=1 and t=2 are dropped: [1, 0, 0, 0].
    first_below = PostProcess(blur=False, stop_rule="first_below")
    assert first_below.slots(masks, scores).tolist() == [[[1, 0, 0, 0]]]
    # The outputs themselves: zero from t=1 on.
    kept_masks, kept_scores = stop_outputs(masks, scores, 0.5)
    assert kept_scores.tolist() == [[pytest.approx(0.9), 0.0, 0.0, 0.0]]
    assert kept_masks[0, 1:].abs().sum().item() == 0 and torch.equal(kept_masks[0, 0], masks[0, 0])
    # stop_score 0 never stops: first_below is then the weighted rule.
    never = PostProcess(blur=False, stop_rule="first_below", stop_score=0.0)
    assert never.slots(masks, scores).tolist() == [[[1, 2, 3, 0]]]


def test_stop_outputs_match_the_models_early_stop() -> None:
    from recattend.models.segmenter import RecurrentSegmenter
    from tests.helpers import TINY_SEGMENTER

    torch.manual_seed(0)
    model = RecurrentSegmenter(image_size=(32, 32), steps=4, **TINY_SEGMENTER).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        every = model.predict(images, threshold=0.0)
        # A stop score between the scores of image 0 makes it stop after its first step(s).
        stop = float(every["scores"][0].median()) + 1e-6
        stopped = model.predict(images, threshold=stop)
    masks, scores = stop_outputs(every["masks"], every["scores"], stop)
    assert (scores == 0).any()  # some image did stop
    assert torch.allclose(stopped["scores"], scores, atol=1e-6)
    assert torch.allclose(stopped["masks"], masks, atol=1e-6)


# --------------------------------------------------------------------- foreground and small ones
def test_foreground_and_min_size_by_hand() -> None:
    # 2 x 4 image, scores 1, no blur: t=0 covers columns 0..1 (4 px) at 0.9, t=1 pixel (1, 3).
    masks = torch.zeros(1, 2, 2, 4)
    masks[0, 0, :, :2] = 0.9
    masks[0, 1, 1, 3] = 0.9
    scores = torch.ones(1, 2)
    assert RAW.slots(masks, scores).tolist() == [[[1, 1, 0, 0], [1, 1, 0, 2]]]
    # Foreground 0.9 on columns 0..2, 0.2 on column 3: the AND drops t=1's pixel.
    foreground = torch.full((1, 2, 4), 0.9)
    foreground[..., 3] = 0.2
    anded = PostProcess(blur=False, foreground=True)
    assert anded.slots(masks, scores, foreground=foreground).tolist() == [
        [[1, 1, 0, 0], [1, 1, 0, 0]]
    ]
    # The switch off ignores the map.
    assert RAW.slots(masks, scores, foreground=foreground)[0, 1, 3].item() == 2
    # min_size is "at most": 1 drops t=1 (1 px) only, 4 drops t=0 (4 px) too.
    assert PostProcess(blur=False, min_size=1).slots(masks, scores).tolist() == [
        [[1, 1, 0, 0], [1, 1, 0, 0]]
    ]
    assert PostProcess(blur=False, min_size=4).slots(masks, scores).sum().item() == 0
    # At network resolution each pixel stands for pixel_area original pixels: with 2, t=0 covers
    # 8 > 4 original pixels and stays; per image, the first image (area 1) loses it.
    two = torch.cat([masks, masks])
    kept = PostProcess(blur=False, min_size=4).slots(
        two, torch.ones(2, 2), pixel_area=torch.tensor([1, 2])
    )
    assert kept[0].sum().item() == 0 and kept[1].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


def test_upsampling_comes_before_the_threshold() -> None:
    # A 1 x 2 map [1, 0] upsampled bilinearly to 1 x 4 (half-pixel centres) is
    # [1, 0.75, 0.25, 0]: with threshold 0.3 the first two pixels are the instance.
    masks = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert RAW.slots(masks, torch.ones(1, 1), size=(1, 4)).tolist() == [[[1, 1, 0, 0]]]


def test_settings_are_checked() -> None:
    known = "threshold, stop_rule, stop_score, upsample, blur"
    with pytest.raises(
        ValueError, match=rf"postprocess\.blurr: not a post-processing setting; .*{known}"
    ):
        PostProcess().replace({"blurr": True})
    with pytest.raises(ValueError, match="stop_rule='first' is not one of weighted, first_below"):
        PostProcess(stop_rule="first")
    with pytest.raises(ValueError, match="dilate=4 must be odd"):
        PostProcess(dilate=4)
    # Null values keep the settings' own (eval.py's and predict.py's postprocess node).
    settings = PostProcess(threshold=0.6).replace(
        {"stop_rule": "first_below", "stop_score": 0.4, "dilate": 5, "blur": None}
    )
    assert settings == PostProcess(threshold=0.6, stop_rule="first_below", stop_score=0.4, dilate=5)
    assert PostProcess.keys()[:3] == ("threshold", "stop_rule", "stop_score")


def test_majority_class_per_instance() -> None:
    from recattend.postprocess import majority_class

    labels = torch.tensor([[1, 1, 1, 2], [0, 3, 3, 2]])
    semantic = torch.tensor([[3, 3, 5, 0], [1, 0, 0, 0]])
    # Instance 1: classes 3, 3, 5 -> 3. Instance 2: all background -> 0. Instance 3: background.
    assert majority_class(labels, semantic).tolist() == [3, 0, 0]


# The upsample switch: how the weighted maps reach the requested size.


def test_nearest_upsampling_repeats_every_pixel() -> None:
    from recattend.postprocess import upsample_maps

    soft = np.array([[0.2, 0.9], [0.6, 0.4]], np.float32)
    maps = torch.from_numpy(soft).view(1, 1, 2, 2)
    up = upsample_maps(maps, (4, 4), "nearest")
    np.testing.assert_array_equal(up[0, 0].numpy(), np.repeat(np.repeat(soft, 2, 0), 2, 1))
    # Through the whole path, threshold 0.3: the pixels 0.9, 0.6 and 0.4 are the instance.
    slots = PostProcess(blur=False, upsample="nearest").slots(maps, torch.ones(1, 1), (4, 4))
    assert slots[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    # A 3 -> 4 factor: output pixel x has its centre at (x + 0.5) * 3 / 4 in the input, so it
    # takes input pixels 0, 1, 1, 2 (plain floor(x * 3 / 4) would take 0, 0, 1, 2).
    row = torch.tensor([0.1, 0.5, 0.9]).view(1, 1, 1, 3)
    assert upsample_maps(row, (1, 4), "nearest").flatten().tolist() == pytest.approx(
        [0.1, 0.5, 0.5, 0.9]
    )


def test_bilinear_stays_the_default_and_keeps_its_values() -> None:
    from recattend.postprocess import upsample_maps

    # Rows [0.2, 0.9] to 4 columns with half-pixel centres: input positions -0.25 (edge: 0.2),
    # 0.25 (0.75 * 0.2 + 0.25 * 0.9 = 0.375), 0.75 (0.725) and 1.25 (edge: 0.9).
    assert PostProcess().upsample == "bilinear"
    maps = torch.tensor([[0.2, 0.9], [0.2, 0.9]]).view(1, 1, 2, 2)
    up = upsample_maps(maps, (4, 4), "bilinear")
    torch.testing.assert_close(up[0, 0], torch.tensor([[0.2, 0.375, 0.725, 0.9]] * 4))


def test_bicubic_overshoot_is_clamped_to_the_unit_range() -> None:
    from recattend.postprocess import upsample_maps

    # A step [0, 0, 1, 1] to 8 columns. Output column 2 sits at input 0.75 between two zeros;
    # its four taps (columns -1..2, the edge repeated) weigh 0, 0, 0 and 1 by the cubic kernel
    # (a = -0.75) at distance 1.25: -0.75 (1.25^3 - 5 1.25^2 + 8 1.25 - 4) = -0.10546875.
    # Column 5 mirrors it: 1.10546875. Clamped, the maps stay in [0, 1].
    step = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(4, 1).view(1, 1, 4, 4)
    raw = torch.nn.functional.interpolate(step, size=(8, 8), mode="bicubic", align_corners=False)
    assert raw[0, 0, 0, 2].item() == pytest.approx(-0.10546875)
    assert raw[0, 0, 0, 5].item() == pytest.approx(1.10546875)
    up = upsample_maps(step, (8, 8), "bicubic")
    assert up.min().item() == 0.0 and up.max().item() == 1.0
    assert up[0, 0, 0, 2].item() == 0.0 and up[0, 0, 0, 5].item() == 1.0
    torch.testing.assert_close(up, raw.clamp(0, 1))


def test_upsample_is_a_checked_switch(compose_train) -> None:
    from recattend.utils.config import postprocess_overrides

    with pytest.raises(ValueError, match=r"upsample='lanczos' is not one of bilinear, bicubic, n"):
        PostProcess(upsample="lanczos")
    with pytest.raises(ValueError, match=r"postprocess: upsample='area'"):
        PostProcess().replace({"upsample": "area"})
    assert PostProcess().replace({"upsample": None}).upsample == "bilinear"
    # eval.py: postprocess.upsample replaces the checkpoint's, the other settings stay.
    cfg = compose_train("postprocess.upsample=bicubic", config_name="eval")
    saved = {"postprocess": {"dilate": 5, "upsample": "bilinear"}}
    merged = postprocess_overrides(cfg.postprocess, saved)["postprocess"]
    assert (merged["dilate"], merged["upsample"]) == (5, "bicubic")
    assert compose_train().module.postprocess.upsample == "bilinear"


def test_the_preprocessors_maps_in_the_outputs_give_the_foreground_and_the_classes() -> None:
    # Two slots on a 2 x 2 network output: slot 0 the left column, slot 1 the right one, s = 1.
    # The pre-processor calls the left column foreground, and class 2 wins everywhere.
    masks = torch.zeros(1, 2, 2, 2)
    masks[0, 0, :, 0] = masks[0, 1, :, 1] = 1.0
    out = {"masks": masks, "scores": torch.ones(1, 2)}
    out["foreground"] = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    out["semantic"] = torch.tensor([0.1, 0.2, 0.7]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    anded = PostProcess(blur=False, foreground=True)
    [result] = anded(out)
    assert result.labels.tolist() == [[1, 0], [1, 0]] and result.classes.tolist() == [2]
    # At 4 x 4 both are resized bilinearly first: per column the foreground is 1, 0.75, 0.25, 0,
    # slot 0 wins columns 0-1 (1, 0.75 against 0, 0.25) and slot 1 columns 2-3, and the AND
    # (> 0.3) keeps columns 0-1.
    [result] = anded(out, size=(4, 4))
    assert result.labels.tolist() == [[1, 1, 0, 0]] * 4 and result.classes.tolist() == [2]
    # Without the AND the foreground is not used; the classes still are.
    [result] = RAW(out, size=(4, 4))
    assert result.labels.tolist() == [[1, 1, 2, 2]] * 4 and result.classes.tolist() == [2, 2]


def test_the_network_stops_early_only_under_first_below() -> None:
    assert PostProcess().network_stop == 0.0
    assert PostProcess(stop_rule="first_below", stop_score=0.4).network_stop == 0.4
