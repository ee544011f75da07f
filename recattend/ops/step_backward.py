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
backward phase about 1.6x faster than with one thread (docs/benchmarks.md has the figures).

The gradients equal those of one backward pass up to float rounding (another summation order;
each thread's kernels run single-threaded). What the steps must not do (:func:`backward_workers`
gives one thread, the usual single backward pass, where it cannot be sure): collective operations
in their backward (SyncBatchNorm would all-reduce in a different order on each rank); gradient
hooks on the leaves (``torch.autograd.grad`` would run them once per step, then again on the
sum); draw random numbers in a recomputed part (activation checkpointing here does not replay the
RNG state, which threads would restore concurrently; the segmenter's steps draw none). A second
backward pass through the same steps (``retain_graph=True``) and double backward are refused.

:func:`recattend.ops.configure` starts the threads at start-up (else the first parallel backward
pass does) and is the switch that turns the parallel backward off (:data:`ENABLED`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from queue import Empty, SimpleQueue
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

ENABLED = True
"""Whether :func:`backward_workers` may give more than one thread; set by
:func:`recattend.ops.configure` only."""


class _StepThreads:
    """``size`` daemon threads with one intra-op thread each, kept for the process's life:
    starting a thread and setting its thread count (``torch.set_num_threads``, which a new thread
    also calls on its first parallel operation) clear oneDNN's cache of prepared convolutions, so
    doing it at every backward pass would slow the next forward pass."""

    def __init__(self, size: int) -> None:
        self.size, self.tasks = size, SimpleQueue()
        ready = threading.Barrier(size + 1)
        threads = torch.get_num_threads()
        for _ in range(size):
            threading.Thread(
                target=self._serve, args=(ready,), name="recattend-step-backward", daemon=True
            ).start()
        ready.wait()
        # A thread's torch.set_num_threads(1) is also the default of threads started later.
        torch.set_num_threads(threads)

    def _serve(self, ready: threading.Barrier) -> None:
        # get first: a thread's first call takes the process default (restored to the caller's
        # count below), and would undo a setting made before it.
        torch.get_num_threads()
        torch.set_num_threads(1)
        ready.wait()
        while True:
            self.tasks.get()()

    def run(self, task: Callable[[], None], copies: int) -> None:
        """Run ``copies`` calls of ``task`` (which must not raise) on the threads; wait for all."""
        done = threading.Semaphore(0)

        def call() -> None:
            try:
                task()
            finally:
                done.release()

        for _ in range(copies):
            self.tasks.put(call)
        for _ in range(copies):
            done.acquire()


def _per_step(flat: Sequence[Any], steps: Sequence[Sequence[Tensor]]) -> list[list[Any]]:
    """``flat``, one item per step output in order, cut back into one list per step."""
    out, i = [], 0
    for outputs in steps:
        out.append(list(flat[i : i + len(outputs)]))
        i += len(outputs)
    return out


_threads: _StepThreads | None = None


def _step_threads(size: int) -> _StepThreads:
    global _threads
    if _threads is None or _threads.size < size:
        _threads = _StepThreads(size)  # the old threads stay idle
    return _threads


def _forget_threads() -> None:
    global _threads
    _threads = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_threads)


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
    @once_differentiable  # the steps' gradients are not themselves differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.steps is None:
            raise RuntimeError(
                "the recurrent steps were already backpropagated (their graphs are freed): a "
                "second backward pass (retain_graph=True) needs the parallel backward off: "
                "recattend.ops.configure(parallel_backward=False)"
            )
        jobs = list(zip(ctx.steps, _per_step(grads, ctx.steps), strict=True))
        ctx.steps = None  # each step's graph is freed once backpropagated
        leaves = ctx.leaves
        results: list[tuple[Tensor | None, ...]] = [()] * len(jobs)
        queue: SimpleQueue[int] = SimpleQueue()
        for j in range(len(jobs)):
            queue.put(j)
        errors: list[BaseException] = []

        def work() -> None:
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

        workers = min(ctx.workers, len(jobs))
        _step_threads(workers).run(work, workers)
        if errors:
            raise errors[0]
        summed: list[Tensor | None] = [None] * len(leaves)
        for parts in results:  # in step order, whatever the threads' timing: deterministic
            for k, part in enumerate(parts):
                if part is not None:
                    summed[k] = part if summed[k] is None else summed[k] + part
        for k, (leaf, grad) in enumerate(zip(leaves, summed, strict=True)):
            if grad is not None and grad.stride() != leaf.stride():
                # The leaf's layout, as one backward pass gives it (and DDP's buckets expect).
                summed[k] = torch.empty_like(leaf).copy_(grad)
        return (None, None, None, *summed)


def join_steps(
    steps: Sequence[Sequence[Tensor]],
    leaves: Sequence[Tensor],
    inputs: Sequence[Tensor],
    workers: int,
) -> list[list[Tensor]]:
    """The steps' outputs, with their backward passes run by ``workers`` threads.

    Args:
        steps: per step, the outputs the loss reads, each requiring gradients (with that step's
            graph); steps share no graph except through ``leaves``.
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
    return _per_step(flat, steps)


def backward_workers(model: nn.Module, steps: int, compiled: bool) -> int:
    """Threads for the backward passes of ``model``'s ``steps`` recurrent steps: more than 1 (at
    most ``steps`` and ``torch.get_num_threads()``) only where the parallel backward is switched
    on (:data:`ENABLED`) and safe: gradients enabled, ``model``'s parameters on the CPU, not
    ``compiled``, no SyncBatchNorm, no gradient hooks on parameters (module docstring); 1
    otherwise, the usual single backward pass."""
    parameter = next(model.parameters())
    if not (
        ENABLED
        and torch.is_grad_enabled()
        and parameter.device.type == "cpu"
        and not compiled
        and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        # torch.autograd.grad would run a parameter's hooks once per step
        and not any(p._backward_hooks for p in model.parameters())
    ):
        return 1
    return min(torch.get_num_threads(), steps)


def join_step_outputs(
    outs: list[Any],
    names: Sequence[str],
    parameters: Iterable[Tensor],
    x: Tensor,
    shared: Tensor,
    workers: int,
) -> list[Any]:
    """The steps' outputs ``outs`` with their backward passes run by ``workers`` threads
    (:func:`join_steps`).

    Args:
        outs: per step, a dataclass instance (the segmenter's ``StepOutput``).
        names: the fields of ``outs`` the loss reads; those that are not None and require
            gradients are joined, the others (and every other field) are left as they are.
        parameters: the model's parameters; those requiring gradients receive the steps' summed
            gradients.
        x: the steps' input, a detached copy of ``shared`` (requiring gradients where ``shared``
            does).
        shared: the input ``x`` was detached from; when it requires gradients (e.g. the maps of a
            fine-tuned pre-processor), it receives ``x``'s summed gradient, and what lies upstream
            of it is backpropagated once.
        workers: threads (>= 1), e.g. from :func:`backward_workers`.

    Returns:
        ``outs``, each a copy (:func:`dataclasses.replace`) whose joined fields have the same
        values and backpropagate as described.
    """
    selected = [
        [n for n in names if getattr(o, n) is not None and getattr(o, n).requires_grad]
        for o in outs
    ]
    leaves = [p for p in parameters if p.requires_grad]
    inputs = list(leaves)
    if shared.requires_grad:
        leaves.append(x)
        inputs.append(shared)
    joined = join_steps(
        [[getattr(o, n) for n in ns] for o, ns in zip(outs, selected, strict=True)],
        leaves,
        inputs,
        workers,
    )
    return [
        dataclasses.replace(o, **dict(zip(ns, tensors, strict=True)))
        for o, ns, tensors in zip(outs, selected, joined, strict=True)
    ]
