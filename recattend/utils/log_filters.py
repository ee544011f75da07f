"""Known, harmless messages of the libraries a run uses, silenced one by one.

Each filter matches one message of one library, so anything else they say still shows:

* Lightning's advertising tips, "💡 Tip: For seamless cloud ... try installing [litlogger]" (every
  Trainer) and "... [litmodels]" (a Trainer that adds its own ModelCheckpoint), and its note
  "Trainer already configured with model summary callbacks: ..." (the configured
  :class:`~recattend.callbacks.LoggedModelSummary` replaces its default on purpose), all logged
  by ``rank_zero_info`` on the logger ``lightning.pytorch.utilities.rank_zero``.
* torch's ``FutureWarning`` "`isinstance(treespec, LeafSpec)` is deprecated", which Lightning's
  ``lightning/pytorch/utilities/_pytree.py`` triggers by building a ``LeafSpec`` (torch marks the
  class ``@deprecated``); Lightning has to change, not us.

Lightning's own console handler goes too: the ``lightning`` package logger prints every message
as "INFO: ..." and also passes it on to the root logger, whose handlers (Hydra's console and
``<task>.log``) print it again. When the root logger has handlers, Lightning's is removed, so
each message appears once, formatted like the rest, and is still written to the log file.

Two more are stopped where they start rather than filtered: W&B's "The anonymous setting has no
effect" (:class:`recattend.utils.loggers.WandbLogger` does not pass Lightning's
``anonymous=None``) and the model summary's "Total FLOPs: 0"
(:class:`recattend.callbacks.LoggedModelSummary`).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
# The beginnings of the Lightning messages dropped (module docstring).
LIGHTNING_INFO_DROPPED = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
    "Trainer already configured with model summary callbacks: ",
)


class _LightningInfo(logging.Filter):
    """Drops the Lightning messages that begin as one of :data:`LIGHTNING_INFO_DROPPED`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_INFO_DROPPED)


def silence_known_noise() -> None:
    """Install the filters of the module docstring in this process (again: no effect)."""
    lightning = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _LightningInfo) for f in lightning.filters):
        lightning.addFilter(_LightningInfo())
    if logging.getLogger().handlers:  # the root's print it: Lightning's own would print it twice
        package = logging.getLogger("lightning")
        for handler in list(package.handlers):
            if type(handler) is logging.StreamHandler:
                package.removeHandler(handler)
    warnings.filterwarnings(  # filterwarnings drops an identical filter before adding it
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
