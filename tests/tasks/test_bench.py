"""The benchmark's process plan (recattend.tasks.bench); `make bench` measures the figures."""

from __future__ import annotations

from recattend.tasks.bench import _plan


def test_defaults_are_spread_over_the_variants() -> None:
    # None marks a process measuring the defaults: first, last, and evenly between the variants.
    assert _plan(["a", "b", "c", "d"], 3) == [None, "a", "b", None, "c", "d", None]
    assert _plan(["a", "b", "c", "d"], 2) == [None, "a", "b", "c", "d", None]
    assert _plan(["a", "b", "c", "d"], 5) == [None, "a", None, "b", None, "c", None, "d", None]


def test_one_repeat_measures_the_defaults_first() -> None:
    assert _plan(["a", "b"], 1) == [None, "a", "b"]
    assert _plan([], 3) == [None, None, None]


def test_the_loading_benchmark_reads_every_dataset(tmp_path) -> None:
    # Each real dataset's fixture, read through its composed dataset config (as `make bench`).
    from recattend.tasks.bench import LOADING_SIZES, measure_loading

    for name in LOADING_SIZES:
        assert measure_loading(name, 5, tmp_path) > 0, name
