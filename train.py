"""Train a model: ``python train.py [dataset=...] [module=...] [trainer.devices=...] ...``

A thin entry point; the work is done by :func:`recattend.tasks.train.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.cli import hydra_main

main = hydra_main("train", "recattend.tasks.train:run")

if __name__ == "__main__":
    main()
