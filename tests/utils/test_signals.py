"""Ctrl-C while an entry point loads: one line and exit status 130, then Python's default again."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from recattend.utils.signals import restore_ctrl_c, stop_quietly_on_ctrl_c

# Ctrl-C inside a library's bare `except:` (as around optional imports) must still stop.
LOADING = """
import os, signal, time
from recattend.utils.signals import stop_quietly_on_ctrl_c
stop_quietly_on_ctrl_c()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except BaseException:
    pass
print("went on")
"""


def test_ctrl_c_while_loading_exits_130_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-c", LOADING], capture_output=True, text=True)
    assert done.returncode == 130
    assert done.stdout == ""
    assert done.stderr == "Stopped by Ctrl-C before the run could save anything. Exit status 130.\n"


@pytest.fixture
def sigint_handler():
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_restore_gives_keyboard_interrupt_back(sigint_handler) -> None:
    stop_quietly_on_ctrl_c()
    restore_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_restore_leaves_anyone_elses_handler(sigint_handler) -> None:
    def handler(signum, frame) -> None:
        pass

    signal.signal(signal.SIGINT, handler)
    restore_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is handler
