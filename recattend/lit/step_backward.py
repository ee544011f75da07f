"""Backpropagating the T steps of a rollout in parallel threads (CPU).

No gradient crosses steps (the canvas is detached, the glimpse LSTM restarts, see
:mod:`recattend.models.segmenter`), so once the joint loss (eq. 21) is known, the T steps' graphs
are T independent backward problems that share only parameters. On a CPU the steps are too small
for intra-op parallelism to keep every core busy (2 cores: forward 1.2x, backward 1.3x faster than
one), so :func:`join_steps` runs them in parallel instead: ``workers`` threads, each with one
intra-op thread, take the next step not yet backpropagated until none is left; the steps'
gradients are then summed in step order, so the result does not depend on the threads' timing or
number. One autograd node hands the sums on, so each parameter receives one gradient per backward
pass, as DDP's hooks expect, and anything upstream of the steps' shared input (a fine-tuned
pre-processor) is backpropagated once. Measured at the CVPPP configuration on 2 cores: the
backward phase about 1.6x faster than with one thread (the README has the figures).

Requirements on the steps (the caller checks them): no collective operation in their backward
(SyncBatchNorm would all-reduce in a different order on each rank) and no randomness recomputed
by activation checkpointing (threads would restore the global RNG state concurrently).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from queue import Empty, SimpleQueue
from typing import Any

import torch
from torch import Tensor


class _ParallelStepsBackward(torch.autograd.Function):
    """Identity on the steps' outputs in forward; their T backward passes in parallel."""

    @staticmethod
    def forward(
        ctx: Any,
        steps: list[list[Tensor]],
        leaves: list[Tensor],
        workers: int,
        *inputs: Tensor,
    ) -> tuple[Tensor, ...]:
        ctx.steps, ctx.leaves, ctx.workers = steps, leaves, workers
        return tuple(output.detach() for outputs in steps for output in outputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        jobs, i = [], 0
        for outputs in ctx.steps:
            jobs.append((outputs, grads[i : i + len(outputs)]))
            i += len(outputs)
        ctx.steps = None  # each step's graph is freed once backpropagated
        leaves = ctx.leaves
        results: list[tuple[Tensor | None, ...]] = [()] * len(jobs)
        queue: SimpleQueue[int] = SimpleQueue()
        for j in range(len(jobs)):
            queue.put(j)
        errors: list[BaseException] = []

        def work() -> None:
            torch.set_num_threads(1)
            try:
                while not errors:  # the next step not yet taken: the threads finish together
                    try:
                        j = queue.get_nowait()
                    except Empty:
                        return
                    outputs, grads_j = jobs[j]
                    results[j] = (
                        torch.autograd.grad(outputs, leaves, grads_j, allow_unused=True)
                        if outputs
                        else (None,) * len(leaves)  # a step with nothing to backpropagate
                    )
            except BaseException as error:  # re-raised in the calling thread below
                errors.append(error)

        threads = torch.get_num_threads()
        pool = [threading.Thread(target=work) for _ in range(min(ctx.workers, len(jobs)))]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        # A thread's torch.set_num_threads also sets the default of threads started later.
        torch.set_num_threads(threads)
        if errors:
            raise errors[0]
        summed: list[Tensor | None] = []
        for parts in zip(*results, strict=True):  # in step order: deterministic sums
            present = [p for p in parts if p is not None]
            summed.append(None if not present else torch.stack(present).sum(0))
        return (None, None, None, *summed)


def join_steps(
    steps: Sequence[Sequence[Tensor]],
    leaves: Sequence[Tensor],
    inputs: Sequence[Tensor],
    workers: int,
) -> list[list[Tensor]]:
    """The steps' outputs, with their backward passes run by ``workers`` threads.

    Args:
        steps: per step, the outputs the loss reads (each with that step's graph); steps share no
            graph except through ``leaves``.
        leaves: the tensors requiring gradients that the step graphs read: parameters, and
            detached copies of shared inputs.
        inputs: what receives each leaf's summed gradient: the parameter itself, or the shared
            input a leaf was detached from.
        workers: threads (>= 1), each running steps' backward passes with one intra-op thread.

    Returns:
        Per step, the same values as ``steps``; backpropagating through them gives every
        ``inputs`` tensor the sum of all steps' gradients, as the steps' own graphs would.
    """
    if len(leaves) != len(inputs):
        raise ValueError("join_steps: one input per leaf")
    flat = _ParallelStepsBackward.apply(
        [list(outputs) for outputs in steps], list(leaves), workers, *inputs
    )
    out, i = [], 0
    for outputs in steps:
        out.append(list(flat[i : i + len(outputs)]))
        i += len(outputs)
    return out
