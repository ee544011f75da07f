"""Which run ``ckpt_path=last`` resumes: the newest run of the task started with the same
overrides as the command, those free to differ aside (:func:`recattend.utils.hydra.run_dir` asks;
the training task logs the choice, :func:`resume_choice`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

# Overrides that may differ between a run and the command that resumes it with ckpt_path=last:
# the resume itself, how long to train, whether to test at the end, and where and how to log.
# Keys are matched as written (``trainer.max_steps``); group roots match the group and all its
# keys (``logger=csv``, ``logger.wandb.offline=false``, ``paths.log_dir=...``, ``hydra.*``).
RESUME_FREE_KEYS = frozenset(
    {"ckpt_path", "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "test", "tags"}
)
RESUME_FREE_GROUPS = frozenset({"logger", "paths", "hydra"})


def _resume_free(key: str) -> bool:
    root = key.split("@")[0].replace("/", ".").split(".")[0]
    return key in RESUME_FREE_KEYS or root in RESUME_FREE_GROUPS


def override_settings(overrides: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """``{key: (value, as written)}`` of command-line overrides, less the resume-free ones.

    Keys lose Hydra's ``+``/``++`` prefixes and keep a package (``model@net``); values are parsed,
    so ``x=[1,2]`` equals ``x=[1, 2]``; a deletion ``~key`` has the value ``"~"``.
    """
    settings: dict[str, tuple[Any, str]] = {}
    parser = OverridesParser.create()
    for line in overrides:
        line = str(line)
        try:
            (override,) = parser.parse_overrides([line])
            key = override.key_or_group + (f"@{override.package}" if override.package else "")
            value = "~" if override.is_delete() else override.value()
        except Exception:  # not Hydra's syntax: compare the text
            key, _, value = line.lstrip("+~").partition("=")
        if not _resume_free(key):
            settings[key] = (value, line)
    return settings


def _differences(run: dict[str, tuple[Any, str]], here: dict[str, tuple[Any, str]]) -> str:
    """How a run's overrides differ from this command's, e.g.
    ``model=iter1 (this command: model=full); seed=1 (this command: not set)``."""
    parts = []
    for key in sorted(run.keys() | here.keys()):
        if key in run and key in here and run[key][0] == here[key][0]:
            continue
        theirs = run[key][1] if key in run else f"{key} not set"
        ours = here[key][1] if key in here else "not set"
        parts.append(f"{theirs} (this command: {ours})")
    return "; ".join(parts)


def _saved_overrides(run: Path) -> list[str] | None:
    """The task overrides a run folder was started (or last resumed) with, or None if unknown."""
    try:
        saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None


@dataclass(frozen=True)
class ResumeChoice:
    """What ``ckpt_path=last`` picked under ``runs``: ``run``, and the runs with a newer
    ``last.ckpt`` that it passed over because their overrides differ (``(run, how)``, newest
    first)."""

    runs: Path
    run: Path
    passed_over: tuple[tuple[Path, str], ...] = ()

    def messages(self) -> list[tuple[int, str]]:
        """``(logging level, message)`` pairs: which run is resumed, and a warning naming the
        newer runs it passed over and how to resume one of them instead."""
        out = [
            (
                logging.INFO,
                f"ckpt_path=last: resuming run {self.run}, the newest run under {self.runs} with "
                "this command's overrides",
            )
        ]
        if self.passed_over:
            newest = self.passed_over[0][0] / "checkpoints" / "last.ckpt"
            listed = "\n".join(f"  {run}: {how}" for run, how in self.passed_over[:10])
            more = len(self.passed_over) - 10
            out.append(
                (
                    logging.WARNING,
                    f"ckpt_path=last: the newest last.ckpt ({newest}) belongs to a run with other "
                    f"overrides, so {self.run} is resumed instead. Newer runs passed over:\n"
                    f"{listed}" + (f"\n  ... and {more} more" if more > 0 else "") + "\nTo "
                    f"resume one of them, pass its checkpoint: ckpt_path={newest}",
                )
            )
        return out


# ckpt_path=last choices made in this process, by run folder (for the task to log once logging is
# set up) and by arguments (so every resolution of hydra.run.dir in a process gives one folder).
_CHOICES: dict[Path, ResumeChoice] = {}
_RESOLVED: dict[tuple[str, tuple[str, ...] | None], str] = {}


def resume_choice(run: str | os.PathLike[str]) -> ResumeChoice | None:
    """What ``ckpt_path=last`` chose when it picked the run folder ``run`` in this process."""
    return _CHOICES.get(Path(os.path.abspath(run)))


def last_run(runs: str, overrides: Sequence[str] | None) -> str:
    """The run folder ``ckpt_path=last`` resumes (see :func:`run_dir`)."""
    key = (runs, None if overrides is None else tuple(str(o) for o in overrides))
    if key in _RESOLVED:
        return _RESOLVED[key]
    found = sorted(
        (p.parent.parent for p in Path(runs).glob("*/checkpoints/last.ckpt")),
        key=lambda run: (run / "checkpoints" / "last.ckpt").stat().st_mtime,
        reverse=True,
    )
    if not found:
        raise ValueError(
            f"ckpt_path=last: no run under '{runs}' has checkpoints/last.ckpt to resume. Pass "
            "the checkpoint itself (ckpt_path=<run>/checkpoints/<file>.ckpt), or check "
            "task_name and paths.log_dir (RECATTEND_OUTPUTS)"
        )
    if overrides is None:
        chosen, passed_over = found[0], []
    else:
        here = override_settings(overrides)
        chosen, passed_over = None, []
        for run in found:
            saved = _saved_overrides(run)
            if saved is None:
                passed_over.append((run, "its overrides are unknown (no .hydra/overrides.yaml)"))
                continue
            differences = _differences(override_settings(saved), here)
            if not differences:
                chosen = run
                break
            passed_over.append((run, differences))
        if chosen is None:
            listed = "\n".join(f"  {run}: {why}" for run, why in passed_over[:10])
            more = len(passed_over) - 10
            raise ValueError(
                f"ckpt_path=last: no run under '{runs}' with this command's overrides has "
                "checkpoints/last.ckpt. Runs with a last.ckpt, newest first, and how they differ:"
                f"\n{listed}" + (f"\n  ... and {more} more" if more > 0 else "") + "\nResume one "
                "with its overrides (only ckpt_path, trainer.max_steps/max_epochs/max_time, test, "
                "tags, logger, paths and hydra settings may differ), or pass its checkpoint: "
                "ckpt_path=<run>/checkpoints/last.ckpt"
            )
    choice = ResumeChoice(Path(runs), chosen, tuple(passed_over))
    _CHOICES[Path(os.path.abspath(chosen))] = choice
    _RESOLVED[key] = str(chosen)
    return str(chosen)
