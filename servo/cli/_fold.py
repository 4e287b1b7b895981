"""`servo fold`: replay a ledger export through the fold (the auditor's tool)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from servo._errors import ServoError
from servo.cli._ledger import stray_warning

__all__ = ["fold_command"]


def fold_command(
    events: Annotated[
        Path,
        typer.Argument(
            help="JSONL ledger export (one envelope per line; '-' = stdin), a Servo home directory, "
            "or a directory of event files (*.json, one envelope each, e.g. a home's ledger/)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print every table as one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write one Parquet file per table here.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any event was rejected.")] = False,
) -> None:
    """Fold EVENTS (any order, duplicates allowed) and print or write the tables."""
    from servo.core.fold import fold_file, fold_lines
    from servo.core.rules import default_spec, registry

    err = Console(stderr=True, soft_wrap=True)
    if as_json and out is not None:
        err.print("error: choose one of --json and --out")
        raise typer.Exit(2)
    try:
        spec = default_spec()
        if str(events) == "-":
            projection = fold_lines(sys.stdin.buffer, spec, registry())
        elif events.is_dir():
            from servo.engine import Home

            if Home.holds_store(events):
                projection = fold_lines(
                    Home.open(events, create=False).ledger_events(stray_warning(err)), spec, registry()
                )
            else:
                files = sorted(events.rglob("*.json"))
                # A workspace directory of a home also holds manifests: take its ledger.
                ledger = [f for f in files if "ledger" in f.relative_to(events).parts[:-1]]
                files = ledger or files
                if not files:
                    err.print(
                        f"error: {events}: is a directory, not a ledger export or a Servo home,"
                        " and holds no *.json event files"
                    )
                    raise typer.Exit(2)
                projection = fold_lines(_event_files(files), spec, registry())
        else:
            if not events.is_file():
                err.print(f"error: {events}: no such file")
                raise typer.Exit(2)
            projection = fold_file(events, spec, registry())
        tables = projection.tables()
    except ServoError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"error: {events}: {exc.strerror}")
        raise typer.Exit(2) from None

    if as_json:
        sys.stdout.write(json.dumps(tables, indent=2, ensure_ascii=False) + "\n")
    elif out is not None:
        from servo.tables import write_parquet

        out.mkdir(parents=True, exist_ok=True)
        for name, rows in tables.items():
            write_parquet(out / f"{name}.parquet", spec.tables[name], rows)
        Console().print(f"wrote {len(tables)} tables to {out}")
    else:
        _print_summary(tables)
    if strict and tables["rejected_events"]:
        raise typer.Exit(1)


def _event_files(files: list[Path]) -> Iterator[bytes]:
    """A ledger directory as it lies on disk: each file is one envelope (SPEC §3), so
    its whole text is one record, however it is indented."""
    for file in files:
        yield b" ".join(file.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines())


def _print_summary(tables: dict[str, list[dict[str, object]]]) -> None:
    console = Console()
    summary = Table(title="servo fold")
    summary.add_column("table")
    summary.add_column("rows", justify="right")
    for name, rows in tables.items():
        summary.add_row(name, str(len(rows)))
    console.print(summary)
    for run in tables["runs"]:
        console.print(f"run {run['run_id']}: {run['state']} ({run['tasks_succeeded']}/{run['tasks_total']} tasks succeeded)")
    rejected = tables["rejected_events"]
    if rejected:
        shown = Table(title=f"rejected events ({len(rejected)})")
        for col in ("event_id", "reason", "event_type", "detail"):
            shown.add_column(col)
        for row in rejected[:50]:
            shown.add_row(*(str(row[c]) for c in ("event_id", "reason", "event_type", "detail")))
        console.print(shown)
    console.print("use --json for every row, or --out DIR for Parquet")
