"""The learning-speed benchmark (``make learning-speed``; not a test).

``python -m recattend.tasks.learning_speed EXPERIMENT [OVERRIDE ...] [--allow-busy] [--out DIR]``
trains one recipe alone on this machine and writes how fast it learned. The regimes are recipes:

* ``synthetic_benchmark``: 20,000 rendered rosettes, 60 minutes, with the fastest-learning
  settings found (docs/learning-speed.md);
* ``leaves_few``: 100 training images of 11-20 leaves at 224x224, T = 21, 60 minutes from
  scratch (``few_images``: the same data from the shipped weights, ``cvppp_fast``'s schedule).

Any Hydra override may follow the name (the arm of an A/B, e.g. ``module.lr=2e-3``). The script

1. refuses to start while the machine is busy (1-minute load average above half a core per core;
   ``--allow-busy`` records the load and goes on): a curve taken beside another job measures that
   job too;
2. measures the machine's bare speed, the synthetic configuration's training images/s
   (:func:`recattend.tasks.bench.in_fresh_process`, as ``make bench`` measures it), so curves
   from other machines can be set side by side;
3. runs ``train.py experiment=EXPERIMENT OVERRIDE ...`` in a child process into
   ``DIR/run`` (default ``outputs/learning_speed/<experiment>/<timestamp>``);
4. writes ``DIR/curve.csv`` (minutes, step, held-out SBD and |DiC| with their std, one row per
   validation, then a ``test`` row: the test split scored with the best checkpoint, at its
   step), ``DIR/curve.md`` (the same as a table) and ``DIR/summary.json`` (the command, commit,
   bare speed, load averages, the held-out SBD and |DiC| first reached at or after 15, 30, 45
   and 60 minutes, the test figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKS = (15, 30, 45, 60)  # minutes at which summary.json reads the curve
BUSY_LOAD_PER_CORE = 0.5  # 1-minute load average per core above which the machine counts as busy
COLUMNS = ("sbd", "sbd_std", "abs_dic", "abs_dic_std", "dic", "fg_dice")


def busy(load: float, cores: int) -> bool:
    """Whether a 1-minute load average of ``load`` on ``cores`` cores means another job runs."""
    return load > BUSY_LOAD_PER_CORE * cores


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The run's held-out curve (``learning_curve.csv``) then its ``test`` row (``metrics.json``),
    each ``{"minutes", "step", <COLUMNS>}``; a run that stopped before validating gives no rows
    but the test row, a run without test metrics no test row. The test row's step is the best
    checkpoint's (``checkpoints/best-step_<step>-*.ckpt``), which the test split scored; empty
    when there is none."""
    rows: list[dict[str, Any]] = []
    curve = run_dir / "learning_curve.csv"
    if curve.exists():
        with curve.open() as file:
            for raw in csv.DictReader(file):
                row: dict[str, Any] = {"minutes": float(raw["minutes"]), "step": int(raw["step"])}
                row.update({k: float(raw[f"val/{k}"]) for k in COLUMNS if f"val/{k}" in raw})
                rows.append(row)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        if "test/sbd" in metrics:
            best = sorted((run_dir / "checkpoints").glob("best-step_*.ckpt"))
            step = int(best[-1].name.split("_")[1].split("-")[0]) if best else ""
            test: dict[str, Any] = {"minutes": "test", "step": step}
            test.update({k: float(metrics[f"test/{k}"]) for k in COLUMNS if f"test/{k}" in metrics})
            rows.append(test)
    return rows


def at_marks(rows: list[dict[str, Any]], marks: tuple[int, ...] = MARKS) -> dict[str, Any]:
    """For each mark (minutes), the first held-out row at or after it (None when the curve ends
    before): ``{"30": {"minutes", "step", "sbd", "abs_dic"}, ...}``."""
    held_out = [row for row in rows if row["minutes"] != "test"]
    out: dict[str, Any] = {}
    for mark in marks:
        row = next((r for r in held_out if r["minutes"] >= mark), None)
        out[str(mark)] = (
            None if row is None else {k: row.get(k) for k in ("minutes", "step", "sbd", "abs_dic")}
        )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """The curve as a Markdown table: minutes, step, SBD (%) (std), |DiC| (std), FgBgDice (%)."""
    lines = [
        "| minutes | step | SBD (%) | \\|DiC\\| | FgBgDice (%) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        sbd = f"{100 * row['sbd']:.1f} ({100 * row.get('sbd_std', 0):.1f})" if "sbd" in row else ""
        dic = f"{row['abs_dic']:.2f} ({row.get('abs_dic_std', 0):.2f})" if "abs_dic" in row else ""
        fg = f"{100 * row['fg_dice']:.1f}" if "fg_dice" in row else ""
        lines.append(f"| {row['minutes']} | {row['step']} | {sbd} | {dic} | {fg} |")
    return "\n".join(lines) + "\n"


def bare_speed() -> float:
    """Training images/s of the synthetic configuration (128x128, T = 11, batch 8), measured in a
    fresh process as ``make bench`` does."""
    from recattend.tasks.bench import in_fresh_process

    return float(in_fresh_process("synthetic", 8, {})["train_images_per_s"])


def git_commit() -> str | None:
    """The checkout's commit (with ``+`` when files differ from it), None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (commit + ("+" if dirty else "")) or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="the recipe: synthetic_benchmark, leaves_few, ...")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train.py")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument(
        "--allow-busy", action="store_true", help="run even when the machine is busy"
    )
    return parser.parse_intermixed_args(argv)  # options anywhere, e.g. between overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    if busy(load_before, cores) and not args.allow_busy:
        sys.exit(
            f"the machine is busy (1-minute load average {load_before:.2f} on {cores} cores): a "
            "learning curve taken now would measure the other jobs too. Stop them and wait a "
            "minute, or pass --allow-busy to record the load and run anyway."
        )
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or ROOT / "outputs" / "learning_speed" / args.experiment / stamp
    out.mkdir(parents=True, exist_ok=True)
    speed = bare_speed()
    print(f"bare speed: {speed:.1f} training images/s (synthetic, 128x128, T = 11, batch 8)")
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"experiment={args.experiment}",
        *args.overrides,
        f"hydra.run.dir={out / 'run'}",
    ]
    print("running:", " ".join(command[1:]))
    code = subprocess.run(command, cwd=ROOT).returncode
    rows = read_curve(out / "run")
    with (out / "curve.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["minutes", "step", *COLUMNS], restval="")
        writer.writeheader()
        writer.writerows(rows)
    (out / "curve.md").write_text(markdown(rows))
    summary = {
        "experiment": args.experiment,
        "overrides": args.overrides,
        "commit": git_commit(),
        "cores": cores,
        "bare_train_images_per_s": speed,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "exit_code": code,
        "marks": at_marks(rows),
        "test": next((row for row in rows if row["minutes"] == "test"), None),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(rows))
    print(f"curve, table and summary in {out}")
    if code:
        sys.exit(code)
    return summary


if __name__ == "__main__":
    main()
