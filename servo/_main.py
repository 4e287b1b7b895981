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

__all__ = ["Terminated", "main", "terminate"]


class Terminated(BaseException):
    """SIGTERM (kill, docker stop, a cancelled CI job) arrived: stop like Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    """Entry point of the `servo` script.

    A signal while the command line loads is recorded, not raised: raised, it lands
    in whatever runs, a class body (a RuntimeError traceback) or importlib's module
    locks (where it is swallowed). Once loaded, the process stops with 130 / 143.
    """
    arrived: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: arrived.append(signum))
    from servo.cli import main as command_line

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    if arrived:
        word, code = ("terminated", 143) if arrived[0] == signal.SIGTERM else ("interrupted", 130)
        sys.stderr.write(f"{word} before the command started\n")
        sys.stderr.flush()
        os._exit(code)
    command_line()
