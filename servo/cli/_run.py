"""`servo run FILE.py`: run a pipeline on the embedded default (state in ./.servo/)."""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from servo._errors import ServoError
from servo._main import Terminated, handle_signals, restore_signals

if TYPE_CHECKING:
    from servo.engine import EmbeddedEngine, RunOutcome

__all__ = ["run_command"]

ORDER = ("BLOCKED", "READY", "DISPATCHED", "RUNNING", "RETRY_WAIT", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout meanwhile to stderr: Python's `print` and, at the
    file-descriptor level, C extensions and child processes (a task running dbt or
    spark-submit), so that with --json stdout is the JSON document alone."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1 (a closed stdout): Python-level only
        saved = -1
    if saved >= 0:
        try:
            os.dup2(2, 1)
        except OSError:
            os.close(saved)
            saved = -1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved >= 0:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)

class _Stops:
    """Ctrl-C and SIGTERM during `servo run`, delivered where stopping is safe.

    Raised at once, a KeyboardInterrupt lands at whatever bytecode runs: inside
    importlib's module locks it is swallowed ("Exception ignored"; the run went on and
    exited 0), inside a class body it becomes a RuntimeError, inside a store write an
    odd error. So a signal is recorded, and raised: after Servo's own imports; at once
    while the pipeline's file loads (user code, maybe slow; checked again after, in
    case importlib swallowed it); by the engine at the top of its loop (`stop`). A
    second signal is raised at once wherever it lands: a way out of anything stuck.
    """

    def __init__(self) -> None:
        self.pending: type[BaseException] | None = None
        self.immediate = False
        self.engine: EmbeddedEngine | None = None

    def handle(self, signum: int, frame: object) -> None:
        kind: type[BaseException] = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        again = self.pending is not None
        self.pending = self.pending or kind
        if self.engine is not None and not again:
            self.engine.stop(kind())
        if self.immediate or again:
            raise kind()

    def check(self) -> None:
        """Raise a signal that arrived meanwhile."""
        if self.pending is not None:
            raise self.pending()


def _load_pipeline(path: Path, name: str | None, option: str = "--pipeline") -> Any:
    from servo.api import Pipeline

    if path.is_dir():
        raise ServoError(f"{path} is a directory, not a Python file that declares a Pipeline")
    if not path.is_file():
        raise ServoError(f"{path}: no such file")
    beside = str(path.resolve().parent)  # like `python FILE.py`: its directory is importable
    if beside not in sys.path:
        sys.path.insert(0, beside)
    try:
        namespace = runpy.run_path(str(path), run_name="__servo__")
    except ServoError:
        raise
    except (Exception, SystemExit) as exc:
        raise ServoError(f"{path}: failed to load: {type(exc).__name__}: {exc}") from None
    found = {v.name: v for v in namespace.values() if isinstance(v, Pipeline)}
    if name is not None:
        if name not in found:
            raise ServoError(f"{path}: no pipeline named {name!r} (found: {', '.join(sorted(found)) or 'none'})")
        return found[name]
    if not found:
        raise ServoError(f"{path} declares no servo.api.Pipeline (at module level)")
    if len(found) > 1:
        raise ServoError(f"{path}: declares {len(found)} pipelines ({', '.join(sorted(found))}); pass {option} NAME")
    return next(iter(found.values()))


def _outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    return {"run": outcome.run, "tasks": outcome.tasks, "resumed": outcome.resumed, "seconds": round(outcome.seconds, 3)}


def _progress_table(counts: Mapping[str, int], state: str) -> Table:
    table = Table(title=f"run: {state}", show_header=True)
    for column in ORDER:
        table.add_column(column.lower(), justify="right")
    table.add_row(*(str(counts.get(s, 0)) for s in ORDER))
    return table


def run_command(
    file: Annotated[Path, typer.Argument(help="A Python file that declares one servo.api.Pipeline.")],
    home: Annotated[Path, typer.Option("--home", help="Where state lives.")] = Path(".servo"),
    pipeline_name: Annotated[str | None, typer.Option("--pipeline", help="Which pipeline, if the file has several.")] = None,
    run_key: Annotated[str | None, typer.Option("--run-key", help="Idempotency key of the run.")] = None,
    workers: Annotated[int, typer.Option(help="Local worker threads; the engine keeps at most 16x this many attempts per run dispatched or running.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    external_workers: Annotated[
        bool, typer.Option("--external-workers", help="Dispatch only; `servo worker` processes run the tasks.")
    ] = False,
    callback_base: Annotated[
        str, typer.Option(help="With --external-workers: the `servo serve` URL put in every delivery.")
    ] = "http://127.0.0.1:8080",
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="human or json (default: $SERVO_LOG_FORMAT, else human).")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING... (default: $SERVO_LOG_LEVEL, else WARNING).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port during the run.")
    ] = None,
    metrics_addr: Annotated[str, typer.Option("--metrics-addr", help="Address for --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run a pipeline to completion; exit 1 if the run did not succeed."""
    stops = _Stops()
    previous_handlers = handle_signals(stops.handle)  # first: a signal while the engine's modules load too
    err = Console(stderr=True, soft_wrap=True)
    engine: EmbeddedEngine | None = None
    stop_metrics = None
    # With --json, stdout carries the JSON document only: what the pipeline prints
    # (while loading or in its tasks, child processes included) goes to stderr.
    scope = contextlib.ExitStack()
    try:
        from servo.engine import EmbeddedEngine, Home, RunTimedOut
        from servo.obs import configure_logging, serve_metrics

        stops.check()

        for problem in (
            f"--workers must be at least 1 (got {workers})" if workers < 1 else "",
            "--run-key must not be empty (leave it out for a new run each time)" if run_key == "" else "",
            f"--timeout must be more than 0 seconds (got {timeout:g})" if timeout is not None and not timeout > 0 else "",
        ):
            if problem:
                err.print(f"error: {problem}")
                raise typer.Exit(2)
        try:
            configure_logging(log_format, log_level)
        except ValueError as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(2) from None
        if metrics_port is not None:
            try:
                stop_metrics = serve_metrics(metrics_port, metrics_addr)
            except OSError as exc:
                err.print(f"error: cannot serve metrics on {metrics_addr}:{metrics_port}: {exc}")
                raise typer.Exit(2) from None
        if as_json:
            scope.enter_context(_stdout_to_stderr())
        stops.immediate = True  # the pipeline's own code: stoppable at once
        try:
            pipeline = _load_pipeline(file, pipeline_name)
        finally:
            stops.immediate = False
        stops.check()
        live: Live | None = None
        if not as_json and sys.stdout.isatty():
            live = Live(_progress_table({}, "starting"), console=Console(), refresh_per_second=8)

        def progress(counts: Mapping[str, int], state: str) -> None:
            if live is not None:
                live.update(_progress_table(counts, state))

        base = callback_base if external_workers else None
        engine = EmbeddedEngine(Home.open(home), pipeline, workers=workers, on_progress=progress, callback_base=base)
        stops.engine = engine
        stops.check()
        if live is not None:
            with live:
                outcome = engine.run(run_key, timeout=timeout)
        else:
            outcome = engine.run(run_key, timeout=timeout)
    except ServoError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2) from None
    except TimeoutError as exc:
        err.print(f"error: {exc}")
        if as_json and isinstance(exc, RunTimedOut):  # a script still gets its document
            scope.close()  # stdout is stdout again
            sys.stdout.write(json.dumps({**_outcome_json(exc.outcome), "timed_out": True}, indent=2) + "\n")
        raise typer.Exit(3) from None
    except (KeyboardInterrupt, Terminated) as stop:
        word, code = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        if engine is None:
            err.print(f"{word} before the run started")
        elif engine.run_id is None:  # while starting or resuming it: which one is not known yet
            err.print(f"{word} while starting the run; `servo run {file}` again resumes any unfinished run of it")
        else:
            err.print(f"{word}: run {engine.run_id} is unfinished; `servo run {file}` again resumes it")
        raise typer.Exit(code) from None
    finally:
        restore_signals(previous_handlers)
        scope.close()
        if stop_metrics is not None:
            stop_metrics()
    if as_json:
        sys.stdout.write(json.dumps(_outcome_json(outcome), indent=2) + "\n")
    else:
        console = Console()
        verb = "resumed and finished" if outcome.resumed else "finished"
        console.print(f"run {outcome.run['run_id']} ({pipeline.name}) {verb}: [bold]{outcome.state}[/bold] in {outcome.seconds:.1f} s")
        table = Table()
        for column in ("task", "state", "attempts", "error"):
            table.add_column(column)
        for task in outcome.tasks:
            table.add_row(task["task_key"], task["state"], str(task["attempt"]), str(task["error_message"] or ""))
        console.print(table)
    if outcome.state != "SUCCEEDED":
        raise typer.Exit(1)
