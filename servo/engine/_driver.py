"""The embedded engine: one process drives the whole loop on local files.

    ledger (LocalStore) --notify--> compactor --manifest--> reader --view--> controllers
         ^                                                                     |
         |---- worker facts (CallbackService) <-- local worker pool <-- SQLite queue

The driver is the thin I/O shell around the pure parts (SPEC §6): read the published
projection, call `reconcile`, append what it returns, create queue tasks for PENDING
outbox rows and SCHEDULED timers, hand delivered queue tasks to the worker pool or to
`on_timer_fired`, and compact. Killed at any moment, a new driver resumes the same
run: the ledger is durable, the queue redelivers what was never acked, and every
event it may repeat carries the same idempotency key.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from servo.api import Pipeline
from servo.compactor import Compactor, ProjectionReader, StateView
from servo.core.controllers import (
    ControllerConfig,
    CreateStatus,
    Emitter,
    ProjectionView,
    dispatch_outcome_events,
    on_timer_fired,
    pending_dispatches,
    reconcile,
    repair,
)
from servo.core.events import Catalog, Event
from servo.core.ids import new_ulid, run_id_from_run_key
from servo.core.rules import default_spec, registry
from servo.engine._gate import AppendGate
from servo.engine._home import Home
from servo.queue import SqliteQueue
from servo.queue._protocol import Lease
from servo.storage import Ledger
from servo.worker import CallbackService, Delivery

__all__ = ["EmbeddedEngine", "RunOutcome"]

TERMINAL_RUN = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
DISPATCH, TIMER = "dispatch", "timer"


@dataclass
class RunOutcome:
    """How a run ended, with its rows."""

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    resumed: bool
    seconds: float

    @property
    def state(self) -> str:
        """The run's terminal state."""
        return str(self.run["state"])


@dataclass
class _TaskContext:
    """What a task function sees (servo.api.TaskContext)."""

    delivery: Delivery
    callbacks: CallbackService
    worker_id: str
    run_id: str = field(init=False)
    task_key: str = field(init=False)
    attempt: int = field(init=False)
    attempt_id: str = field(init=False)

    def __post_init__(self) -> None:
        d = self.delivery
        self.run_id, self.task_key, self.attempt, self.attempt_id = d.run_id, d.task_key, d.attempt, d.attempt_id

    def heartbeat(self, progress_pct: int | None = None) -> None:
        """Report the attempt alive."""
        self.callbacks.heartbeat(self.delivery, self.worker_id, datetime.now(UTC), progress_pct)


class EmbeddedEngine:
    """Runs a pipeline on the embedded default: local files, SQLite queue, thread pool."""

    def __init__(
        self,
        home: Home,
        pipeline: Pipeline,
        *,
        workers: int = 4,
        poll_seconds: float = 0.02,
        lease_seconds: float = 5.0,
        on_progress: Callable[[Mapping[str, int], str], None] | None = None,
    ) -> None:
        self.home = home
        self.pipeline = pipeline
        self.spec = default_spec()
        self.catalog = Catalog(self.spec)
        self.store = home.store
        self.compactor = Compactor(self.store, self.spec, registry(), merge_every=64)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._gate = AppendGate()  # worker facts never straddle a compaction's cut
        self.ledger = Ledger(self.store, on_append=self._appended)
        self.reader = ProjectionReader(StateView(self.store), self.spec)
        self.queue = SqliteQueue(home.queue_path)
        policy = min((t.retry for t in pipeline.tasks.values()), key=lambda r: r.base_sec)
        self.config = ControllerConfig(
            catalog=self.catalog,
            source="embedded",
            retry_base_sec=policy.base_sec,
            retry_factor=policy.factor,
            retry_cap_sec=policy.cap_sec,
        )
        self.callbacks = CallbackService(home.secret, home.tenant, home.workspace, self._lookup, self._gated_fact)
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.on_progress = on_progress
        self._view = ProjectionView.from_tables({})
        self._running: dict[str, Future[None]] = {}
        self._repaired_at = datetime.min.replace(tzinfo=UTC)
        self._timers_queued: set[str] = set()  # created in the queue by this driver: skip next loops

    # ----------------------------------------------------------------- I/O --

    def _appended(self, event_ids: list[str]) -> None:
        with self._lock:
            self.compactor.notify(event_ids)
        self._wake.set()

    def _append(self, events: list[Event]) -> None:
        if events:
            self.ledger.append_many([(e.event_id, e.to_json().encode()) for e in events])

    def _gated_fact(self, event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
        with self._gate.append():  # the fact's timestamp is taken inside the gate
            self._append_fact(event_type, data, traceparent)

    def _append_fact(self, event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
        now = datetime.now(UTC)
        emit = Emitter(self.config, self.home.tenant, self.home.workspace, now, "worker:embedded")
        event = emit.emit(event_type, data)
        if event_type == "TaskHeartbeat":  # many per attempt: make each id unique in time
            event = event._replace(event_id=new_ulid(now, event.event_id[-16:].encode()[:10]))
        self._append([event])

    def _lookup(self, run_id: str, task_key: str) -> tuple[str | None, int, str] | None:
        task = self._view.task(run_id, task_key)
        return None if task is None else (task.attempt_id, task.attempt, task.state)

    def _refresh(self) -> tuple[ProjectionView, datetime]:
        """Compact, read the published projection, and the watermark timers may trust.

        The compactor runs in this process: right after `compact()` every event
        notified before its cut is folded and published, so the cut is the watermark
        (the manifest's watermark only moves once per idle second).
        """
        with self._gate.cut(), self._lock:
            self.compactor.compact()
            caught_up = self.compactor.caught_up_at
        snapshot = self.reader.read()
        self._view = self.reader.view()  # kept per row by the reader: O(new rows) per read
        published = datetime.fromisoformat(snapshot.watermark) if snapshot.watermark else None
        candidates = [t for t in (caught_up, published) if t is not None]
        watermark = max(candidates) if candidates else datetime.now(UTC)
        return self._view, watermark

    # ---------------------------------------------------------------- run --

    def run(self, run_key: str | None = None, *, timeout: float | None = None) -> RunOutcome:
        """Run the pipeline to completion (resuming an unfinished run of it)."""
        started = time.monotonic()
        with self._lock:
            self.compactor.start()
            self.compactor.repair()  # notifications died with any previous process
        view, _ = self._refresh()
        run_id, resumed = self._start_or_resume(view, run_key)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="servo-worker")
        try:
            while True:
                view, watermark = self._refresh()
                run = view.runs.get(run_id)
                if run is not None and run.state in TERMINAL_RUN and not self._running:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
                self._step(view, watermark, run_id, pool)
                self._progress(view, run_id)
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
        finally:
            pool.shutdown(wait=True)
            self.queue.close()
        view, _ = self._refresh()
        tables = self.reader.read().tables
        run_row = next(r for r in tables["runs"] if r["run_id"] == run_id)
        tasks = [t for t in tables["tasks"] if t["run_id"] == run_id]
        return RunOutcome(run_row, tasks, resumed, time.monotonic() - started)

    def _start_or_resume(self, view: ProjectionView, run_key: str | None) -> tuple[str, bool]:
        tables = self.reader.read().tables
        for row in sorted(tables["runs"], key=lambda r: str(r["created_at"]), reverse=True):
            labels = row.get("labels") or {}
            mine = labels.get("servo.pipeline") == self.pipeline.name and row["state"] not in TERMINAL_RUN
            if mine and (run_key is None or row.get("run_key") == run_key):
                return str(row["run_id"]), True
        now = datetime.now(UTC)
        key = run_key or f"{self.pipeline.name}:{now.isoformat()}"
        run_id = run_id_from_run_key(self.home.secret, self.home.tenant, self.home.workspace, key)
        emit = Emitter(self.config, self.home.tenant, self.home.workspace, now, "cli:run")
        plan_id = self.pipeline.plan_id()
        self._append(
            [
                emit.emit(
                    "RunTriggered",
                    {
                        "run_id": run_id,
                        "plan_id": plan_id,
                        "trigger": {"kind": "MANUAL"},
                        "root_assets": [],
                        "run_key": key,
                        "labels": {"servo.pipeline": self.pipeline.name},
                    },
                ),
                # Ids come from (now, key): one millisecond later keeps the plan after its run.
                Emitter(self.config, self.home.tenant, self.home.workspace, now + timedelta(milliseconds=1), "cli:run").emit(
                    "PlanCreated", {"run_id": run_id, "plan_id": plan_id, "tasks": self.pipeline.plan()}
                ),
            ]
        )
        return run_id, False

    def _step(self, view: ProjectionView, watermark: datetime, run_id: str, pool: ThreadPoolExecutor) -> None:
        now = datetime.now(UTC)
        tenant, workspace, config = self.home.tenant, self.home.workspace, self.config
        self._append(reconcile(view, now, watermark, tenant=tenant, workspace=workspace, config=config))
        if now - self._repaired_at >= timedelta(seconds=10):  # anti-entropy, INV-5
            self._repaired_at = now
            self._append(repair(view, now, watermark, tenant=tenant, workspace=workspace, config=config))
        enqueued: list[Event] = []  # one group commit for the step's acknowledgements, not one per row
        for row in pending_dispatches(view):
            delivery = Delivery(
                tenant=self.home.tenant,
                workspace=self.home.workspace,
                run_id=row.run_id,
                task_key=row.task_key,
                attempt=row.attempt,
                attempt_id=row.attempt_id,
                token=self.callbacks.token_for(row.run_id, row.task_key, row.attempt_id),
            )
            created = self.queue.create_task(row.cloud_task_id, DISPATCH, delivery.to_json(), now)
            status = CreateStatus.CREATED if created else CreateStatus.ALREADY_EXISTS
            enqueued += dispatch_outcome_events(row, status, now, tenant=tenant, workspace=workspace, config=config)
        self._append(enqueued)
        for timer in view.timers.values():
            if timer.state == "SCHEDULED" and timer.run_id == run_id and timer.timer_id not in self._timers_queued:
                self.queue.create_task(timer.cloud_task_id, TIMER, timer.timer_id.encode(), timer.fire_at)
                self._timers_queued.add(timer.timer_id)
        for lease in self.queue.lease(now, max_tasks=self.workers * 4, lease_seconds=self.lease_seconds):
            self._deliver(lease, view, watermark, now, pool)

    def _deliver(self, lease: Lease, view: ProjectionView, watermark: datetime, now: datetime, pool: ThreadPoolExecutor) -> None:
        task = lease.task
        if task.target == TIMER:
            timer = view.timers.get(task.payload.decode())
            if timer is None:
                self.queue.nack(lease, now + timedelta(seconds=1))  # not folded yet
                return
            self._append(
                on_timer_fired(
                    view, timer, now, watermark, tenant=self.home.tenant, workspace=self.home.workspace, config=self.config
                )
            )
            self.queue.ack(lease)
            return
        if task.name in self._running:
            return
        self._running[task.name] = pool.submit(self._work, lease)

    def _work(self, lease: Lease) -> None:
        """Run one delivered attempt through the worker contract, then ack."""
        delivery = Delivery.from_json(lease.task.payload)
        worker_id = threading.current_thread().name
        try:
            try:
                self.callbacks.started(delivery, worker_id)
            except Exception:
                self.queue.ack(lease)  # stale or forged: nothing to run
                return
            context = _TaskContext(delivery, self.callbacks, worker_id)
            try:
                self.pipeline.call(delivery.task_key, context)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
                where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
                self.callbacks.finished(delivery, worker_id, "FAILED", message + where)
            else:
                self.callbacks.finished(delivery, worker_id, "SUCCEEDED")
            self.queue.ack(lease)
        finally:
            self._running.pop(lease.task.name, None)
            self._wake.set()

    def _progress(self, view: ProjectionView, run_id: str) -> None:
        if self.on_progress is None:
            return
        counts: dict[str, int] = {}
        for (rid, _), task in view.tasks.items():
            if rid == run_id:
                counts[task.state] = counts.get(task.state, 0) + 1
        run = view.runs.get(run_id)
        self.on_progress(counts, run.state if run else "PENDING")
