"""Export a training checkpoint as shipped weights: ``python -m recattend.tasks.ship_weights
<run>/checkpoints/<best>.ckpt recattend/pretrained/<name>.pt``.

The file keeps what inference and fine-tuning need and nothing else: the ``state_dict`` and the
module's ``hyper_parameters`` (so :func:`recattend.lit.load_module` rebuilds it), the
resolved ``dataset`` config of the run (what ``eval.py weights=<name>`` scores by default), the
``output_statistics`` of its validation (what ``predict.py`` compares inputs with; computed on the
validation split when the checkpoint predates them), and a ``card``: the run's overrides, its
step and the checkpoint's monitored value. No optimiser, loop or callback state: a shipped file
starts runs (``init_from=<name>``), it does not resume them.
It prints the file's SHA-256 for :data:`recattend.pretrained.REGISTRY`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from recattend.evaluation.statistics import CHECKPOINT_KEY, output_statistics
from recattend.lit import SegmenterModule
from recattend.pretrained import sha256
from recattend.utils.checkpoint import read_checkpoint
from recattend.utils.config import instantiate_data


def shipped_weights(checkpoint: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The contents of a shipped weights file made from a checkpoint of the run in ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` lacks ``.hydra/config.yaml`` (the run's composed config).
    """
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file}: missing; export a checkpoint inside its run folder "
            "(<run>/checkpoints/<file>.ckpt), which holds the run's .hydra/ configs"
        )
    config = OmegaConf.load(config_file)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = (
        OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    )
    monitored = {
        state.get("monitor"): float(state["best_model_score"])
        for name, state in (checkpoint.get("callbacks") or {}).items()
        if name.startswith("ModelCheckpoint") and state.get("best_model_score") is not None
    }
    dataset = OmegaConf.to_container(config.dataset, resolve=True)
    statistics = checkpoint.get(CHECKPOINT_KEY) or validation_statistics(checkpoint, dataset)
    return {
        "state_dict": {
            k: v.detach().clone().contiguous() for k, v in checkpoint["state_dict"].items()
        },
        "hyper_parameters": checkpoint["hyper_parameters"],
        "dataset": dataset,
        CHECKPOINT_KEY: statistics,
        "card": {
            "command": "python train.py " + " ".join(map(str, overrides)),
            "global_step": int(checkpoint.get("global_step", 0)),
            "monitored": monitored,
        },
    }


def validation_statistics(checkpoint: dict[str, Any], dataset: dict[str, Any]) -> dict[str, float]:
    """The output statistics of the checkpoint's module on the validation split of ``dataset``
    (:func:`recattend.evaluation.statistics.output_statistics`), for a checkpoint written before
    validation recorded them; ``predict.py`` compares its inputs with them."""
    module = SegmenterModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    datamodule, _ = instantiate_data(OmegaConf.create(dataset))
    datamodule.setup("validate")
    return output_statistics(module, datamodule.val_dataloader())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="<run>/checkpoints/<file>.ckpt")
    parser.add_argument("output", type=Path, help="the weights file to write (.pt)")
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.checkpoint)
    weights = shipped_weights(checkpoint, args.checkpoint.resolve().parent.parent)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, args.output)
    print(
        f"{args.output}: {args.output.stat().st_size / 2**20:.2f} MiB, sha256 {sha256(args.output)}"
    )
    print(f"step {weights['card']['global_step']}, monitored {weights['card']['monitored']}")


if __name__ == "__main__":
    main()
