"""The fast path's process-wide settings reach every process of a run."""

from __future__ import annotations

import torch

from recattend import ops
from recattend.callbacks import ProcessSettings
from recattend.ops import kernels, step_backward


def test_the_settings_are_made_again_when_a_stage_starts() -> None:
    # A process that Lightning spawns for DDP imports recattend anew, with the defaults (on);
    # the callback's setup is the first thing the trainer runs there.
    limit = torch._dynamo.config.recompile_limit
    try:
        ProcessSettings(fast_path=False, compile_steps=0).setup(None, None, "fit")
        assert kernels.ENABLED is False and step_backward.ENABLED is False
        ProcessSettings(fast_path=True, compile_steps=50).setup(None, None, "test")
        assert kernels.ENABLED is True and step_backward.ENABLED is True
        assert torch._dynamo.config.recompile_limit >= 300  # 6 graphs per step
    finally:
        ops.configure(fast_path=True)
        torch._dynamo.config.recompile_limit = limit
