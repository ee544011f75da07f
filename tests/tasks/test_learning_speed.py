"""The learning-speed benchmark's bookkeeping: reading a run's curve, the marks, the table, and
the refusal to time anything on a busy machine."""

from __future__ import annotations

import json

import pytest

from recattend.tasks import learning_speed

CURVE = (
    "minutes,step,val/sbd,val/sbd_std,val/dic,val/dic_std,val/abs_dic,val/abs_dic_std,val/fg_dice\n"
    "9.5,700,0.5,0.1,-1.0,1.0,1.5,0.5,0.9\n"
    "31.0,1400,0.8,0.05,0.25,0.5,0.25,0.25,0.95\n"
    "60.2,2800,0.9,0.04,0.0,0.1,0.125,0.1,0.97\n"
)


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "learning_curve.csv").write_text(CURVE)
    metrics = {"test/sbd": 0.91, "test/sbd_std": 0.03, "test/abs_dic": 0.1, "train/loss": -1.0}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best-step_001400-0.8000.ckpt").touch()  # the test's weights
    return tmp_path


def test_curve_rows_then_the_test_row(run_dir) -> None:
    rows = learning_speed.read_curve(run_dir)
    assert [row["step"] for row in rows] == [700, 1400, 2800, 1400]
    assert rows[1] == {
        "minutes": 31.0,
        "step": 1400,
        "sbd": 0.8,
        "sbd_std": 0.05,
        "abs_dic": 0.25,
        "abs_dic_std": 0.25,
        "dic": 0.25,
        "fg_dice": 0.95,
    }
    assert rows[-1] == {
        "minutes": "test",
        "step": 1400,
        "sbd": 0.91,
        "sbd_std": 0.03,
        "abs_dic": 0.1,
    }


def test_marks_take_the_first_validation_at_or_after_each(run_dir) -> None:
    marks = learning_speed.at_marks(learning_speed.read_curve(run_dir), (5, 30, 60, 90))
    assert marks["5"]["step"] == 700
    assert marks["30"] == {"minutes": 31.0, "step": 1400, "sbd": 0.8, "abs_dic": 0.25}
    assert marks["60"]["step"] == 2800
    assert marks["90"] is None  # the curve ended before 90 minutes


def test_table_in_percent_with_std(run_dir) -> None:
    table = learning_speed.markdown(learning_speed.read_curve(run_dir)).splitlines()
    assert table[3] == "| 31.0 | 1400 | 80.0 (5.0) | 0.25 (0.25) | 95.0 |"
    assert table[-1] == "| test | 1400 | 91.0 (3.0) | 0.10 (0.00) |  |"


def test_a_run_that_never_validated_has_only_its_test_row(tmp_path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"test/sbd": 0.5}))
    assert learning_speed.read_curve(tmp_path) == [{"minutes": "test", "step": "", "sbd": 0.5}]


def test_busy_machine_is_refused_before_anything_runs(monkeypatch, tmp_path) -> None:
    assert learning_speed.busy(1.1, 2) and not learning_speed.busy(0.9, 2)
    monkeypatch.setattr(learning_speed.os, "getloadavg", lambda: (1.8, 1.0, 1.0))
    monkeypatch.setattr(learning_speed.os, "cpu_count", lambda: 2)
    ran = []
    monkeypatch.setattr(learning_speed, "bare_speed", lambda: ran.append("bench") or 1.0)
    with pytest.raises(SystemExit, match="busy .*load average 1.80 on 2 cores.*--allow-busy"):
        learning_speed.main(["synthetic_benchmark", "--out", str(tmp_path / "out")])
    assert not ran and not (tmp_path / "out").exists()


def test_allow_busy_runs_and_writes_curve_table_and_summary(monkeypatch, tmp_path, run_dir) -> None:
    monkeypatch.setattr(learning_speed.os, "getloadavg", lambda: (1.8, 1.0, 1.0))
    monkeypatch.setattr(learning_speed, "bare_speed", lambda: 12.5)
    monkeypatch.setattr(learning_speed, "git_commit", lambda: "abc1234")
    commands = []

    class Done:
        returncode = 0

    def fake_run(command, cwd):  # train.py: the run folder gets the fixture's curve
        commands.append(command)
        target = tmp_path / "out" / "run"
        target.mkdir(parents=True)
        for name in ("learning_curve.csv", "metrics.json"):
            (target / name).write_text((run_dir / name).read_text())
        (target / "checkpoints").mkdir()
        return Done()

    monkeypatch.setattr(learning_speed.subprocess, "run", fake_run)
    out = tmp_path / "out"
    # Options anywhere on the line: here between the experiment and an override.
    summary = learning_speed.main(
        ["leaves_few", "--out", str(out), "module.lr=2e-3", "--allow-busy"]
    )
    assert commands[0][2:] == [
        "experiment=leaves_few",
        "module.lr=2e-3",
        f"hydra.run.dir={out / 'run'}",
    ]
    assert summary["bare_train_images_per_s"] == 12.5 and summary["load_before"] == 1.8
    assert summary["commit"] == "abc1234" and summary["exit_code"] == 0
    assert summary["marks"]["30"]["step"] == 1400 and summary["test"]["sbd"] == 0.91
    assert json.loads((out / "summary.json").read_text())["overrides"] == ["module.lr=2e-3"]
    assert (out / "curve.csv").read_text().splitlines()[0] == (
        "minutes,step,sbd,sbd_std,abs_dic,abs_dic_std,dic,fg_dice"
    )
    assert "| 60.2 | 2800 | 90.0 (4.0) |" in (out / "curve.md").read_text()
