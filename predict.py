"""Predict instances: ``python predict.py ckpt_path=... input=photos/ output=out/``.

A thin entry point; the work is done by :func:`recattend.tasks.predict.run`.
"""

import hydra
from omegaconf import DictConfig

from recattend.tasks import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict.run(cfg)


if __name__ == "__main__":
    main()
