"""Train a model: ``python train.py [dataset=...] [module=...] [trainer.devices=...] ...``

A thin entry point; the work is done by :func:`recattend.tasks.train.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.signals import stop_quietly_on_ctrl_c

stop_quietly_on_ctrl_c()  # while the libraries below load; hydra_main's main() takes over

from recattend.utils.cli import hydra_main  # noqa: E402

main = hydra_main("train", "recattend.tasks.train:run")

if __name__ == "__main__":
    main()
