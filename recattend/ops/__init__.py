"""The CPU fast path: what makes training and inference faster on CPU cores, apart from the model.

The paper's networks (:mod:`recattend.models`, :mod:`recattend.lit`) call these operations; they
compute the same values and gradients as PyTorch's own, faster on a CPU:

* :func:`batchnorm_relu` and :func:`conv3x3` (:mod:`recattend.ops.kernels`): C++ kernels
  (``csrc/``, built by :mod:`torch.utils.cpp_extension`; a C++ compiler and ninja) for the
  networks' BatchNorm + ReLU (+ 2x2 max-pooling) and 3x3 convolutions to 8 channels;
* :func:`backward_workers` and :func:`join_step_outputs` (:mod:`recattend.ops.step_backward`): the
  T recurrent steps' backward passes in parallel threads with one intra-op thread each, equal to
  one backward pass up to float rounding.

The fast path only ever applies on the CPU: the kernels take float32 CPU tensors alone (CUDA,
bfloat16, autocast, compiled code and anything else run PyTorch's kernels), and the parallel
backward runs only for models whose parameters are on the CPU. On a GPU it is off by itself.

The one switch is :func:`configure`, which the entry points call at start-up: on by default (and
when it is never called), ``fast_path=False`` gives PyTorch's kernels and one ordinary backward
pass everywhere. It is also the one place where process-wide settings are made: the kernels'
build, the backward threads, Dynamo's recompile limits.

:func:`recomputed` (:mod:`recattend.ops.recompute`), activation checkpointing that restores
BatchNorm statistics, saves memory rather than time: it applies on every device, whatever the
switch.
"""

from __future__ import annotations

import torch

from recattend.ops import kernels, step_backward
from recattend.ops.kernels import batchnorm_relu, conv3x3, kernels_available
from recattend.ops.recompute import recomputed
from recattend.ops.step_backward import backward_workers, join_step_outputs

__all__ = [
    "backward_workers",
    "batchnorm_relu",
    "configure",
    "conv3x3",
    "join_step_outputs",
    "kernels_available",
    "recomputed",
]


def configure(
    *, fast_path: bool = True, parallel_backward: bool = True, compile_steps: int = 0
) -> None:
    """Make the process-wide settings; the entry points call it once at start-up, and calling it
    again with the same arguments changes nothing.

    Args:
        fast_path: True (the default, also without any call): the compiled kernels and the
            parallel backward for float32 CPU tensors and CPU models; the kernels are built or
            loaded now (a first build takes ~1 min; without a compiler, one warning and PyTorch's
            kernels), and with more than one intra-op thread the backward threads start now (one
            per ``torch.get_num_threads()``, kept for the process's life). False: PyTorch's
            kernels and one ordinary backward pass everywhere.
        parallel_backward: False keeps the kernels but gives one ordinary backward pass (the
            benchmark's ``_one_backward`` variant; needed for ``retain_graph=True``). Ignored
            when ``fast_path`` is False.
        compile_steps: with ``torch.compile`` on, the segmenter's number of steps T: Dynamo
            compiles one graph per timestep and mode (training with and without a teacher-forced
            box, inference, with margin: 6 T), so its ``recompile_limit`` is raised to at least
            6 T and ``accumulated_recompile_limit`` to at least 12 T. 0: left as they are.
    """
    kernels.ENABLED = fast_path
    step_backward.ENABLED = fast_path and parallel_backward
    if fast_path:
        kernels_available()
    if step_backward.ENABLED and torch.get_num_threads() > 1:
        step_backward._step_threads(torch.get_num_threads())
    if compile_steps > 0:
        graphs = 6 * compile_steps
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, graphs)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * graphs)
