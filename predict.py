"""Predict instances: ``python predict.py ckpt_path=... input=photos/ output=out/``.

A thin entry point; the work is done by :func:`recattend.tasks.predict.run`, the command line
(``--help``, errors that suggest the key meant) by :func:`recattend.utils.cli.hydra_main`.
"""

from recattend.utils.cli import hydra_main

main = hydra_main("predict", "recattend.tasks.predict:run")

if __name__ == "__main__":
    main()
