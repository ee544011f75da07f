"""Paper-style tables of final metrics, for one run or a whole sweep.

``python -m recattend.report <folder> [<folder> ...] [--table kitti_ablation] [--split val]``
reads the ``metrics.json`` and ``.hydra/overrides.yaml`` of every job of each multirun folder (or
of each run folder itself) and prints a Table 4-style markdown table: one row per job, labelled
with the overrides that distinguish it from the other jobs, on the paper table's split
(``--split`` overrides it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import yaml

# (column title, mean key, std key, scale, decimals), in display order: percentages with one
# decimal (SBD 84.9), counts per image with two (|DiC| 0.80) or, as KITTI's table, three (AvgFP).
COLUMNS = (
    ("SBD (%)", "sbd", "sbd_std", 100.0, 1),
    ("\\|DiC\\|", "abs_dic", "abs_dic_std", 1.0, 2),
    ("DiC", "dic", "dic_std", 1.0, 2),
    ("SBD rec-attend (%)", "sbd_recattend", "sbd_recattend_std", 100.0, 1),
    ("FgBgDice (%)", "fg_dice", "fg_dice_std", 100.0, 1),
    ("MWCov (%)", "mwcov", "mwcov_std", 100.0, 1),
    ("MUCov (%)", "mucov", "mucov_std", 100.0, 1),
    ("AvgFP", "fp", "fp_std", 1.0, 3),
    ("AvgFN", "fn", "fn_std", 1.0, 3),
    ("AP (%)", "ap", None, 100.0, 1),
    ("AP50% (%)", "ap50", None, 100.0, 1),
    ("AP75 (%)", "ap75", None, 100.0, 1),
    ("AR100 (%)", "ar100", None, 100.0, 1),
    ("Mask AP (%)", "mask_ap", None, 100.0, 1),
    ("Mask AP50 (%)", "mask_ap50", None, 100.0, 1),
    ("FG IoU (%)", "fg_iou", None, 100.0, 1),
    ("Angle acc. (%)", "angle_acc", None, 100.0, 1),
)


class PaperTable(NamedTuple):
    """A paper table's layout: its columns (mean keys of :data:`COLUMNS`) and those it prints as
    "mean (std)"; the others show the mean alone."""

    columns: tuple[str, ...]
    with_std: tuple[str, ...] = ()
    split: str = "test"  # the split the paper's table reports


# The paper's table layouts (``paper_table`` of a dataset's DataModule); other metrics stay in
# metrics.json and per_image.csv.
TABLES = {
    "cvppp": PaperTable(("sbd", "abs_dic", "dic"), with_std=("sbd", "abs_dic", "dic")),  # Table 1
    "kitti": PaperTable(("mwcov", "mucov", "fp", "fn")),  # Table 2
    # Table 4 (the ablations): KITTI's columns on its validation split, which the KITTI recipe
    # scores with the tested weights (final_validation).
    "kitti_ablation": PaperTable(("mwcov", "mucov", "fp", "fn"), split="val"),
    "cityscapes": PaperTable(("ap", "ap50")),  # Table 3
    "coco": PaperTable(("ap", "ap50", "ap75", "ar100")),
    "preprocessor": PaperTable(("fg_iou", "angle_acc")),
}


def metrics_table(
    metrics: Mapping[str, float | None], split: str, name: str, table: str | None = None
) -> str:
    """A markdown table of ``<split>/<metric>`` values, one row named ``name``.

    Columns appear only for metrics present, limited to the paper ``table``'s when one is named
    (:data:`TABLES`, with the std where that table prints it; without a table, wherever it was
    measured); SBD is official CVPPP (relabelled), in percent.
    """
    return rows_table([(name, metrics)], split, table)


def rows_table(
    rows: Sequence[tuple[str, Mapping[str, float | None]]], split: str, table: str | None = None
) -> str:
    """A markdown table with one row per (name, metrics); a column per metric any row has
    (among the paper ``table``'s columns when one is named, with the std only where that table
    prints it). A row without a value shows "-"."""
    if table is not None and table not in TABLES:
        raise ValueError(f"unknown table '{table}'; known: {sorted(TABLES)}")
    present = [
        column
        for column in COLUMNS
        if any(metrics.get(f"{split}/{column[1]}") is not None for _, metrics in rows)
    ]
    # The paper table's columns, or every metric present (std included) when none of them was
    # measured.
    layout = TABLES.get(table or "")
    columns = [c for c in present if layout and c[1] in layout.columns]
    if not columns:
        columns, layout = present, None
    lines = [["run", *(title for title, *_ in columns)], ["---"] * (len(columns) + 1)]
    for name, metrics in rows:
        cells = [name]
        for _, mean_key, std_key, scale, digits in columns:
            mean = metrics.get(f"{split}/{mean_key}")
            shows_std = std_key and (layout is None or mean_key in layout.with_std)
            std = metrics.get(f"{split}/{std_key}") if shows_std else None
            cells.append(
                "-"
                if mean is None
                else f"{mean * scale:.{digits}f}"
                + ("" if std is None else f" ({std * scale:.{digits}f})")
            )
        lines.append(cells)
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def sweep_table(*folders: str | Path, split: str | None = None, table: str | None = None) -> str:
    """The table of multirun folders (and run folders): one row per job that wrote
    ``metrics.json``, on ``split`` (None: the paper ``table``'s split, else ``test``).

    Rows are labelled by the overrides that differ between jobs (all of a job's overrides when
    there is only one), folder by folder in the order given, each multirun's in job-number order.

    Raises:
        FileNotFoundError: a folder that is neither a finished run nor holds one.
    """
    jobs = []
    for folder in map(Path, folders):
        found = [folder] if (folder / "metrics.json").is_file() else sorted(
            (p.parent for p in folder.glob("*/metrics.json")),
            key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
        )  # fmt: skip
        if not found:
            raise FileNotFoundError(
                f"no metrics.json in '{folder}' or its job folders: pass the folder of a "
                "finished multirun (e.g. outputs/train/multiruns/<date>_<time>) or run"
            )
        jobs += found
    overrides = []
    for job in jobs:
        path = job / ".hydra" / "overrides.yaml"
        overrides.append(yaml.safe_load(path.read_text()) or [] if path.exists() else [])
    shared = set.intersection(*(set(o) for o in overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, job_overrides in zip(jobs, overrides, strict=True):
        label = " ".join(o for o in job_overrides if o not in shared) or job.name
        rows.append((label, json.loads((job / "metrics.json").read_text())))
    if split is None:
        split = TABLES[table].split if table in TABLES else "test"
    return rows_table(rows, split, table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recattend.report", description="Table 4-style table of runs."
    )
    parser.add_argument(
        "folders", type=Path, nargs="+", help="multirun folders (hold 0/, 1/, ...) or run folders"
    )
    parser.add_argument(
        "--split", help="metric prefix to report (default: the --table's split, else test)"
    )
    parser.add_argument("--table", choices=sorted(TABLES), help="only this paper table's columns")
    args = parser.parse_args(argv)
    try:
        print(sweep_table(*args.folders, split=args.split, table=args.table))
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
