"""Helpers for the worker contract over real HTTP: a served app on a loopback port.

`Stage` plays the engine's part in-process (it appends run, plan and dispatch events
and is the home's only compactor), so each test controls exactly what the projection
says while `servo serve`'s app answers over a real socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn

from servo.compactor import Compactor, ProjectionReader, StateView
from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.events import Catalog, Event
from servo.core.ids import new_ulid
from servo.engine import Home
from servo.engine._notify import NotifySpool
from servo.spec import Spec
from servo.storage import Ledger
from servo.worker import attempt_token


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class Stage:
    """The engine's side of a home, driven by hand: append, compact, dispatch."""

    def __init__(self, home: Home, spec: Spec, rules: Registry, catalog: Catalog) -> None:
        self.home = home
        self.spec = spec
        self.compactor = Compactor(home.store, spec, rules)
        self.compactor.start()
        self.ledger = Ledger(home.store, on_append=self.compactor.notify)
        self.spool = NotifySpool.for_home(home)
        self.builder = EventBuilder(catalog, tenant_id=home.tenant, workspace_id=home.workspace)
        self.reader = ProjectionReader(StateView(home.store), spec)

    def append(self, *events: Event) -> None:
        self.ledger.append_many([(e.event_id, e.to_json().encode()) for e in events])

    def compact(self) -> None:
        """Fold what this process appended and what `servo serve` notified through the spool."""
        self.compactor.notify(self.spool.drain())
        self.compactor.compact()

    def now(self) -> datetime:
        """Move the builder's clock past every event so far (ids sort after them)."""
        self.builder.now = datetime.now(UTC) + timedelta(milliseconds=2)
        time.sleep(0.003)
        return self.builder.now

    def start_run(self, run_id: str, *tasks: TaskDef) -> None:
        self.now()
        b = self.builder
        self.append(b.run_triggered(run_id), b.plan_created(run_id, list(tasks)))
        self.compact()

    def dispatch(self, run_id: str, task_key: str, attempt: int, *, compact: bool = True) -> dict[str, Any]:
        """Dispatch an attempt; return the callback body and headers a worker would send."""
        now = self.now()
        attempt_id = new_ulid(now, attempt.to_bytes(10, "big"))
        self.append(self.builder.dispatch_requested(run_id, task_key, attempt, attempt_id))
        if compact:
            self.compact()
        return self.callback(run_id, task_key, attempt, attempt_id)

    def retry(self, run_id: str, task_key: str, failed_attempt: int) -> dict[str, Any]:
        """What the timer controller does after a failed attempt: retry timer, fire, next dispatch."""
        now = self.now()
        timer_id = f"timer:retry:{run_id}:{task_key}:{failed_attempt}:{int(now.timestamp())}"
        b = self.builder
        ref = {"run_id": run_id, "task_key": task_key, "attempt": failed_attempt}
        self.append(b.timer_requested(timer_id, "RETRY", now, **ref), b.timer_fired(timer_id, "RETRY", **ref))
        self.compact()
        return self.dispatch(run_id, task_key, failed_attempt + 1)

    def callback(self, run_id: str, task_key: str, attempt: int, attempt_id: str) -> dict[str, Any]:
        home = self.home
        token = attempt_token(home.secret, home.tenant, home.workspace, run_id, task_key, attempt_id)
        body = {
            "tenant": home.tenant,
            "workspace": home.workspace,
            "run_id": run_id,
            "task_key": task_key,
            "attempt": attempt,
            "attempt_id": attempt_id,
            "worker_id": "w-test",
        }
        return {"json": body, "headers": {"Authorization": f"Bearer {token}"}}

    def tasks(self) -> dict[str, dict[str, Any]]:
        return {t["task_key"]: t for t in self.reader.read().tables["tasks"]}
