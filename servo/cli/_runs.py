"""`servo runs list|show|cancel`: read the projection of the embedded home."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from servo._errors import ServoError

__all__ = ["runs_app"]

runs_app = typer.Typer(help="List, inspect and cancel runs (reads the published projection).", no_args_is_help=True)

HomeOption = Annotated[Path, typer.Option("--home", help="The Servo home directory.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TERMINAL_RUN_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# servo.core.controllers.RUN_STATES (a test keeps them equal); not imported: the CLI loads lazily.
RUN_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def _snapshot(home: Path) -> dict[str, list[dict[str, Any]]]:
    from servo.compactor import ProjectionReader, StateView
    from servo.core.rules import default_spec
    from servo.engine import Home

    h = Home.open(home, create=False)
    return ProjectionReader(StateView(h.store), default_spec()).read().tables


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"error: {message}")
    return typer.Exit(code)


@runs_app.command("list")
def list_runs(
    home: HomeOption = Path(".servo"),
    as_json: JsonOption = False,
    states: Annotated[
        list[str] | None, typer.Option("--state", help="Only runs in this state (repeatable): " + ", ".join(RUN_STATES) + ".")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the newest N runs.")] = None,
) -> None:
    """Every run (newest first) with its state and task counts."""
    wanted = {s.upper() for s in states or ()}
    if wanted - set(RUN_STATES):
        raise _fail(f"--state must be one of {', '.join(RUN_STATES)} (got {', '.join(sorted(wanted - set(RUN_STATES)))})")
    if limit is not None and limit < 1:
        raise _fail(f"--limit must be at least 1 (got {limit})")
    try:
        runs = _snapshot(home)["runs"]
    except ServoError as exc:
        raise _fail(str(exc)) from None
    runs.sort(key=lambda r: (str(r["created_at"]), str(r["run_id"])), reverse=True)  # newest first
    runs = [r for r in runs if not wanted or r["state"] in wanted][:limit]
    if as_json:
        sys.stdout.write(json.dumps(runs, indent=2) + "\n")
        return
    table = Table(title=f"runs in {home}", box=box.SIMPLE_HEAD)
    table.add_column("run_id", no_wrap=True, min_width=max((len(r["run_id"]) for r in runs), default=6))
    table.add_column("pipeline", overflow="fold", min_width=8)
    table.add_column("state", no_wrap=True)
    table.add_column("ok", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for run in runs:
        labels = run.get("labels") or {}
        created = str(run["created_at"] or "")[:16].replace("T", " ")  # UTC
        tasks = f"{run['tasks_succeeded']}/{run['tasks_total']}"
        table.add_row(run["run_id"], str(labels.get("servo.pipeline", "")), run["state"], tasks, created)
    Console().print(table)


def _find_run(runs: list[dict[str, Any]], run_id: str, home: Path) -> dict[str, Any]:
    """The run named `run_id`, or the only run whose id starts with it."""
    exact = [r for r in runs if r["run_id"] == run_id]
    found = exact or [r for r in runs if str(r["run_id"]).startswith(run_id)]
    if not found:
        raise _fail(f"no run {run_id!r} in {home}", 1)
    if len(found) > 1:
        names = ", ".join(sorted(str(r["run_id"]) for r in found))
        raise _fail(f"{run_id!r} matches {len(found)} runs in {home}: {names}; give more of the id", 1)
    return found[0]


@runs_app.command("show")
def show_run(run_id: str, home: HomeOption = Path(".servo"), as_json: JsonOption = False) -> None:
    """One run and its tasks."""
    try:
        tables = _snapshot(home)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    run = _find_run(tables["runs"], run_id, home)
    run_id = run["run_id"]
    tasks = [t for t in tables["tasks"] if t["run_id"] == run_id]
    if as_json:
        sys.stdout.write(json.dumps({"run": run, "tasks": tasks}, indent=2) + "\n")
        return
    console = Console()
    console.print(f"run {run_id}: [bold]{run['state']}[/bold] ({run['tasks_succeeded']}/{run['tasks_total']} succeeded)")
    table = Table()
    for column in ("task", "state", "attempt", "error"):
        table.add_column(column)
    for t in tasks:
        table.add_row(t["task_key"], t["state"], str(t["attempt"]), str(t["error_message"] or ""))
    console.print(table)


@runs_app.command("cancel")
def cancel_run(
    run_id: str,
    home: HomeOption = Path(".servo"),
    reason: Annotated[str, typer.Option(help="Why (recorded in the event).")] = "cancelled from the CLI",
    wait: Annotated[
        float, typer.Option(help="With an engine running: seconds to wait for it to apply the cancel.")
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Cancel a run: every non-terminal task becomes CANCELLED.

    If `servo run` is driving the home, the event goes to it (its notify spool) and
    this waits up to --wait seconds for the run to end; otherwise it is folded here.
    """
    import secrets

    from servo.compactor import Compactor
    from servo.core.events import Catalog
    from servo.core.ids import new_ulid
    from servo.core.rules import default_spec, registry
    from servo.engine import Home
    from servo.engine._notify import NotifySpool
    from servo.storage import Ledger

    try:
        tables = _snapshot(home)
        run = _find_run(tables["runs"], run_id, home)
        run_id = run["run_id"]
        if run["state"] in TERMINAL_RUN_STATES:
            raise _fail(f"run {run_id} already ended {run['state']}", 1)
        h = Home.open(home, create=False)
        spec = default_spec()
        now = datetime.now(UTC)
        event = Catalog(spec).make(
            "RunCancelRequested",
            {"run_id": run_id, "reason": reason, "requested_by": "cli"},
            event_id=new_ulid(now, secrets.token_bytes(10)),
            tenant_id=h.tenant,
            workspace_id=h.workspace,
            occurred_at=now,
            source="cli",
        )
        with h.unless_driven() as idle:
            if idle:  # nobody folds for us: do it here (no engine to fence)
                compactor = Compactor(h.store, spec, registry())
                ledger = Ledger(h.store, on_append=compactor.notify)
                ledger.append(event.event_id, event.to_json().encode())
                compactor.start()
                # What `servo serve` appended since the last engine (its notify spool, and
                # the ledger sweep for a lost notice) folds too, in event_id order with the
                # cancel: a task that finished before it stays SUCCEEDED (INV-1).
                compactor.notify(NotifySpool.for_home(h).drain())
                compactor.repair()
                compactor.notify([event.event_id])
                compactor.compact()
            else:  # the running engine folds it: starting a compactor would fence it
                Ledger(h.store, on_append=NotifySpool.for_home(h).post).append(event.event_id, event.to_json().encode())
        state = _state_of(home, run_id)
        deadline = time.monotonic() + max(0.0, wait)
        while state not in TERMINAL_RUN_STATES and time.monotonic() < deadline:
            time.sleep(0.05)
            state = _state_of(home, run_id)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    applied = state in TERMINAL_RUN_STATES
    if as_json:
        body = {"run_id": run_id, "state": state, "event_id": event.event_id, "applied": applied}
        sys.stdout.write(json.dumps(body) + "\n")
    elif applied:
        Console().print(f"run {run_id}: {state}")
    else:
        Console().print(
            f"run {run_id}: {state}; cancel requested (event {event.event_id}), "
            "the running engine has not applied it yet"
        )


def _state_of(home: Path, run_id: str) -> str:
    return str(next(r for r in _snapshot(home)["runs"] if r["run_id"] == run_id)["state"])
