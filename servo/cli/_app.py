"""The root Typer app; sub-commands live in their own modules and mount here."""

from __future__ import annotations

import os
import sys

import typer

from servo._main import Terminated, defer_signals, release_signals

__all__ = ["app", "main"]

app = typer.Typer(
    name="servo",
    help="Servo: data-task orchestration whose state machines are declared as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _started() -> None:
    """Runs as any command starts: Ctrl-C and SIGTERM act again (and one that came
    while the command line loaded ends it now)."""
    release_signals()


def main() -> None:
    """Entry point of the `servo` script.

    Once a command has finished (its output flushed, its files fsynced), the process
    ends with `os._exit`: under load we saw a native library's thread abort the
    interpreter's teardown ("terminate called without an active exception", exit
    134) after all work was done, which turned a success into a crash code.

    A SIGTERM or Ctrl-C before the command starts is held until it starts (see
    `servo._main.defer_signals`), then ends it with 143 / 130 and a line saying so;
    after that, SIGTERM stops a command as Ctrl-C does, not by death by the signal.
    """
    code: int = 0
    defer_signals()  # until the command starts: see `_started`
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
