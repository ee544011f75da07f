"""Activation checkpointing that leaves BatchNorm running statistics as one forward pass does.

Memory rather than speed: the segmenter's ``recompute`` recomputes parts of a step in the
backward pass (:class:`~recattend.lit.segmenter.SegmenterModule`), on any device and whatever the
fast path's switch (:func:`recattend.ops.configure`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def restored_batchnorm_stats(norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Batch statistics still normalise, but the running averages of ``norms`` and their batch
    counters are put back afterwards, so a recomputation leaves them as the first pass did.

    The recomputation runs exactly the computation of the first pass (switching momentum off
    would not), which compiled step functions need: checkpointing checks that both save the same
    tensors, and Dynamo would compile a second graph for another momentum.
    """
    saved = [
        [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for live, kept in zip(
                    (m.running_mean, m.running_var, m.num_batches_tracked), buffers, strict=True
                ):
                    live.copy_(kept)


def recomputed(
    function: Callable[..., Any], norms: Sequence[nn.modules.batchnorm._BatchNorm], *args: Any
) -> Any:
    """``function(*args)`` under activation checkpointing: only its inputs and outputs are kept
    and the backward pass recomputes the rest; the running statistics of the BatchNorm layers
    ``norms`` are restored after the recomputation, so they move once per forward pass.

    ``function`` must draw no random numbers: the RNG state is not replayed (the parallel
    backward's threads, :mod:`recattend.ops.step_backward`, would restore it concurrently).
    """
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), restored_batchnorm_stats(norms)),
    )
