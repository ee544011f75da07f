"""The benchmark (recattend.tasks.bench): its process plan, its command line and one small
measurement; `make bench` (`make bench-gpu`) measures the figures."""

from __future__ import annotations

import json

import pytest

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


# ------------------------------------------------------------------------------------- --device
def test_the_command_line_defaults_to_the_cpu() -> None:
    from recattend.tasks.bench import parse_args

    args = parse_args([])
    assert args.device == "cpu" and str(args.out) == "outputs/bench/latest.json"
    assert not (args.skip_ddp or args.skip_loading or args.skip_model)
    assert parse_args(["--out", "x.json", "--steps", "2"]).out.name == "x.json"


def test_device_cuda_measures_the_model_on_the_gpu_only(monkeypatch, tmp_path) -> None:
    # CUDA faked present: the figures file, the variants and what each process is asked.
    import torch

    from recattend.tasks import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = bench.parse_args(["--device", "cuda"])
    assert args.device == "cuda" and str(args.out) == "outputs/bench/latest-cuda.json"
    assert args.skip_ddp and args.skip_loading  # CPU measurements: make bench
    calls = []

    def fake(name, steps, variant):
        calls.append((name, variant))
        return {"train_images_per_s": 10.0, "infer_images_per_s": 20.0,
                "peak_train_memory_gib": 1.5, "matching_loss_share": 0.1,
                "torch_threads": 2, "gpu": "Fake GPU"}  # fmt: skip

    monkeypatch.setattr(bench, "in_fresh_process", fake)
    monkeypatch.setattr(bench, "measure_ddp", lambda *a: pytest.fail("DDP measured"))
    monkeypatch.setattr(bench, "measure_loading", lambda *a: pytest.fail("loading measured"))
    out = tmp_path / "cuda.json"
    results = bench.main(["--device", "cuda", "--repeats", "2", "--steps", "1", "--out", str(out)])
    assert all(variant.get("device") == "cuda" for _, variant in calls)
    assert not any("parallel_backward" in variant for _, variant in calls)  # CPU only
    assert {k for k in results["synthetic"] if k.startswith("train_images_per_s_")} == {
        "train_images_per_s_runs", "train_images_per_s_whole_steps",
        "train_images_per_s_full_resolution", "train_images_per_s_bf16",
    }  # fmt: skip
    assert (
        results["cvppp"]["gpu"] == "Fake GPU" and results["cvppp"]["peak_train_memory_gib"] == 1.5
    )
    assert json.loads(out.read_text()) == results


def test_device_cuda_without_cuda_is_a_clear_error(monkeypatch, tmp_path, capsys) -> None:
    import torch

    from recattend.tasks import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "in_fresh_process", lambda *a: pytest.fail("measured"))
    out = tmp_path / "cuda.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda", "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--device cuda: no CUDA device is available" in error and "make bench" in error
    assert not out.exists()
    # measure() itself (what each fresh process runs) refuses too, before building anything.
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        bench.measure("synthetic", 1, device="cuda")
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "tpu"])


def test_one_small_measurement_on_the_cpu(monkeypatch) -> None:
    # measure() end to end at a small size (the full network, 64x64, T = 3, batch 2).
    from recattend.tasks import bench

    monkeypatch.setitem(
        bench.CONFIGS, "small", {"resolution": [64, 64], "max_instances": 2, "batch_size": 2}
    )
    monkeypatch.setattr(bench, "TRAIN_WARMUP", 1)
    figures = bench.measure("small", 1)
    assert figures["train_images_per_s"] > 0 and figures["infer_images_per_s"] > 0
    assert figures["peak_train_memory_gib"] > 0.1  # the process's resident memory
    assert 0 < figures["matching_loss_share"] < 1 and "gpu" not in figures


def test_peak_memory_is_the_trainings_not_the_profilers(monkeypatch) -> None:
    # The losses' share is profiled after the timed steps; what it allocates is not training's.
    import resource

    import numpy as np

    from recattend.tasks import bench

    monkeypatch.setitem(
        bench.CONFIGS, "small", {"resolution": [64, 64], "max_instances": 2, "batch_size": 2}
    )
    monkeypatch.setattr(bench, "TRAIN_WARMUP", 1)
    above = {}

    def profiled(train_step, synchronize) -> float:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes
        above["gib"] = (peak + 2**29) / 2**30
        buffer = np.ones(peak + 2**29, np.uint8)  # touched: resident, above any earlier peak
        del buffer
        return 0.5

    monkeypatch.setattr(bench, "_losses_share", profiled)
    figures = bench.measure("small", 1)
    assert figures["matching_loss_share"] == 0.5
    assert figures["peak_train_memory_gib"] < above["gib"]
