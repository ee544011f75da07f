"""The start-of-run lines of a training run, from real composed configs."""

from __future__ import annotations

from pathlib import Path

from recattend.utils.summary import run_summary


def test_the_default_run(compose_train) -> None:
    cfg = compose_train("trainer.accelerator=cpu")
    assert run_summary(cfg, Path("/runs/a"), None) == [
        "run folder: /runs/a",
        "data: dataset=synthetic (leaves), 128x128, T = 11, batch 8 per device x 1 = 8",
        "model: model=full, module=segmenter, lr 0.001; stages: box 100 steps, then full",
        "trainer: max_steps -, max_epochs 4, max_time -; 1 x cpu (strategy auto), "
        "precision 32-true",
        "loggers: wandb (offline), csv; checkpoints: best by val/sbd (max), "
        "last.ckpt every 100 steps",
        "seed 12345, init_from -, ckpt_path -",
    ]


def test_a_preprocessor_recipe_resumed(compose_train) -> None:
    cfg = compose_train(
        "experiment=kitti_preprocessor", "trainer=ddp_sim", "logger=csv", "seed=3",
        "trainer.max_time=00:02:00:00",
    )  # fmt: skip
    ckpt = Path("/runs/b/checkpoints/last.ckpt")
    assert run_summary(cfg, Path("/runs/b"), ckpt)[1:] == [
        # The batch is per device: 2 CPU processes make it 16; no stages for the FCN.
        "data: dataset=kitti, 128x448, T = 20, batch 8 per device x 2 = 16",
        "model: module=preprocessor, lr 0.001 (experiment=kitti_preprocessor)",
        "trainer: max_steps 40000, max_epochs -, max_time 00:02:00:00; 2 x cpu (strategy "
        "ddp_spawn), precision 32-true",
        "loggers: csv; checkpoints: best by val/fg_iou (max), last.ckpt every 1000 steps",
        "seed 3, init_from -, ckpt_path /runs/b/checkpoints/last.ckpt",
    ]
