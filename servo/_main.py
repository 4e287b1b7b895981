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
from contextlib import suppress

__all__ = ["Terminated", "defer_signals", "main", "release_signals", "terminate"]


class Terminated(BaseException):
    """SIGTERM (kill, docker stop, a cancelled CI job) arrived: stop like Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    raise Terminated


_arrived: list[int] = []  # signals recorded while deferred


def _record(signum: int, frame: object) -> None:
    _arrived.append(signum)


def defer_signals() -> None:
    """Record SIGINT and SIGTERM instead of acting on them, until `release_signals`.

    While the command line loads and Typer builds the command (it imports pydantic
    then), a signal raised at once lands in whatever runs: a class body (a
    RuntimeError traceback) or importlib's module locks (where it is swallowed and
    the command goes on). Off the main thread (called from code): nothing.
    """
    with suppress(ValueError):
        signal.signal(signal.SIGINT, _record)
        signal.signal(signal.SIGTERM, _record)


def release_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM `Terminated` again; one that arrived
    while deferred ends the process now: 130 / 143 and a line saying so."""
    with suppress(ValueError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, terminate)
    if _arrived:
        word, code = ("terminated", 143) if _arrived[0] == signal.SIGTERM else ("interrupted", 130)
        sys.stdout.flush()
        sys.stderr.write(f"{word} before the command started\n")
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    """Entry point of the `servo` script: signals are deferred before anything heavy
    loads, and released when the command starts (the root callback of the app)."""
    defer_signals()
    from servo.cli import main as command_line

    command_line()
