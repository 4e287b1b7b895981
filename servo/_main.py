"""The `servo` console script: signals are held before the command line's modules load.

Loading the command line (Typer, Rich, the engine) takes a good part of a second, and
Typer imports pydantic while it builds the command. A Ctrl-C or SIGTERM raised then
lands in whatever runs (a class body, importlib's locks) and used to end the process
with a traceback, be swallowed, or kill it with nothing said. This module imports
nothing heavy: it records signals until the command starts (`release_signals`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any

__all__ = ["Handlers", "Terminated", "defer_signals", "handle_signals", "main", "release_signals", "restore_signals", "terminate"]


class Terminated(BaseException):
    """SIGTERM (kill, docker stop, a cancelled CI job) arrived: stop like Ctrl-C."""


def terminate(signum: int, frame: object) -> None:
    raise Terminated


Handlers = list[tuple[int, Any]]


def handle_signals(handler: Callable[[int, Any], None]) -> Handlers:
    """Handle SIGINT and SIGTERM with `handler`; the handlers it replaced, for
    `restore_signals`. Off the main thread (called from code, not the command line):
    nothing, and nothing to restore."""
    previous: Handlers = []
    with suppress(ValueError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous.append((signum, signal.signal(signum, handler)))
    return previous


def restore_signals(previous: Handlers) -> None:
    """Put back the handlers `handle_signals` replaced."""
    for signum, handler in previous:
        signal.signal(signum, handler)


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
    handle_signals(_record)


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
