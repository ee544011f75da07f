"""The steps' backward passes run in parallel threads (recattend.ops.step_backward)."""

from __future__ import annotations

import threading

import pytest
import torch

from recattend.ops.step_backward import _step_threads, join_steps


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_hand_computed_gradients_reach_parameters_and_the_shared_input(two_threads, workers):
    # Steps t = 0..3 read a parameter w and a shared input x = 2 a (a leaf upstream, like a
    # fine-tuned pre-processor): y_t = w^2 t x and z_t = w + t. The loss is
    # L = sum_t c_t y_t + sum_t z_t with c = (1, 2, 3, 4).
    # dL/dw = 2 w x sum_t c_t t + 4 = 2 * 3 * 2 * (0 + 2 + 6 + 12) + 4 = 244 (w = 3, a = 1),
    # dL/da = 2 w^2 sum_t c_t t = 2 * 9 * 20 = 360.
    w = torch.tensor(3.0, requires_grad=True)
    a = torch.tensor(1.0, requires_grad=True)
    shared = 2 * a
    x = shared.detach().requires_grad_()
    steps = [[w * w * t * x, w + t] for t in range(4)]
    joined = join_steps(steps, [w, x], [w, shared], workers)
    values = [[v.detach().item() for v in s] for s in joined]
    assert values == [[9.0 * t * 2, 3.0 + t] for t in range(4)]
    accumulations = []
    w.register_post_accumulate_grad_hook(lambda p: accumulations.append(p.grad.clone()))
    c = torch.arange(1.0, 5.0)
    loss = sum(c[t] * y + z for t, (y, z) in enumerate(joined))
    loss.backward()
    assert w.grad.item() == 244.0 and a.grad.item() == 360.0
    assert len(accumulations) == 1  # one gradient per parameter per pass, as DDP's hooks expect
    assert torch.get_num_threads() == 2  # the workers' single-thread setting is undone


def test_unused_leaves_and_outputs(two_threads):
    # A leaf no step reads gets no gradient; an output the loss ignores contributes nothing; a step
    # without outputs is skipped.
    w, unused = torch.tensor(2.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    steps = [[w * 1.0, w * 10.0], [], [w * 2.0, w * 20.0]]
    joined = join_steps(steps, [w, unused], [w, unused], 2)
    assert [len(s) for s in joined] == [2, 0, 2]
    (joined[0][0] + joined[2][0]).backward()
    assert w.grad.item() == 3.0 and unused.grad is None


def test_a_failing_step_backward_raises_in_the_caller(two_threads):
    class Fails(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("step 1 failed")

    w = torch.tensor(1.0, requires_grad=True)
    joined = join_steps([[w * 2], [Fails.apply(w)]], [w], [w], 2)
    with pytest.raises(RuntimeError, match="step 1 failed"):
        (joined[0][0] + joined[1][0]).backward()
    assert torch.get_num_threads() == 2


def test_leaves_and_inputs_must_pair():
    w = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="one input per leaf"):
        join_steps([[w * 2]], [w], [], 2)


def test_threads_are_kept_and_a_second_backward_is_refused(two_threads):
    # The same two threads serve every backward pass (starting threads clears oneDNN's cache).
    def names() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "recattend-step-backward"]

    for _ in range(2):
        w = torch.tensor(1.0, requires_grad=True)
        joined = join_steps([[w * 2], [w * 3]], [w], [w], 2)
        loss = joined[0][0] + joined[1][0]
        loss.backward(retain_graph=True)
        assert w.grad.item() == 5.0 and len(names()) >= 2
    count = len(names())
    refused = r"already backpropagated.*configure\(parallel_backward=False\)"
    with pytest.raises(RuntimeError, match=refused):
        loss.backward()
    assert len(names()) == count
    # Each thread works with one intra-op thread, the caller keeps its own.
    seen = []
    step_threads = _step_threads(2)
    step_threads.run(lambda: seen.append(torch.get_num_threads()), 2)
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_gradients_take_the_leaf_layout(two_threads):
    # A channels-last parameter gets a channels-last gradient, as one backward pass gives it
    # (DDP's gradient buckets expect the parameter's strides).
    # (9, 1, 3, 1): how Module.to(memory_format=channels_last) lays out a (8, 1, 3, 3) weight
    w = torch.empty_strided((8, 1, 3, 3), (9, 1, 3, 1)).normal_().requires_grad_()
    joined = join_steps([[w.reshape(-1) * 2], [w.reshape(-1) * 3]], [w], [w], 2)
    (grad,) = torch.autograd.grad(joined[0][0].sum() + joined[1][0].sum(), w)
    assert grad.stride() == w.stride() and torch.equal(grad, torch.full_like(w, 5.0))
