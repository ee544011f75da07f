"""Paper-style tables of final metrics."""

from __future__ import annotations

from collections.abc import Mapping

# (column title, mean key, std key, scale): CVPPP's Table 1 columns first, then the signed count.
COLUMNS = (
    ("SBD (%)", "sbd", "sbd_std", 100.0),
    ("\\|DiC\\|", "abs_dic", "abs_dic_std", 1.0),
    ("DiC", "dic", "dic_std", 1.0),
    ("FG IoU (%)", "fg_iou", None, 100.0),
    ("Angle acc. (%)", "angle_acc", None, 100.0),
)


def metrics_table(metrics: Mapping[str, float | None], split: str, name: str) -> str:
    """A markdown table of ``<split>/<metric>`` values as mean (std), one row named ``name``.

    Columns appear only for metrics present; SBD is official CVPPP (relabelled), in percent.
    """
    head, cells = ["run"], [name]
    for title, mean_key, std_key, scale in COLUMNS:
        mean = metrics.get(f"{split}/{mean_key}")
        if mean is None:
            continue
        std = metrics.get(f"{split}/{std_key}") if std_key else None
        head.append(title)
        cells.append(f"{mean * scale:.1f}" + ("" if std is None else f" ({std * scale:.1f})"))
    rule = ["---"] * len(head)
    return "\n".join("| " + " | ".join(row) + " |" for row in (head, rule, cells))
