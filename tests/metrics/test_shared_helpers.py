"""The helpers every instance metric shares: best matches, 0/0-safe ratios, the input check and
the mean / std summary."""

from __future__ import annotations

import pytest
import torch

from recattend.metrics import best_match, check_label_maps, mean_std, safe_ratio
from tests.metrics.labels import GT_TWO


def test_best_match_is_the_row_max_and_zero_without_columns() -> None:
    scores = torch.tensor([[0.2, 0.7], [0.0, 0.0], [0.5, 0.1]])
    assert best_match(scores).tolist() == pytest.approx([0.7, 0.0, 0.5])
    assert best_match(torch.zeros(3, 0)).tolist() == [0.0, 0.0, 0.0]  # nothing to match
    assert best_match(torch.zeros(0, 2)).shape == (0,)


def test_safe_ratio_makes_zero_over_zero_zero() -> None:
    got = safe_ratio(torch.tensor([1, 0, 3]), torch.tensor([4, 0, 2]))
    assert got.dtype == torch.float32 and got.tolist() == [0.25, 0.0, 1.5]


def test_check_label_maps_names_the_problem() -> None:
    check_label_maps(GT_TWO[None], GT_TWO[None].int())  # integer dtypes may differ
    with pytest.raises(ValueError, match=r"one shape \(B, H, W\), got \(4, 4\) and \(4, 4\)"):
        check_label_maps(GT_TWO, GT_TWO)
    with pytest.raises(ValueError, match=r"\(1, 4, 4\) and \(1, 4, 3\)"):
        check_label_maps(GT_TWO[None], GT_TWO[None, :, :3])
    with pytest.raises(ValueError, match="integer tensors, got torch.float32"):
        check_label_maps(GT_TWO[None].float(), GT_TWO[None])


def test_mean_std_is_the_population_std() -> None:
    # Values 1, 0, 0, 1: mean 1/2, population std 1/2 (the sample std would be 1/sqrt(3)).
    got = mean_std("sbd", torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert {k: v.item() for k, v in got.items()} == {"sbd": 0.5, "sbd_std": 0.5}
    assert mean_std("fp", torch.tensor([3.0]))["fp_std"].item() == 0.0
