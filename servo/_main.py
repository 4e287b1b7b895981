"""The `servo` console script: signal handling first, then the command line's modules.

Loading the command line (Typer, Rich, the engine) takes a good part of a second. A
Ctrl-C or SIGTERM in that time used to end the process with a KeyboardInterrupt
traceback, or killed by the signal with nothing said. This module imports nothing
heavy, so the handling is in place before that loading starts.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

__all__ = ["Terminated", "main", "terminate"]


class Terminated(BaseException):
    """SIGTERM (kill, docker stop, a cancelled CI job) arrived: stop like Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    """Entry point of the `servo` script."""
    signal.signal(signal.SIGTERM, terminate)
    try:
        from servo.cli import main as command_line
    except KeyboardInterrupt:
        _stopped("interrupted", 130)
    except Terminated:
        _stopped("terminated", 143)
    command_line()


def _stopped(word: str, code: int) -> NoReturn:
    sys.stderr.write(f"{word} before the command started\n")
    sys.stderr.flush()
    os._exit(code)
