"""The settings the entry points derive from a composed config."""

from __future__ import annotations

from omegaconf import OmegaConf

from recattend.utils.config import process_settings


def test_the_fast_path_is_on_only_for_cpu_runs_that_ask_for_it() -> None:
    on, off = OmegaConf.create({"cpu_fast_path": True}), OmegaConf.create({"cpu_fast_path": False})
    assert process_settings(on, "cpu", 21, compiled=False) == {
        "fast_path": True,
        "compile_steps": 0,
    }
    # A GPU run never builds the CPU kernels; compiling raises Dynamo's limit for T = 21 steps.
    assert process_settings(on, "gpu", 21, compiled=True) == {
        "fast_path": False,
        "compile_steps": 21,
    }
    assert process_settings(off, "cpu", 11, compiled=False)["fast_path"] is False
    assert process_settings(OmegaConf.create({}), "cpu", 11, compiled=False)["fast_path"] is True
