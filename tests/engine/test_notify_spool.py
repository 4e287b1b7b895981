"""Appends by another process (`servo serve`) reach the embedded engine's compactor."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from servo.api import Pipeline
from servo.compactor import ProjectionReader, StateView
from servo.core.controllers import ControllerConfig, Emitter, ProjectionView, TaskRecord
from servo.core.events import Catalog
from servo.core.rules import default_spec
from servo.engine import EmbeddedEngine, Home, RunOutcome
from servo.engine._notify import NotifySpool
from servo.queue import SqliteQueue
from servo.storage import Ledger
from servo.worker import CallbackService, Delivery

ULID_A, ULID_B = "01JD0000000000000000000000", "01JD0000000000000000000001"


def test_the_spool_hands_each_posted_id_to_exactly_one_drain(tmp_path: Path) -> None:
    spool = NotifySpool(tmp_path / "notify")
    assert spool.drain() == []  # no directory yet
    spool.post([ULID_B, ULID_A])
    spool.post([ULID_A])  # a repeated notification is one
    (tmp_path / "notify" / "README").write_text("not an id")
    assert spool.drain() == [ULID_A, ULID_B]
    assert spool.drain() == []
    with pytest.raises(ValueError, match="not an event id"):
        spool.post(["../escape"])


def _pipeline() -> Pipeline:
    pipeline = Pipeline("ext")

    @pipeline.task
    def a() -> None: ...

    @pipeline.task(depends_on=[a])
    def b() -> None: ...

    return pipeline


def _external_worker(home: Home, stop: threading.Event, *, notify: bool) -> None:
    """A worker in 'another process': leases dispatches, reports through its own ledger handle."""
    reader = ProjectionReader(StateView(home.store), default_spec())
    spool = NotifySpool.for_home(home)
    ledger = Ledger(home.store, on_append=spool.post if notify else None)
    def lookup(run_id: str, task_key: str) -> TaskRecord | None:
        return ProjectionView.from_tables(reader.read().tables).task(run_id, task_key)

    config = ControllerConfig(catalog=Catalog(default_spec()))

    def append(event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
        event = Emitter(config, home.tenant, home.workspace, datetime.now(UTC), "worker:t").emit(event_type, data)
        ledger.append(event.event_id, event.to_json().encode())

    service = CallbackService(home.secret, home.tenant, home.workspace, lookup, append)
    queue = SqliteQueue(home.queue_path)
    while not stop.is_set():
        for lease in queue.lease(datetime.now(UTC), max_tasks=4, target="dispatch/ext"):
            delivery = Delivery.from_json(lease.task.payload)
            assert delivery.callback_base == "http://example.invalid"
            for _ in range(100):  # the projection may lag the dispatch a little
                try:
                    service.started(delivery, "w")
                    break
                except Exception:
                    time.sleep(0.02)
            service.finished(delivery, "w", "SUCCEEDED")
            queue.ack(lease)
        time.sleep(0.02)
    queue.close()


@pytest.mark.parametrize(("notify", "sweep_seconds"), [(True, 3600.0), (False, 0.3)], ids=["spool", "sweep-fallback"])
def test_an_engine_with_external_workers_folds_facts_appended_elsewhere(
    tmp_path: Path, notify: bool, sweep_seconds: float
) -> None:
    """Posted to the spool, facts are folded at once; unposted, the periodic ledger sweep finds them."""
    home = Home.open(tmp_path / ".servo")
    engine = EmbeddedEngine(home, _pipeline(), callback_base="http://example.invalid", sweep_seconds=sweep_seconds)
    stop = threading.Event()
    worker = threading.Thread(target=_external_worker, args=(home, stop), kwargs={"notify": notify}, daemon=True)
    worker.start()
    try:
        outcome: RunOutcome = engine.run(timeout=30)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert outcome.state == "SUCCEEDED"
    assert {t["task_key"]: t["state"] for t in outcome.tasks} == {"a": "SUCCEEDED", "b": "SUCCEEDED"}
