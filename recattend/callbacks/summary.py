"""The model summary at the start of training, in the log, without FLOPs nobody measured."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger(__name__)


class LoggedModelSummary(ModelSummary):
    """Lightning's plain-text model summary, logged through Python logging (the console and
    Hydra's ``<run dir>/<task>.log``), with the FLOPs column and total only when measured.

    Lightning counts FLOPs only for a module with an ``example_input_array``; the recattend modules
    have none, so its summary shows a column of zeros and "Total FLOPs: 0". Configuring this
    callback also stops Lightning from adding its own summary (``RichModelSummary`` next to a Rich
    progress bar), which prints to the terminal only.

    Args:
        max_depth: layers of submodules listed (``ModelSummary``'s; 0 prints nothing).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            columns = summary_data
        else:
            columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes,
            total_flops, *columns,
        )  # fmt: skip
        if not total_flops:  # its last line is the FLOPs total
            table = table.rsplit("\n", 1)[0]
        log.info("model summary\n%s", table)
