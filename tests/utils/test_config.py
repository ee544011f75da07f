"""The settings the entry points derive from a composed config."""

from __future__ import annotations

from omegaconf import OmegaConf

from recattend.utils.config import process_settings


def test_the_fast_path_is_on_only_for_segmenter_runs_on_the_cpu_that_ask_for_it() -> None:
    on, off = OmegaConf.create({"cpu_fast_path": True}), OmegaConf.create({"cpu_fast_path": False})
    assert process_settings(on, "cpu", 21, compiled=False, training=True) == {
        "fast_path": True,
        "parallel_backward": True,
        "compile_steps": 0,
    }
    # A GPU run never builds the CPU kernels; compiling raises Dynamo's limit for T = 21 steps;
    # evaluation starts no backward threads.
    assert process_settings(on, "gpu", 21, compiled=True, training=False) == {
        "fast_path": False,
        "parallel_backward": False,
        "compile_steps": 21,
    }
    assert process_settings(off, "cpu", 11, compiled=False, training=True)["fast_path"] is False
    # The pre-processor (no segmenter steps) does not use it.
    assert process_settings(on, "cpu", None, compiled=True, training=True) == {
        "fast_path": False,
        "parallel_backward": True,
        "compile_steps": 0,
    }
    default = OmegaConf.create({})
    assert process_settings(default, "cpu", 11, compiled=False, training=True)["fast_path"]
