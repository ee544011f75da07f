"""Bootstrap stages, scheduled sampling and their checkpointed state (paper 2.6)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recattend.callbacks import BootstrapStages, ScheduledSampling
from recattend.callbacks.sampling import knob_probability
from recattend.lit import SegmenterModule
from recattend.lit.rollout import TeacherForcing
from recattend.utils.checkpoint import load_weights
from tests.helpers import quiet_trainer, tiny_batch, tiny_data, tiny_segmenter


def test_knob_probability_at_hand_picked_steps_and_timesteps() -> None:
    t = torch.tensor([0, 1, 5, 19])
    # Before the offset: base 1, so p = min(1, 1 + ln(1 + 3t)) = 1 everywhere.
    assert knob_probability(100, t, 3000, 0.5, 700).tolist() == [1.0, 1.0, 1.0, 1.0]
    # 700 steps past the offset: base 0.5. t=0: 0.5; t=1: 0.5 (1 + ln 4) = 1.193 -> 1;
    # t=5: 0.5 (1 + ln 16) = 1.886 -> 1.
    assert knob_probability(3700, t, 3000, 0.5, 700).tolist()[:3] == [0.5, 1.0, 1.0]
    # 2100 steps past: base 0.125. t=1: 0.125 * 2.3863 = 0.29829; t=5: 0.125 * 3.7726 = 0.47157;
    # t=19: 0.125 (1 + ln 58) = 0.125 * 5.0604 = 0.63255.
    got = knob_probability(5100, t, 3000, 0.5, 700)
    expected = [0.125, 0.125 * (1 + math.log(4)), 0.125 * (1 + math.log(16))]
    expected.append(0.125 * (1 + math.log(58)))
    torch.testing.assert_close(got, torch.tensor(expected))
    # base scales the whole schedule: 0.5 * 0.125 at t=0.
    assert knob_probability(5100, t[:1], 3000, 0.5, 700, base=0.5).item() == 0.0625


def test_scheduled_sampling_probabilities_per_kind() -> None:
    callback = ScheduledSampling(decay=0.5, decay_steps=10, box_offset=0, mask_offset=None)
    probs = callback.probabilities(10, 3)
    torch.testing.assert_close(probs["box"], torch.tensor([0.5, 1.0, 1.0]))
    assert probs["mask"].tolist() == [0.0, 0.0, 0.0]  # offset None: never
    with pytest.raises(ValueError, match="decay_steps"):
        ScheduledSampling(decay_steps=0)


def test_no_scheduled_sampling_is_always_the_ground_truth_canvas() -> None:
    # The paper's ablation (section 4.1): the canvas takes the maximally overlapping ground truth
    # at every step k of the full stage and every timestep t, long after the fading schedule
    # would have reached ~0 (k = 10^6 with a 3000-step offset and 700-step halving); the box
    # switch keeps its own schedule (never, here, as in the CVPPP recipe).
    callback = ScheduledSampling(decay_steps=700, mask_offset=3000)
    forcing = TeacherForcing(mode="ground_truth")
    for step in (0, 2999, 3000, 10_000, 1_000_000):
        forcing.schedule(callback.probabilities(step, 21))
        assert forcing.probabilities["mask"].tolist() == [1.0] * 21
        assert forcing.probabilities["box"].tolist() == [0.0] * 21
    assert callback.probabilities(1_000_000, 21)["mask"].max() < 1e-6  # what scheduled uses
    # The opposite extreme: never any ground truth, whatever the schedule says.
    never = TeacherForcing(mode="predictions")
    never.schedule(ScheduledSampling(box_offset=0, mask_offset=0).probabilities(0, 2))
    assert never.probabilities["box"].tolist() == never.probabilities["mask"].tolist() == [0, 0]


def _canvases(module: SegmenterModule) -> list[torch.Tensor]:
    """Record the canvas the box network reads at every step."""
    seen: list[torch.Tensor] = []
    locate = module.net.segmenter.locate

    def recording(x: torch.Tensor, canvas: torch.Tensor, t: int) -> Any:
        seen.append(canvas.detach().clone())
        return locate(x, canvas, t)

    module.net.segmenter.locate = recording
    return seen


def _quiet(module: SegmenterModule, monkeypatch) -> None:
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)


@pytest.mark.parametrize("stage", ["full", "box"])
def test_canvas_receives_exactly_the_noised_ground_truth(monkeypatch, stage: str) -> None:
    # Probability 1 (full stage) or the box stage: every step writes y* (1 - U(0, 0.3)) of one
    # instance, so the canvas is 0 off the instances and in [0.7, 1] on those written.
    torch.manual_seed(0)
    batch = tiny_batch(2)
    module = tiny_segmenter()
    _quiet(module, monkeypatch)
    module.train()
    module.stage = stage
    steps = module.net.segmenter.steps
    module.teacher_forcing.probabilities = {"box": torch.zeros(steps), "mask": torch.ones(steps)}
    canvases = _canvases(module)
    module.training_step(batch, 0)
    assert len(canvases) == steps and (canvases[0] == 0).all()
    union = batch["masks"].amax(1)  # (B, H, W)
    for before, after in zip(canvases, canvases[1:], strict=False):
        written = after[:, 0]
        assert (written[union == 0] == 0).all()  # nothing but ground truth
        new = (after > before)[:, 0]
        assert ((written[new] >= 0.7 - 1e-6) & (written[new] <= 1.0)).all()
        # Each step adds (part of) exactly one instance per image: the pixels that changed lie
        # inside a single ground-truth slot.
        for b in range(2):
            if new[b].any():
                inside = [(batch["masks"][b, j].bool() | ~new[b]).all() for j in range(steps)]
                assert any(inside)
    assert (canvases[-1][:, 0][union > 0] > 0).any()


def test_own_predictions_only_without_teacher_forcing(monkeypatch) -> None:
    # Probability 0: the canvas holds the model's own (soft, nowhere exactly zero) masks.
    torch.manual_seed(0)
    module = tiny_segmenter()
    _quiet(module, monkeypatch)
    module.train()
    canvases = _canvases(module)
    module.training_step(tiny_batch(2), 0)
    assert (canvases[1] > 0).all()


class Probe(L.Callback):
    """Records, at every training batch, the module's stage, forcing and optimizer lr."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        forcing = pl_module.teacher_forcing.probabilities
        self.seen.append(
            {
                "step": trainer.global_step - 1,
                "stage": pl_module.stage,
                "mask_p0": None if forcing is None else forcing["mask"][0].item(),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "logged": set(trainer.callback_metrics),
                "optimizer": id(trainer.optimizers[0]),
            }
        )


def _trainer(tmp_path: Path, callbacks: list[L.Callback], max_steps: int) -> L.Trainer:
    return quiet_trainer(tmp_path, max_steps, callbacks)


def _stages() -> list[dict[str, Any]]:
    return [{"name": "box", "steps": 2, "lr": 0.01}, {"name": "full", "steps": None, "lr": 0.002}]


def test_stage_switch_at_the_configured_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    probe = Probe()
    sampling = ScheduledSampling(decay=0.5, decay_steps=1, mask_offset=1)
    module = tiny_segmenter()
    trainer = _trainer(tmp_path, [BootstrapStages(_stages()), sampling, probe], max_steps=4)
    trainer.fit(module, datamodule=tiny_data(16))
    stages = [s["stage"] for s in probe.seen]
    assert stages == ["box", "box", "full", "full"]
    # The box stage has no segmentation loss and no ground-truth schedule; the full stage has.
    assert "train/loss_segm" not in probe.seen[1]["logged"]
    assert "train/loss_segm" in probe.seen[2]["logged"]
    assert probe.seen[0]["mask_p0"] is None
    # The schedule counts from the start of the full stage (step 2): k = 0 -> 1, k = 1 -> 1
    # (offset 1), k = 2 -> 0.5.
    assert [s["mask_p0"] for s in probe.seen[2:]] == [1.0, 1.0]
    assert sampling.start_step == 2
    # A fresh optimizer with the stage's learning rate.
    assert [s["lr"] for s in probe.seen] == pytest.approx([0.01, 0.01, 0.002, 0.002])
    assert probe.seen[1]["optimizer"] != probe.seen[2]["optimizer"]


def test_resume_continues_in_the_same_stage_and_schedule_point(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = _trainer(
        tmp_path,
        [BootstrapStages(_stages()), ScheduledSampling(decay=0.5, decay_steps=1, mask_offset=0)],
        max_steps=3,
    )
    first.fit(
        tiny_segmenter(),
        datamodule=tiny_data(16),
    )
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    assert {"index": 1, "start_step": 2, "stage": "full"} in state.values()
    assert {"start_step": 2} in state.values()

    probe, bootstrap = Probe(), BootstrapStages(_stages())
    sampling = ScheduledSampling(decay=0.5, decay_steps=1, mask_offset=0)
    second = _trainer(tmp_path / "resumed", [bootstrap, sampling, probe], max_steps=5)
    module = tiny_segmenter()
    second.fit(module, datamodule=tiny_data(16), ckpt_path=ckpt)
    assert [s["step"] for s in probe.seen] == [3, 4]
    assert [s["stage"] for s in probe.seen] == ["full", "full"]
    # Steps 3 and 4 are 1 and 2 steps into the schedule: p(t=0) = 0.5, 0.25.
    assert [s["mask_p0"] for s in probe.seen] == [0.5, 0.25]
    assert probe.seen[0]["lr"] == pytest.approx(0.002)


def test_a_run_resumed_in_a_later_stage_follows_that_stages_lr_schedule(tmp_path: Path) -> None:
    # The full stage halves the lr every step, the box stage never decays it. Resumed in the
    # full stage (its optimiser is built before the stage is restored), steps 4 and 5 are 2 and 3
    # steps into it: 0.002 x 0.5^2 and x 0.5^3 (the lr a step ran with, before its decay).
    stages = [
        {"name": "box", "steps": 2, "lr": 0.01},
        {"name": "full", "steps": None, "lr": 0.002, "lr_decay": 0.5, "lr_decay_steps": 1},
    ]
    _trainer(tmp_path, [BootstrapStages(stages)], max_steps=3).fit(
        tiny_segmenter(), datamodule=tiny_data(16)
    )
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    probe = Probe()
    resumed = _trainer(tmp_path / "resumed", [BootstrapStages(stages), probe], max_steps=5)
    resumed.fit(tiny_segmenter(), datamodule=tiny_data(16), ckpt_path=ckpt)
    assert [s["lr"] for s in probe.seen] == pytest.approx([0.002 * 0.25, 0.002 * 0.125])


def test_resume_with_other_stages_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = _trainer(tmp_path, [BootstrapStages(_stages())], max_steps=3)
    first.fit(
        tiny_segmenter(),
        datamodule=tiny_data(16),
    )
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    other = BootstrapStages([{"name": "full", "steps": None}])
    second = _trainer(tmp_path / "resumed", [other], max_steps=5)
    with pytest.raises(ValueError, match="bootstrap stage 'full'"):
        second.fit(
            tiny_segmenter(),
            datamodule=tiny_data(16),
            ckpt_path=ckpt,
        )


def test_model_without_box_network_skips_the_box_stage(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    probe = Probe()
    module = tiny_segmenter(segmenter={"box_network": False})
    trainer = _trainer(tmp_path, [BootstrapStages(_stages()), probe], max_steps=2)
    trainer.fit(module, datamodule=tiny_data())
    assert [s["stage"] for s in probe.seen] == ["full", "full"]
    assert probe.seen[0]["lr"] == pytest.approx(0.002)  # the full stage's settings from the start
    assert "cannot train a 'box' stage" in caplog.text


@pytest.mark.parametrize(("max_steps", "warned"), [(2, True), (3, False)])
def test_a_run_that_ends_before_its_last_stage_is_warned_about(
    tmp_path: Path, caplog, max_steps: int, warned: bool
) -> None:
    # The full stage begins at step 2: a 2-step run never reaches it, a 3-step run does.
    trainer = _trainer(tmp_path, [BootstrapStages(_stages())], max_steps=max_steps)
    with caplog.at_level(logging.WARNING):
        trainer.fit(tiny_segmenter(), datamodule=tiny_data(16))
    message = (
        "bootstrap: this run ends at step 2 (trainer.max_steps / max_epochs), before its 'full' "
        "stage begins at step 2: the masks are never trained and every mask metric will be 0"
    )
    assert (message in caplog.text) is warned


class BatchSizes(L.Callback):
    """The (global step, images) of every training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, len(batch["image"])))


def test_a_stage_trains_with_its_own_batch_size_from_its_first_step(tmp_path: Path) -> None:
    # 16 images in batches of 3 for the 2 box steps (the authors' larger box-stage batches),
    # then batches of 2 (dataset.batch_size 4 is overridden by both stages). The switch ends
    # the epoch mid-way: the first full-stage step already has 2 images; the full stage's epochs
    # have 8 batches of 2 (16 images) and the box stage's 6 of 3 (the last of 1).
    torch.manual_seed(0)
    sizes = BatchSizes()
    stages = [
        {"name": "box", "steps": 2, "batch_size": 3},
        {"name": "full", "steps": None, "batch_size": 2},
    ]
    trainer = _trainer(tmp_path, [BootstrapStages(stages), sizes], max_steps=12)
    trainer.fit(tiny_segmenter(), datamodule=tiny_data(16))
    assert sizes.seen == [(1, 3), (2, 3), *((step, 2) for step in range(3, 13))]


def test_resuming_in_a_stage_with_its_own_batch_size_uses_it(tmp_path: Path) -> None:
    stages = [
        {"name": "box", "steps": 2, "batch_size": 3},
        {"name": "full", "steps": None, "batch_size": 2},
    ]
    first = _trainer(tmp_path, [BootstrapStages(stages)], max_steps=3)
    first.fit(tiny_segmenter(), datamodule=tiny_data(16))
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    sizes = BatchSizes()
    second = _trainer(tmp_path / "resumed", [BootstrapStages(stages), sizes], max_steps=5)
    second.fit(tiny_segmenter(), datamodule=tiny_data(16), ckpt_path=ckpt)
    assert sizes.seen == [(4, 2), (5, 2)]


def test_a_stage_pools_the_box_cnn_its_own_way(tmp_path: Path) -> None:
    # The tiny box CNN pools 2,2,2; the box stage 1,2,4 (the same total stride 8), the full
    # stage the model's again. A pattern of another stride is refused before training.
    seen = []

    class Pools(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(list(pl_module.net.segmenter.box_net.cnn.pools))

    stages = [{"name": "box", "steps": 2, "box_pools": [1, 2, 4]}, {"name": "full", "steps": None}]
    module = tiny_segmenter()
    trainer = _trainer(tmp_path, [BootstrapStages(stages), Pools()], max_steps=3)
    trainer.fit(module, datamodule=tiny_data(16))
    assert seen == [[1, 2, 4], [1, 2, 4], [2, 2, 2]]
    with pytest.raises(ValueError, match=r"box_pools=\[2, 2\] must have 3 entries"):
        module.use_box_pools([2, 2])
    stages[1]["box_pools"] = [1, 2, 2]
    trainer = _trainer(tmp_path / "other", [BootstrapStages(stages)], max_steps=3)
    with pytest.raises(ValueError, match="total stride 8"):
        trainer.fit(tiny_segmenter(), datamodule=tiny_data(16))


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "empty"),
        ([{"name": "box", "steps": 2, "batch_size": 0}], "batch_size=0 must be a positive"),
        ([{"name": "box"}, {"name": "full"}], "needs steps >= 1"),
        ([{"name": "box", "steps": 2, "learning_rate": 1}], "unknown: \\['learning_rate'\\]"),
    ],
)
def test_bad_stage_lists_are_refused(stages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BootstrapStages(stages)


def test_unknown_stage_name_is_refused(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [BootstrapStages([{"name": "segm", "steps": None}])], 1)
    with pytest.raises(ValueError, match="unknown bootstrap stage"):
        trainer.fit(
            tiny_segmenter(),
            datamodule=tiny_data(),
        )


def test_box_stage_checkpoint_initialises_a_full_stage_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, [BootstrapStages([{"name": "box", "steps": None}])], 2)
    trained = tiny_segmenter()
    trainer.fit(trained, datamodule=tiny_data())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    fresh = tiny_segmenter()
    assert load_weights(fresh, ckpt) == []
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name

    wider = tiny_segmenter(segmenter={"hidden": 8})
    shapes = r"net.segmenter.box_net.lstm.weight_ih \(checkpoint \(64, 8\), model \(32, 8\)\)"
    with pytest.raises(ValueError, match=shapes):
        load_weights(wider, ckpt)
    with pytest.raises(FileNotFoundError, match="init_from=.*missing.ckpt"):
        load_weights(fresh, tmp_path / "missing.ckpt")


def test_stages_set_their_box_padding_and_the_datamodule_stage(tmp_path: Path) -> None:
    # The authors padded ground-truth boxes by at least 10 px in the box stage and 20 px after;
    # each stage's value reaches the loss and teacher forcing through module.box_min_pad, and the
    # datamodule learns the stage (for stage-bound flips).
    torch.manual_seed(0)
    stages = [
        {"name": "box", "steps": 2, "box_min_pad": 10},
        {"name": "full", "steps": None, "box_min_pad": 20},
    ]
    seen: list[tuple[str, float, str | None]] = []

    class PadProbe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((pl_module.stage, pl_module.box_min_pad, trainer.datamodule.stage))

    module = tiny_segmenter(box_min_pad=4)
    assert module.box_min_pad == 4  # no stage: the module's own value
    data = tiny_data(16)
    augmented_in: list[str | None] = []  # the stage each batch was augmented for
    transfer = data.on_after_batch_transfer

    def recording(batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if data.trainer.training:
            augmented_in.append(data.stage)
        return transfer(batch, dataloader_idx)

    data.on_after_batch_transfer = recording
    trainer = _trainer(tmp_path, [BootstrapStages(stages), PadProbe()], max_steps=4)
    trainer.fit(module, datamodule=data)
    assert seen == [("box", 10, "box")] * 2 + [("full", 20, "full")] * 2
    # A batch is augmented before its on_train_batch_start switches the stage: the first
    # full-stage batch must already be augmented as a full-stage one (no box-stage flips).
    assert augmented_in == ["box", "box", "full", "full"]


def test_score_head_reinitialised_at_the_switch_only(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    stages = [
        {"name": "box", "steps": 2},
        {"name": "full", "steps": None, "reinit_score_head": True},
    ]
    resets: list[int] = []
    module = tiny_segmenter()
    reset = module.reset_score_head

    def recording() -> None:
        resets.append(module.trainer.global_step)
        reset()

    monkeypatch.setattr(module, "reset_score_head", recording)
    before = module.net.segmenter.score_head.weight.detach().clone()
    trainer = _trainer(tmp_path, [BootstrapStages(stages)], max_steps=3)
    trainer.fit(module, datamodule=tiny_data(16))
    assert resets == [2]  # once, when the full stage begins
    assert not torch.equal(module.net.segmenter.score_head.weight, before)
    # Resuming inside the full stage does not reset it again.
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    resets.clear()
    again = _trainer(tmp_path / "resumed", [BootstrapStages(stages)], max_steps=4)
    again.fit(module, datamodule=tiny_data(16), ckpt_path=ckpt)
    assert resets == []
    # What a reset does: PyTorch's default Linear initialisation, fresh draws.
    torch.manual_seed(1)
    module.net.segmenter.score_head.weight.data.fill_(7.0)
    SegmenterModule.reset_score_head(module)
    bound = 1 / math.sqrt(module.net.segmenter.score_head.in_features)
    assert module.net.segmenter.score_head.weight.abs().max() <= bound


def _reset_on_rank(rank: int, folder: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'process_group'}", rank=rank, world_size=2
    )
    try:
        torch.manual_seed(rank)  # each rank would draw other weights
        module = tiny_segmenter()
        module.reset_score_head()
        torch.save(module.net.segmenter.score_head.state_dict(), folder / f"head{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_score_head_reset_agrees_across_ddp_ranks(tmp_path: Path) -> None:
    # DDP synchronises parameters only when it wraps the model; a head re-drawn later must be
    # broadcast, or the replicas train different score heads.
    mp.spawn(_reset_on_rank, args=(tmp_path,), nprocs=2, join=True)
    heads = [torch.load(tmp_path / f"head{r}.pt", weights_only=True) for r in range(2)]
    for name, value in heads[0].items():
        assert torch.equal(value, heads[1][name]), name
