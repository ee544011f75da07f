"""Evaluate a checkpoint: ``python eval.py ckpt_path=outputs/.../last.ckpt [dataset=...]``.

A thin entry point; the work is done by :func:`recattend.tasks.eval.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.signals import stop_quietly_on_ctrl_c

stop_quietly_on_ctrl_c()  # while the libraries below load; hydra_main's main() takes over

from recattend.utils.cli import hydra_main  # noqa: E402

main = hydra_main("eval", "recattend.tasks.eval:run")

if __name__ == "__main__":
    main()
