"""The engine's Cloud Tasks dispatch path, against the local Cloud Tasks REST server.

The driver takes any `TaskQueue`. With `CloudTasksQueue` it creates one HTTP push task
per outbox row, named by the row's deterministic `cloud_task_id`; the server pushes it
to the engine's worker endpoint, which runs the attempt through the same
`CallbackService` contract as the embedded pool.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from engine_audit import Audit, Crash, fan_in
from queue_fixtures import FAST_RETRY, PROJECT_LOCATION

from servo.core._registry import Registry
from servo.core.ids import dispatch_cloud_task_id
from servo.engine import EmbeddedEngine, Home
from servo.queue import CloudTasksQueue, CloudTasksServer, local_cloudtasks_client
from servo.spec import Spec

FAST = {"poll_seconds": 0.01, "repair_seconds": 0.5, "repair_grace_sec": 1}
_queues = itertools.count()


class RecordingQueue:
    """A `TaskQueue` that records every create's answer, passing calls through."""

    def __init__(self, inner: CloudTasksQueue) -> None:
        self.inner = inner
        self.creates: list[tuple[str, str, bool]] = []

    def create_task(self, name: str, target: str, payload: bytes, schedule_time: datetime) -> bool:
        created = self.inner.create_task(name, target, payload, schedule_time)
        self.creates.append((name, target, created))
        return created

    def delete_task(self, name: str) -> bool:
        return self.inner.delete_task(name)

    def get_task(self, name: str) -> object:
        return self.inner.get_task(name)


@pytest.fixture
def cloud_queue(cloudtasks_server: CloudTasksServer) -> Iterator[RecordingQueue]:
    """A fresh queue on the session's local Cloud Tasks server, creates recorded."""
    client = local_cloudtasks_client(cloudtasks_server.url)
    parent = f"{PROJECT_LOCATION}/queues/engine{next(_queues)}"
    try:
        yield RecordingQueue(CloudTasksQueue(client, parent, retry=FAST_RETRY))
    finally:
        transport: Any = client.transport  # its close() is untyped
        transport.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_embedded_run_completes_over_cloud_tasks(
    tmp_path: Path, spec: Spec, rules: Registry, cloudtasks_server: CloudTasksServer, cloud_queue: RecordingQueue
) -> None:
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("over_cloud_tasks", roots=2)

    outcome = EmbeddedEngine(home, pipeline, queue=cloud_queue, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED"
    audit = Audit.of(home, spec, rules)
    audit.assert_one_outbox_row_per_dispatch()
    names = {r["cloud_task_id"] for r in audit.tables["dispatch_outbox"]}
    assert names == {dispatch_cloud_task_id(r["dispatch_id"]) for r in audit.tables["dispatch_outbox"]}
    dispatch_creates = [(n, ok) for n, target, ok in cloud_queue.creates if target.endswith("/dispatch")]
    assert sorted(dispatch_creates) == sorted((n, True) for n in names)  # one create per row
    parent = cloud_queue.inner.parent
    pushed = [d for d in cloudtasks_server.deliveries() if d.task_name.startswith(parent)]
    delivered = {d.task_name.rsplit("/", 1)[1] for d in pushed if d.status == 200 and d.url.endswith("/dispatch")}
    assert delivered == names  # every attempt arrived by HTTP push and was answered 200
    workers = {e["data"]["worker_id"] for e in audit.accepted("TaskStarted")}
    assert workers and all(w.startswith("push:") for w in workers)  # run by the push endpoint
    assert audit.successes() == {"r0": 1, "r1": 1, "join": 1}


def test_duplicate_create_409_counts_as_success(
    tmp_path: Path, spec: Spec, rules: Registry, cloudtasks_server: CloudTasksServer, cloud_queue: RecordingQueue
) -> None:
    """The first create lands but its answer is lost (503); the adapter's retry meets
    409 Conflict, the dispatcher records it as success (DispatchEnqueued), and the
    queue holds one task for the name."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("cloud_409", roots=1)
    cloudtasks_server.inject_failures(1, 503, after_apply=True)  # the run's first request
    try:
        outcome = EmbeddedEngine(home, pipeline, queue=cloud_queue, **FAST).run(timeout=60)
    finally:
        cloudtasks_server.inject_failures(0)

    assert outcome.state == "SUCCEEDED"
    audit = Audit.of(home, spec, rules)
    first = dispatch_cloud_task_id(next(r["dispatch_id"] for r in audit.tables["dispatch_outbox"]
                                        if r["task_key"] == "r0"))
    assert [(n, ok) for n, _, ok in cloud_queue.creates if n == first] == [(first, False)]
    statuses = [status for method, path, status in cloudtasks_server.requests()
                if method == "POST" and path == f"{cloud_queue.inner.parent}/tasks"]
    assert statuses[:2] == [503, 409]
    acks = [e["data"]["dispatch_id"] for e in audit.accepted("DispatchEnqueued")]
    assert len(acks) == len(set(acks)) == len(audit.tables["dispatch_outbox"])
    parent = cloud_queue.inner.parent
    pushed_ok = [d for d in cloudtasks_server.deliveries() if d.task_name == f"{parent}/tasks/{first}"
                 and d.status == 200]
    assert len(pushed_ok) == 1  # one task under the name, delivered once
    assert audit.successes() == {"r0": 1, "join": 1}


def test_lost_ack_over_cloud_tasks_makes_no_second_task(
    tmp_path: Path, spec: Spec, rules: Registry, cloud_queue: RecordingQueue
) -> None:
    """Crash after the create, before the ack. The next driver either creates the row
    again (409: already there) or sees the worker's facts first; either way one Cloud
    Task exists for the name, the run completes, and the attempt is never retried."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("cloud_lost_ack", roots=1)
    port = free_port()  # the worker endpoint keeps its URL across restarts, as a service would
    crashed: list[str] = []

    def crash_once(point: str, key: str) -> None:
        if point == "after_dispatch_create" and not crashed:
            crashed.append(key)
            raise Crash(key)

    with pytest.raises(Crash):
        EmbeddedEngine(home, pipeline, queue=cloud_queue, faults=crash_once, push_port=port, **FAST).run(timeout=60)
    name = dispatch_cloud_task_id(crashed[0])
    assert [(n, ok) for n, _, ok in cloud_queue.creates] == [(name, True)]
    assert Audit.of(home, spec, rules).accepted("DispatchEnqueued") == []

    outcome = EmbeddedEngine(home, pipeline, queue=cloud_queue, push_port=port, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED" and outcome.resumed
    assert [ok for n, _, ok in cloud_queue.creates if n == name] in ([True], [True, False])
    audit = Audit.of(home, spec, rules)
    audit.assert_one_outbox_row_per_dispatch()
    row = next(r for r in audit.tables["dispatch_outbox"] if r["dispatch_id"] == crashed[0])
    assert row["status"] == "ACKED"
    assert audit.task("r0")["attempt"] == 1  # the one task was delivered; no retry needed
    assert audit.successes() == {"r0": 1, "join": 1}
