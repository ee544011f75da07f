"""Paper-style tables of final metrics, for one run or a whole sweep.

``python -m recattend.report <multirun dir> [--split test]`` reads every job's ``metrics.json``
and ``.hydra/overrides.yaml`` and prints a Table 4-style markdown table: one row per job, labelled
with the overrides that distinguish it from the other jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

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
    return rows_table([(name, metrics)], split)


def rows_table(rows: Sequence[tuple[str, Mapping[str, float | None]]], split: str) -> str:
    """A markdown table with one row per (name, metrics); a column per metric any row has.

    A row without a value shows "-".
    """
    columns = [
        column
        for column in COLUMNS
        if any(metrics.get(f"{split}/{column[1]}") is not None for _, metrics in rows)
    ]
    lines = [["run", *(title for title, *_ in columns)], ["---"] * (len(columns) + 1)]
    for name, metrics in rows:
        cells = [name]
        for _, mean_key, std_key, scale in columns:
            mean = metrics.get(f"{split}/{mean_key}")
            std = metrics.get(f"{split}/{std_key}") if std_key else None
            cells.append(
                "-"
                if mean is None
                else f"{mean * scale:.1f}" + ("" if std is None else f" ({std * scale:.1f})")
            )
        lines.append(cells)
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def sweep_table(sweep_dir: str | Path, split: str = "test") -> str:
    """The table of a multirun folder: one row per job that wrote ``metrics.json``.

    Rows are labelled by the overrides that differ between jobs (all of a job's overrides when
    it is the only one), in job-number order.

    Raises:
        FileNotFoundError: no job folder with a ``metrics.json`` under ``sweep_dir``.
    """
    folder = Path(sweep_dir)
    jobs = sorted(
        (p.parent for p in folder.glob("*/metrics.json")),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not jobs:
        raise FileNotFoundError(
            f"no <job>/metrics.json under '{folder}': pass the folder of a finished multirun, "
            "e.g. outputs/train/multiruns/<date>_<time>"
        )
    overrides = []
    for job in jobs:
        path = job / ".hydra" / "overrides.yaml"
        overrides.append(yaml.safe_load(path.read_text()) or [] if path.exists() else [])
    shared = set.intersection(*(set(o) for o in overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, job_overrides in zip(jobs, overrides, strict=True):
        label = " ".join(o for o in job_overrides if o not in shared) or job.name
        rows.append((label, json.loads((job / "metrics.json").read_text())))
    return rows_table(rows, split)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recattend.report", description="Table 4-style table of a multirun."
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (holds 0/, 1/, ...)")
    parser.add_argument("--split", default="test", help="metric prefix to report (default test)")
    args = parser.parse_args(argv)
    try:
        print(sweep_table(args.sweep_dir, args.split))
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
