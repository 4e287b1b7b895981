"""`servo ledger export`: a home's ledger as JSONL, the input of `servo fold`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.console import Console

from servo._errors import ServoError

__all__ = ["ledger_app", "write_jsonl"]

ledger_app = typer.Typer(help="Read a home's ledger (the auditor's export).", no_args_is_help=True)


def stray_warning(err: Console) -> Callable[[str], None]:
    """How `ledger export` and `fold HOME` name a file in the ledger that is not an event."""

    def warn(name: str) -> None:
        err.print(
            f"warning: skipped {name}: not an event file ({{day}}/{{event_id}}.json) of this home's ledger",
            markup=False,
            highlight=False,
        )

    return warn


def write_jsonl(events: Iterable[bytes], sink: BinaryIO) -> int:
    """Write each event on its own line; returns how many.

    Line breaks inside an envelope (only possible between JSON tokens) become spaces,
    so every event stays one line and means what it meant."""
    count = 0
    for data in events:
        sink.write(data.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n")
        count += 1
    return count


@ledger_app.command("export")
def export_command(
    home: Annotated[Path, typer.Option("--home", help="The Servo home directory.")] = Path(".servo"),
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Every event of the home's ledger, one envelope per line, in event_id order."""
    from servo.engine import Home

    err = Console(stderr=True, soft_wrap=True)
    try:
        if not Home.holds_store(home):
            raise ServoError(f"{home}: no Servo home here (run `servo run` first, or pass --home)")
        events = Home.open(home, create=False).ledger_events(stray_warning(err))
        if out is None:
            write_jsonl(events, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        if out.is_dir():
            raise ServoError(f"{out} is a directory; --out takes a file path (e.g. {out / 'events.jsonl'})")
        tmp = out.with_name(out.name + ".part")
        with tmp.open("wb") as sink:
            count = write_jsonl(events, sink)
        tmp.replace(out)
    except ServoError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"error: {exc.filename or out}: {exc.strerror}")
        raise typer.Exit(2) from None
    err.print(f"exported {count} events to {out}")
