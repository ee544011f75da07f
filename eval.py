"""Evaluate a checkpoint: ``python eval.py ckpt_path=outputs/.../last.ckpt [dataset=...]``.

A thin entry point; the work is done by :func:`recattend.tasks.eval.run`.
"""

import hydra
from omegaconf import DictConfig

from recattend.tasks import eval as eval_task


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    eval_task.run(cfg)


if __name__ == "__main__":
    main()
