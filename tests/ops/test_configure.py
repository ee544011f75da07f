"""The fast path's one switch (recattend.ops.configure), where the parallel backward applies
(backward_workers) and how the steps' outputs are joined (join_step_outputs)."""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
from torch import Tensor, nn

from recattend import ops
from recattend.ops import backward_workers, join_step_outputs, kernels, step_backward

CL = torch.channels_last


def _layer() -> tuple[nn.Conv2d, nn.BatchNorm2d, Tensor]:
    """A 3x3 conv to 8 channels and its BatchNorm, and a float32 channels-last CPU input: what
    both kernels take."""
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8, eps=1e-3)
    return conv, norm, torch.randn(2, 4, 8, 8).contiguous(memory_format=CL)


def _run(conv: nn.Conv2d, norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """The layer as the networks call the kernels (recattend.models.segmenter)."""
    return ops.batchnorm_relu(norm, ops.conv3x3(conv, x), 2)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


def test_off_gives_pytorch_kernels_and_one_backward_pass(monkeypatch, two_threads) -> None:
    ops.configure(fast_path=False)

    def untouched(*args):
        raise AssertionError("a kernel was used with the fast path off")

    monkeypatch.setattr(kernels, "_load", untouched)
    monkeypatch.setattr(kernels._BatchNormReLU, "apply", untouched)
    monkeypatch.setattr(kernels._Conv3x3, "apply", untouched)
    conv, norm, x = _layer()
    reference_conv, reference_norm = copy.deepcopy(conv), copy.deepcopy(norm)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = _run(conv, norm, xa)
    expected = nn.functional.max_pool2d(torch.relu(reference_norm(reference_conv(xb))), 2)
    assert torch.equal(y, expected)  # PyTorch's own kernels: bit for bit
    y.sum().backward()
    expected.sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(conv.weight.grad, reference_conv.weight.grad)
    norm.eval()
    with torch.no_grad():  # the evaluation kernel too
        assert torch.equal(_run(conv, norm, x), _run(reference_conv, reference_norm.eval(), x))
    assert backward_workers(_model(), 4, compiled=False) == 1


def test_on_again_restores_the_kernels_and_the_parallel_backward(
    kernel, monkeypatch, two_threads
) -> None:
    calls = []
    for function in (kernels._BatchNormReLU, kernels._Conv3x3):
        original = function.apply

        def spy(*args, _original=original, _name=function.__name__):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(function, "apply", spy)
    conv, norm, x = _layer()
    ops.configure(fast_path=False)
    _run(conv, norm, x)
    assert calls == [] and backward_workers(_model(), 4, compiled=False) == 1
    ops.configure()
    _run(conv, norm, x)
    assert calls == ["_Conv3x3", "_BatchNormReLU"]
    assert backward_workers(_model(), 4, compiled=False) == 2  # min(2 threads, 4 steps)


def test_parallel_backward_alone_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    ops.configure(parallel_backward=False)  # the kernels stay on
    assert kernels.ENABLED and backward_workers(_model(), 4, compiled=False) == 1
    ops.configure(fast_path=False, parallel_backward=True)  # no parallel backward without the path
    assert not step_backward.ENABLED


def test_configure_builds_the_kernels_at_once_and_only_when_on(monkeypatch, tmp_path) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there yet
    builds = []
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: builds.append(a[0]) or "built")
    kernels._load.cache_clear()
    try:
        ops.configure(fast_path=False)
        assert builds == []
        ops.configure()
        ops.configure()  # loaded once per process
        assert builds == [kernels.extension()]
        assert builds[0].startswith("recattend_cpu_kernels_")
    finally:
        kernels._load.cache_clear()


def _step_thread_count() -> int:
    return sum(t.name == "recattend-step-backward" for t in threading.enumerate())


def test_configure_starts_the_backward_threads_once(monkeypatch, two_threads) -> None:
    monkeypatch.setattr(step_backward, "_threads", None)
    ops.configure(fast_path=False)
    ops.configure(parallel_backward=False)
    assert step_backward._threads is None
    before = _step_thread_count()
    ops.configure()
    threads = step_backward._threads
    assert threads is not None and threads.size == 2
    assert _step_thread_count() == before + 2 and torch.get_num_threads() == 2
    ops.configure()  # idempotent: the same threads
    assert step_backward._threads is threads and _step_thread_count() == before + 2


def test_configure_starts_no_threads_with_one_intra_op_thread(monkeypatch) -> None:
    monkeypatch.setattr(step_backward, "_threads", None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    ops.configure()
    assert step_backward._threads is None


def test_compile_steps_raise_dynamo_recompile_limits() -> None:
    import torch._dynamo

    config = torch._dynamo.config
    with config.patch(recompile_limit=8, accumulated_recompile_limit=100):
        ops.configure(fast_path=False)  # no compile: left alone
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (8, 100)
        # T = 21 (CVPPP): 6 * 21 = 126 graphs per function, 12 * 21 = 252 in all.
        ops.configure(fast_path=False, compile_steps=21)
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (126, 252)
        ops.configure(fast_path=False, compile_steps=21)  # idempotent
        ops.configure(fast_path=False, compile_steps=4)  # never lowered (24, 48)
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (126, 252)
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        # T = 11 (synthetic): 66; 132 is under the default 256, which stays.
        ops.configure(fast_path=False, compile_steps=11)
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (66, 256)


def test_backward_workers_one_thread_unless_safe(monkeypatch) -> None:
    # On CPU with 4 intra-op threads: min(4, steps) threads, 1 under each condition below.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    model = _model()
    assert backward_workers(model, 3, compiled=False) == 3
    assert backward_workers(model, 21, compiled=False) == 4
    with torch.no_grad():  # no gradients: no backward pass
        assert backward_workers(model, 21, compiled=False) == 1
    assert backward_workers(model, 21, compiled=True) == 1  # compiled step functions
    # A parameter hook would run once per step, then on the sum.
    handle = model[0].weight.register_hook(lambda grad: grad)
    assert backward_workers(model, 21, compiled=False) == 1
    handle.remove()
    assert backward_workers(model, 21, compiled=False) == 4
    # SyncBatchNorm's backward all-reduces: threads would do it in another order on each rank.
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
    assert backward_workers(synced, 21, compiled=False) == 1
    # Parameters off the CPU (the meta device stands for a GPU here).
    assert backward_workers(_model().to("meta"), 21, compiled=False) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert backward_workers(model, 21, compiled=False) == 1
    monkeypatch.setattr(step_backward, "ENABLED", False)  # as configure(fast_path=False) sets it
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert backward_workers(model, 21, compiled=False) == 1


@dataclasses.dataclass
class _Out:
    mask: Tensor
    score: Tensor | None
    extra: Tensor


@pytest.mark.parametrize("finetuned", [True, False], ids=["shared-input-grad", "frozen-input"])
def test_join_step_outputs_hand_computed(two_threads, finetuned: bool) -> None:
    # Steps t = 0, 1, 2 read a parameter w = 3 and x = 2 a (a = 1): mask_t = w x t, score_t =
    # w + t for t > 0 (None at t = 0). Loss = sum_t mask_t + sum_t score_t:
    # dL/dw = x (0 + 1 + 2) + 2 = 8; dL/da = 2 w (0 + 1 + 2) = 18 when a requires gradients.
    w = torch.tensor(3.0, requires_grad=True)
    frozen = torch.tensor(7.0)  # a parameter that does not require gradients
    a = torch.tensor(1.0, requires_grad=finetuned)
    shared = 2 * a
    x = shared.detach().requires_grad_(shared.requires_grad)
    outs = [
        _Out(mask=w * x * t, score=w + t if t else None, extra=torch.tensor(float(t)))
        for t in range(3)
    ]
    joined = join_step_outputs(outs, ("mask", "score"), [w, frozen], x, shared, workers=2)
    assert [type(o) for o in joined] == [_Out] * 3
    assert [o.mask.item() for o in joined] == [0.0, 6.0, 12.0]
    assert joined[0].score is None and [o.score.item() for o in joined[1:]] == [4.0, 5.0]
    assert all(j.extra is o.extra for j, o in zip(joined, outs, strict=True))  # not in names
    sum(o.mask + (o.score if o.score is not None else 0) for o in joined).backward()
    assert w.grad.item() == 8.0 and frozen.grad is None
    if finetuned:
        assert a.grad.item() == 18.0
    else:
        assert a.grad is None
