"""Lightning's Rich progress bar with a few key metrics instead of every logged one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from recattend.callbacks.bootstrap import running_stage


class KeyMetricsProgressBar(RichProgressBar):
    """A ``RichProgressBar`` showing the bootstrap stage and the ``metrics`` logged so far.

    The segmenter puts every loss term and every validation metric with its std on the bar (about
    20 values); this one shows the stage (when :class:`~recattend.callbacks.BootstrapStages` runs
    stages) and the named metrics present, in that order. Everything stays in the loggers
    (``csv/metrics.csv``, W&B). The bar's time estimate covers one epoch; the whole run's is in
    the :class:`~recattend.callbacks.ProgressReport` lines.

    Args:
        metrics: logged names to show when present; repeats are dropped.
        **kwargs: ``RichProgressBar``'s (``refresh_rate``, ``leave``, ``theme``,
            ``console_kwargs``).
    """

    def __init__(self, metrics: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = list(dict.fromkeys(metrics))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        logged = trainer.progress_bar_metrics
        shown: dict[str, Any] = {name: logged[name] for name in self.metrics if name in logged}
        stage = running_stage(trainer)[0]
        return shown if stage is None else {"stage": stage, **shown}
