"""Train a model: ``python train.py [dataset=...] [module=...] [trainer.devices=...] ...``

A thin entry point; the work is done by :func:`recattend.tasks.train.run`.
"""

import hydra
from omegaconf import DictConfig

from recattend.tasks import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train.run(cfg)


if __name__ == "__main__":
    main()
