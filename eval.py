"""Evaluate a checkpoint: ``python eval.py ckpt_path=outputs/.../last.ckpt [dataset=...]``.

A thin entry point; the work is done by :func:`recattend.tasks.eval.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.cli import hydra_main

main = hydra_main("eval", "recattend.tasks.eval:run")

if __name__ == "__main__":
    main()
