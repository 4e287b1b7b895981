"""`servo serve` (the HTTP API of a home) and `servo worker` (a standalone worker).

    servo serve  --home .servo --port 8080                 # worker callbacks + run status
    servo worker --home .servo --pipeline FILE.py          # runs dispatched tasks
    servo run FILE.py --home .servo --external-workers     # dispatches, runs nothing itself
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from servo._errors import ServoError
from servo._main import Handlers, handle_signals, restore_signals

if TYPE_CHECKING:
    from servo.engine import Home

__all__ = ["serve_command", "worker_command"]

HomeOption = Annotated[Path, typer.Option("--home", help="The Servo home directory.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def _configure_logging() -> None:
    """Install servo's log handler; a bad $SERVO_LOG_FORMAT / $SERVO_LOG_LEVEL is exit 2."""
    from servo.obs import configure_logging

    try:
        configure_logging()
    except ValueError as exc:
        raise _fail(str(exc)) from None


_UVICORN_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _stop_on_signals(stop: threading.Event) -> Handlers:
    """SIGINT and SIGTERM set `stop`; the handlers they replaced, to restore."""
    return handle_signals(lambda *_: stop.set())


def serve_command(
    home: HomeOption = Path(".servo"),
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one (printed on start).")] = 8080,
    lag_wait: Annotated[
        float, typer.Option(min=0, help="Seconds a callback may wait for the projection to catch up.")
    ] = 2.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve a home's HTTP API: worker callbacks, run status, /metrics."""
    import uvicorn

    from servo.api import create_app
    from servo.engine import Home

    if log_level.lower() not in _UVICORN_LEVELS:
        raise _fail(f"--log-level must be one of {', '.join(_UVICORN_LEVELS)}, not {log_level!r}")
    _configure_logging()  # servo's own lines: $SERVO_LOG_FORMAT / $SERVO_LOG_LEVEL
    try:
        h = Home.open(home)
        h.secret  # noqa: B018 - create it now, so workers and the engine share one
        app = create_app(h, lag_wait_seconds=lag_wait)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    sys.stdout.write(f"servo serve: {h.root} on http://{host}:{bound}\n")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level.lower(), lifespan="off"))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to
    # the handler it found; a no-op one makes a requested stop exit 0, not -15.
    _stop_on_signals(threading.Event())
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _await_home(root: Path, deadline: float) -> Home:
    """The home at `root`, waiting until `deadline` (monotonic) for `servo serve` or
    `servo run`, started alongside, to create it."""
    from servo.engine import Home, HomeError

    while True:
        try:
            return Home.open(root, create=False)
        except HomeError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def worker_command(
    pipeline_file: Annotated[Path, typer.Option("--pipeline", help="The Python file that declares the pipeline.")],
    home: HomeOption = Path(".servo"),
    server: Annotated[
        str | None, typer.Option(help="Base URL of `servo serve` (default: each delivery's callback_base).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Tasks run at once (threads).")] = 4,
    pipeline_name: Annotated[str | None, typer.Option("--name", help="Which pipeline, if the file has several.")] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(help="Lease length; extended while the task runs, so a dead worker's task is free again this long after it died."),
    ] = 30.0,
    idle_exit: Annotated[float | None, typer.Option(help="Exit after this many seconds with nothing to do.")] = None,
    wait_for_server: Annotated[
        float, typer.Option(min=0, help="Seconds to wait at start for the home to exist and --server to answer.")
    ] = 5.0,
) -> None:
    """Run dispatched tasks of a home's queue, reporting to `servo serve` over HTTP."""
    from servo.cli._run import _load_pipeline
    from servo.worker import HttpWorker

    if concurrency < 1:
        raise _fail("--concurrency must be at least 1")
    if not lease_seconds > 0:
        raise _fail(f"--lease-seconds must be more than 0 (got {lease_seconds})")
    _configure_logging()  # a failed task, an unreachable server: $SERVO_LOG_FORMAT / $SERVO_LOG_LEVEL
    try:
        pipeline = _load_pipeline(pipeline_file, pipeline_name, "--name")
        deadline = time.monotonic() + wait_for_server
        h = _await_home(home, deadline)
        worker = HttpWorker(h.queue_path, pipeline, server=server, concurrency=concurrency, lease_seconds=lease_seconds)
        worker.check_server(max(0.0, deadline - time.monotonic()))
    except ServoError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:  # loading the pipeline, waiting for the home or the server
        Console(stderr=True).print("servo worker: interrupted before it started", markup=False)
        raise typer.Exit(130) from None
    stop = threading.Event()
    previous = _stop_on_signals(stop)
    where = server or "each delivery's callback_base"
    Console(stderr=True).print(f"servo worker: {pipeline.name} from {h.root}, reporting to {where}", markup=False)
    try:
        handled = worker.run(stop, idle_exit=idle_exit)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    finally:
        restore_signals(previous)
    Console(stderr=True).print(f"servo worker: stopped after {handled} task(s)", markup=False)
