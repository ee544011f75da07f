"""Stopping ``python train.py`` as a user or a scheduler does while it trains: a signal to the
whole process group (Ctrl-C in a terminal, SLURM's SIGTERM), or ``kill`` of the process that the
user started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, TINY


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group", "overrides"),
    [
        # A DataLoader worker, which gets the signal too.
        (signal.SIGTERM, True, ["dataset.num_workers=1"]),
        (signal.SIGINT, True, ["dataset.num_workers=1"]),
        # The launching process of ddp_spawn: it passes the request on to its 2 workers
        # (no validation: a stop before or after the first one would test different things).
        (
            signal.SIGTERM,
            False,
            ["trainer=ddp_sim", "dataset.num_train=16", "+trainer.limit_val_batches=0"],
        ),
    ],
    ids=["SIGTERM to the group", "Ctrl-C", "kill of the ddp_spawn launcher"],
)
def test_a_signal_saves_and_says_how_to_resume(
    tmp_path: Path, offline_env: dict[str, str], signum: int, group: bool, overrides: list[str]
) -> None:
    run, started = tmp_path / "run", tmp_path / "started"
    command = [
        sys.executable,
        "train.py",
        *(o for o in TINY if not o.startswith("trainer.max_epochs=")),
        "trainer.max_epochs=1000",  # far longer than the test waits
        *overrides,
        "logger=csv",
        "+callbacks.started._target_=tests.callbacks.test_interrupt.MarkStarted",
        f"+callbacks.started.path={started}",
        f"hydra.run.dir={run}",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **offline_env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal or srun gives it
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "training did not start: " + (
            process.communicate()[0][-3000:] if process.poll() is not None else "timeout"
        )
        (os.killpg if group else os.kill)(process.pid, signum)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signum, output[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["signal"] == signal.Signals(signum).name
    assert metrics["step"] == step >= int(started.read_text())
    assert "Resume with:" in output and f"ckpt_path={last}" in output
    assert "Traceback" not in output
