"""The `servo` command line (Typer). Thin: it parses, calls the library, prints."""

from __future__ import annotations

from servo.cli import _fold, _ledger, _run, _runs, _serve, _spec
from servo.cli._app import app, main

app.command("fold")(_fold.fold_command)
app.command("run")(_run.run_command)
app.command("serve")(_serve.serve_command)
app.command("worker")(_serve.worker_command)
app.add_typer(_spec.spec_app, name="spec")
app.add_typer(_runs.runs_app, name="runs")
app.add_typer(_ledger.ledger_app, name="ledger")

__all__ = ["app", "main"]
