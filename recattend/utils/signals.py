"""Ctrl-C while an entry point is still loading its libraries (Hydra, PyTorch: seconds on a busy
machine) stops with the same one line and exit status 130 as a Ctrl-C later, not with a traceback
from inside an import. Standard library only, so that it can be installed first."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn


def _line(reason: str) -> str:
    why = f": {reason}" if reason else " before the run could save anything"
    return f"Stopped by Ctrl-C{why}. Exit status 130.\n"


def stopped_by_ctrl_c(reason: str = "") -> NoReturn:
    """Say that Ctrl-C stopped the program (and why, if ``reason`` says), and exit with 130."""
    sys.stderr.write(_line(reason))
    sys.exit(130)


def _on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    # os._exit: an exception raised here could be caught by a library's bare ``except:`` around
    # an optional import, and the program would go on as if nothing had been asked.
    sys.stderr.write(_line(""))
    sys.stderr.flush()
    os._exit(130)


def stop_quietly_on_ctrl_c() -> None:
    """Until :func:`restore_ctrl_c`: Ctrl-C exits at once (status 130) with the line of
    :func:`stopped_by_ctrl_c`; nothing has been written yet that would need saving."""
    signal.signal(signal.SIGINT, _on_ctrl_c)


def restore_ctrl_c() -> None:
    """Ctrl-C raises ``KeyboardInterrupt`` again (Python's default), if
    :func:`stop_quietly_on_ctrl_c` had replaced it; a handler set by anyone else stays."""
    if signal.getsignal(signal.SIGINT) is _on_ctrl_c:
        signal.signal(signal.SIGINT, signal.default_int_handler)
