"""Queue fixtures (a pytest plugin loaded by tests/conftest.py): one local Cloud
Tasks server and one push receiver per session, and a ``harness`` fixture that
runs the queue contract over every ``TaskQueue`` backend.

A harness hides how a backend delivers: the embedded queue through a
``QueueWorker`` calling a recording handler, Cloud Tasks through the local
server pushing to a tiny HTTP receiver. Either way the test sees the same
``Attempt`` records and can make the next deliveries fail.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest
from google.cloud import tasks_v2

from servo.queue import (
    Backoff,
    CloudTasksQueue,
    CloudTasksServer,
    QueuedTask,
    QueueWorker,
    RetryPolicy,
    SqliteQueue,
    TaskQueue,
    local_cloudtasks_client,
)

QUEUE_BACKENDS = ["sqlite", "cloudtasks"]
FAST_BACKOFF = Backoff(min_seconds=0.05, max_seconds=0.2)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.01, max_delay=0.05, timeout=10.0)
PROJECT_LOCATION = "projects/servo-test/locations/local"

_queue_numbers = itertools.count()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery as the receiving end saw it."""

    name: str
    payload: bytes
    at: datetime
    ok: bool


# --- a tiny push receiver ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One HTTP request the receiver got."""

    path: str
    method: str
    body: bytes
    headers: dict[str, str]
    at: datetime
    status: int


class PushReceiver:
    """A stdlib HTTP server on loopback that records every request. Answers 200,
    or ``status`` for the next ``fail_next(path, n, status)`` requests to a path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._failures: dict[str, tuple[int, int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._status_for(self.path)
                receiver._record(
                    Received(self.path, "POST", body, dict(self.headers), datetime.now(UTC), status)
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def _status_for(self, path: str) -> int:
        with self._lock:
            remaining, status = self._failures.get(path, (0, 200))
            if remaining <= 0:
                return 200
            self._failures[path] = (remaining - 1, status)
            return status

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    def fail_next(self, path: str, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests to ``path`` with ``status``."""
        with self._lock:
            self._failures[path] = (count, status)

    def received(self, path: str) -> list[Received]:
        """Requests to ``path`` so far, oldest first."""
        with self._lock:
            return [r for r in self._received if r.path == path]

    def close(self) -> None:
        """Stop serving and release the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# --- harnesses -------------------------------------------------------------------


class Harness(Protocol):
    """One backend under the contract suite."""

    @property
    def kind(self) -> str:
        """The backend's parameter id."""
        ...

    @property
    def queue(self) -> TaskQueue:
        """The queue under test."""
        ...

    @property
    def target(self) -> str:
        """Where its tasks are delivered."""
        ...

    def replica(self) -> TaskQueue:
        """An independent second client of the same queue (another dispatcher replica)."""
        ...

    def fail_next_deliveries(self, count: int) -> None:
        """Make the next ``count`` deliveries fail at the receiving end."""
        ...

    def attempts(self) -> list[Attempt]:
        """Every delivery attempt so far, oldest first."""
        ...


class SqliteHarness:
    """SqliteQueue on a temp file, drained by a QueueWorker with a recording handler."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.queue = SqliteQueue(path)
        self.target = "handler://record"
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._failures = 0
        self._replicas: list[SqliteQueue] = []
        self.worker = QueueWorker(
            self.queue, self._handle, backoff=FAST_BACKOFF, lease_seconds=5.0, poll_interval=0.01
        )
        self.worker.start()

    def _handle(self, task: QueuedTask) -> None:
        with self._lock:
            ok = self._failures <= 0
            self._failures -= 1
            self._attempts.append(Attempt(task.name, task.payload, datetime.now(UTC), ok))
        if not ok:
            raise RuntimeError("injected handler failure")

    def replica(self) -> TaskQueue:
        replica = SqliteQueue(self.path)
        self._replicas.append(replica)
        return replica

    def fail_next_deliveries(self, count: int) -> None:
        with self._lock:
            self._failures = count

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def close(self) -> None:
        self.worker.stop()
        for queue in [self.queue, *self._replicas]:
            queue.close()


class CloudTasksHarness:
    """CloudTasksQueue (REST client) on a fresh queue of the session's local server,
    pushing to a per-queue path of the session's receiver."""

    kind = "cloudtasks"

    def __init__(self, server: CloudTasksServer, receiver: PushReceiver) -> None:
        self.server = server
        self.receiver = receiver
        self.queue_id = f"q{next(_queue_numbers)}"
        self.parent = f"{PROJECT_LOCATION}/queues/{self.queue_id}"
        self.path = f"/push/{self.queue_id}"
        self.target = f"{receiver.url}{self.path}"
        self._clients: list[tasks_v2.CloudTasksClient] = []
        self.client = self.new_client()
        self.queue = CloudTasksQueue(self.client, self.parent, retry=FAST_RETRY)

    def new_client(self) -> tasks_v2.CloudTasksClient:
        client = local_cloudtasks_client(self.server.url)
        self._clients.append(client)
        return client

    def replica(self) -> TaskQueue:
        return CloudTasksQueue(self.new_client(), self.parent, retry=FAST_RETRY)

    def fail_next_deliveries(self, count: int) -> None:
        self.receiver.fail_next(self.path, count)

    def attempts(self) -> list[Attempt]:
        return [
            Attempt(r.headers["X-CloudTasks-TaskName"], r.body, r.at, 200 <= r.status < 300)
            for r in self.receiver.received(self.path)
        ]

    def close(self) -> None:
        self.server.inject_failures(0)
        for client in self._clients:
            transport: Any = client.transport  # its close() is untyped
            transport.close()


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cloudtasks_server() -> Iterator[CloudTasksServer]:
    """The local Cloud Tasks stand-in for the session, retrying pushes fast."""
    with CloudTasksServer(backoff=FAST_BACKOFF, max_attempts=20) as server:
        yield server


@pytest.fixture(scope="session")
def push_receiver() -> Iterator[PushReceiver]:
    """A loopback HTTP endpoint recording every push, for the session."""
    receiver = PushReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def cloudtasks_harness(
    cloudtasks_server: CloudTasksServer, push_receiver: PushReceiver
) -> Iterator[CloudTasksHarness]:
    """A Cloud Tasks harness on a fresh queue."""
    harness = CloudTasksHarness(cloudtasks_server, push_receiver)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=QUEUE_BACKENDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Every TaskQueue backend in turn, each empty, its deliveries recorded."""
    if request.param == "cloudtasks":
        cloud: CloudTasksHarness = request.getfixturevalue("cloudtasks_harness")
        yield cloud
        return
    sqlite = SqliteHarness(tmp_path / "queue.db")
    try:
        yield sqlite
    finally:
        sqlite.close()
