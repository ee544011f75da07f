"""Predict instances: ``python predict.py ckpt_path=... input=photos/ output=out/``.

A thin entry point; the work is done by :func:`recattend.tasks.predict.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.signals import stop_quietly_on_ctrl_c

stop_quietly_on_ctrl_c()  # while the libraries below load; hydra_main's main() takes over

from recattend.utils.cli import hydra_main  # noqa: E402

main = hydra_main("predict", "recattend.tasks.predict:run")

if __name__ == "__main__":
    main()
