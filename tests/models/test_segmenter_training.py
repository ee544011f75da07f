"""The two-pass training step gives exactly the gradient of the joint loss over all steps."""

from __future__ import annotations

import torch

from recattend.data import SyntheticDataModule
from recattend.lit import SegmenterModule
from recattend.losses import segmenter_losses

TINY_NET = dict(
    patch_size=[16, 16],
    box_channels=[4, 4, 8],
    box_pools=[2, 2, 2],
    attn_channels=[4, 8],
    attn_pools=[2, 2],
    deconv_channels=[8, 4, 1],
    unpools=[2, 2, 1],
    skips=[False, True, True],
    hidden=16,
    glimpses=2,
)


def tiny_batch(n: int = 3) -> dict:
    dm = SyntheticDataModule(resolution=[32, 32], max_instances=3, batch_size=n, num_train=n, augment=None, min_objects=0, max_objects=4)
    return next(iter(dm.train_dataloader()))


def test_two_pass_gradient_equals_full_graph_gradient(monkeypatch) -> None:
    torch.manual_seed(0)
    batch = tiny_batch()
    module = SegmenterModule(image_size=[32, 32], max_instances=3, net=TINY_NET, grad_clip=0.0, mask_knob_offset=None)
    module.train()
    # Reference: all T steps in one autograd graph, one backward of the joint loss.
    model = module.model
    x, canvas, outs = batch["image"], torch.zeros(3, 1, 32, 32), []
    for t in range(model.steps):
        out = model.step(x, canvas, t)
        outs.append(out)
        canvas = torch.maximum(canvas, out.mask.detach()[:, None])
    terms = segmenter_losses(
        torch.stack([o.mask for o in outs], 1),
        torch.stack([o.score for o in outs], 1),
        torch.stack([o.soft_box for o in outs], 1),
        batch["masks"],
        batch["boxes"],
        batch["num_instances"],
    )
    model.zero_grad()
    terms["loss"].backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    captured: dict[str, torch.Tensor] = {}

    class CapturingOptimizer:
        param_groups = [{"lr": 0.0}]

        def zero_grad(self) -> None:
            module.zero_grad()

        def step(self) -> None:
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    opt = CapturingOptimizer()
    monkeypatch.setattr(module, "optimizers", lambda: opt)
    monkeypatch.setattr(module, "lr_schedulers", lambda: torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)]), lambda _: 1))
    monkeypatch.setattr(module, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    loss = module.training_step(batch, 0)
    assert torch.allclose(loss, terms["loss"].detach(), atol=1e-6)
    assert expected.keys() == captured.keys()
    for name, grad in expected.items():
        assert torch.allclose(captured[name], grad, rtol=1e-4, atol=1e-7), name
    # Every parameter gets a finite gradient (all steps' BatchNorms are used: T = 4 steps ran).
    assert set(captured) == {n for n, _ in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in captured.values())
