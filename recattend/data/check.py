"""Check a dataset folder before training on it.

``python -m recattend.data.check dataset=cvppp dataset.root=/data/A1`` (or
``make check-data ARGS="dataset=cvppp dataset.root=/data/A1"``) composes the same config as
``train.py`` with the given overrides, walks every split, decodes every file and prints counts,
instance statistics, original sizes and every problem found (missing label, size mismatch,
unreadable or truncated file, a count that disagrees with the dataset's index). The exit status is
1 when there is a problem, so scripts can stop before training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_module

import recattend.utils.hydra  # noqa: F401  (registers the configs' resolvers)
from recattend.data.files import FileDataModule
from recattend.utils.config import instantiate_data


def format_report(name: str, report: dict[str, Any]) -> str:
    """Human-readable lines of :meth:`FileDataModule.check`'s report."""
    lines = [f"{name} at {report.get('root', '?')}"]
    for split in ("train", "val", "test"):
        info = report[split]
        line = f"  {split}: {info['images']} image(s)"
        if info.get("instances"):
            low, mean, high = info["instances"]
            line += f", instances per image min {low} / mean {mean:.1f} / max {high}"
        if info.get("sizes"):
            line += ", sizes " + ", ".join(f"{h}x{w}" for h, w in info["sizes"])
        lines.append(line)
        lines += [f"    problem: {p}" for p in info["problems"]]
    total = sum(len(report[s]["problems"]) for s in ("train", "val", "test"))
    lines.append("no problems found" if not total else f"{total} problem(s) found")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    with initialize_config_module("recattend.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule, _ = instantiate_data(cfg.dataset)
    if not isinstance(datamodule, FileDataModule):
        print(f"{type(datamodule).__name__} reads no files: nothing to check")
        return 0
    report = {"root": datamodule.root, **datamodule.check()}
    print(format_report(type(datamodule).__name__, report))
    return 1 if any(report[s]["problems"] for s in ("train", "val", "test")) else 0


if __name__ == "__main__":
    sys.exit(main())
