"""The root Typer app; sub-commands live in their own modules and mount here."""

from __future__ import annotations

import os
import signal
import sys

import typer

from servo._main import Terminated, terminate

__all__ = ["app", "main"]

app = typer.Typer(
    name="servo",
    help="Servo: data-task orchestration whose state machines are declared as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point of the `servo` script.

    Once a command has finished (its output flushed, its files fsynced), the process
    ends with `os._exit`: under load we saw a native library's thread abort the
    interpreter's teardown ("terminate called without an active exception", exit
    134) after all work was done, which turned a success into a crash code.

    A SIGTERM before a command installs its own handling (while its modules load, the
    first second of `servo run`) ends it with 143 and a line saying so, like Ctrl-C's
    130, not with death by the signal and nothing said.
    """
    code: int = 0
    signal.signal(signal.SIGTERM, terminate)
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Terminated:
        sys.stderr.write("terminated\n")
        code = 143
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
