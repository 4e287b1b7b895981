"""The embedded engine's observability hooks, kept out of the driver loop (ADR 011).

The driver calls these at a few points: when it triggers or resumes a run (its
trace), when it appends (trace on the run's events, appended-event counter), when
it enqueues a dispatch (the Delivery's span, finish → dispatch latency), around
each attempt in a worker (task span, log ids, execution time, failure log) and
when the loop fails. Everything here is I/O-shell code; the controllers it
surrounds stay pure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from servo import obs
from servo._errors import ServoError
from servo.core.controllers import (
    TERMINAL_RUN_STATES,
    OutboxRecord,
    ProjectionView,
    TimerRecord,
    deterministic_ulid,
)
from servo.core.events import Event
from servo.queue import SqliteQueue
from servo.storage import Ledger
from servo.worker import Delivery, error_text

__all__ = [
    "RunTraces",
    "attempt_scope",
    "observe_dispatch",
    "observe_queue_depth",
    "record_appended",
    "run_failed",
    "run_finished",
    "task_finished",
    "timer_handled",
    "worker_failed",
]

_log: Final = logging.getLogger("servo.engine")
_worker_log: Final = logging.getLogger("servo.worker")


class RunTraces:
    """The traceparent of each run this driver drives: made at trigger, read back on resume."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._by_run: dict[str, str] = {}

    def trigger(self, run_id: str, pipeline: str) -> str:
        """A new trace for a run about to be triggered (its RunTriggered will carry it)."""
        traceparent = obs.new_run_traceparent({"servo.run_id": run_id, "servo.pipeline": pipeline})
        self._by_run[run_id] = traceparent
        _log.info("run %s triggered", run_id, extra={"run_id": run_id, "trace_id": obs.trace_id_of(traceparent)})
        return traceparent

    def resume(self, row: Mapping[str, Any]) -> str:
        """The trace of a run being resumed, from its RunTriggered (found by id, no listing)."""
        run_id = str(row["run_id"])
        traceparent = self._read(run_id, row.get("created_at"))
        if traceparent is None:  # a run triggered before traces: derive one, stable across resumes
            digest = hashlib.sha256(f"servo.run\x1f{run_id}".encode()).hexdigest()
            traceparent = f"00-{digest[:32]}-{digest[32:48]}-01"
        self._by_run[run_id] = traceparent
        _log.info("run %s resumed", run_id, extra={"run_id": run_id, "trace_id": obs.trace_id_of(traceparent)})
        return traceparent

    def _read(self, run_id: str, created_at: object) -> str | None:
        if isinstance(created_at, str):
            created_at = datetime.fromisoformat(created_at)
        if not isinstance(created_at, datetime):
            return None
        try:
            body = self._ledger.read(deterministic_ulid(created_at, f"run:{run_id}"))
            found = json.loads(body).get("traceparent")
        except (ServoError, ValueError):
            return None
        return found if isinstance(found, str) and obs.trace_id_of(found) else None

    def get(self, run_id: str) -> str | None:
        """The run's traceparent, if this driver knows it."""
        return self._by_run.get(run_id)

    def stamp(self, events: Sequence[Event]) -> list[Event]:
        """Put its run's traceparent on every event that has none (ids and keys unchanged)."""
        out = []
        for event in events:
            if event.traceparent is None:
                traceparent = self._by_run.get(event.data.get("run_id", ""))
                if traceparent is not None:
                    event = event._replace(traceparent=traceparent)
            out.append(event)
        return out

    def delivery(self, row: OutboxRecord) -> str | None:
        """The "servo.dispatch" span a Delivery carries: a child of the run's span."""
        attributes = {"servo.run_id": row.run_id, "servo.task_key": row.task_key, "servo.attempt": row.attempt}
        return obs.child_traceparent(self._by_run.get(row.run_id), "servo.dispatch", row.dispatch_id, attributes)


def record_appended(events: Sequence[Event], created: Sequence[bool]) -> None:
    """Count the newly appended events by type."""
    obs.count_appended((e.event_type for e in events), created)


def observe_dispatch(view: ProjectionView, row: OutboxRecord, now: datetime) -> None:
    """Finish → dispatch latency of a first attempt that waited for upstream tasks."""
    task = view.task(row.run_id, row.task_key)
    if task is not None and row.attempt == 1 and task.deps_total > 0:
        obs.observe_dispatch_latency(task.ready_at, now)


_DEPTH_EVERY: Final = 0.1
_depth_read_at: weakref.WeakKeyDictionary[SqliteQueue, float] = weakref.WeakKeyDictionary()


def observe_queue_depth(queue: SqliteQueue, now: datetime) -> None:
    """Refresh the queue-depth gauge, at most every 0.1 s (a count query costs ~0.3 ms)."""
    clock = time.monotonic()
    if clock - _depth_read_at.get(queue, float("-inf")) >= _DEPTH_EVERY:
        _depth_read_at[queue] = clock
        obs.set_queue_depth(queue.depth_by_state(now))


@contextmanager
def attempt_scope(delivery: Delivery) -> Iterator[Delivery]:
    """The worker side of one attempt: a "servo.task" span (current while the task runs) and
    log ids; yields the delivery whose callbacks carry the worker's traceparent."""
    attributes = {"servo.run_id": delivery.run_id, "servo.task_key": delivery.task_key, "servo.attempt": delivery.attempt}
    with obs.task_span(delivery.traceparent, "servo.task", delivery.attempt_id, attributes) as traceparent:
        ids = {"tenant_id": delivery.tenant, "run_id": delivery.run_id, "task_key": delivery.task_key}
        with obs.log_context(**ids, attempt=delivery.attempt, attempt_id=delivery.attempt_id, trace_id=obs.trace_id_of(traceparent)):
            _worker_log.info("task %s attempt %d started", delivery.task_key, delivery.attempt)
            yield delivery if traceparent is None else replace(delivery, traceparent=traceparent)


def task_finished(delivery: Delivery, seconds: float, error: BaseException | None = None) -> None:
    """Time the attempt; a failure is logged (WARNING, with its type) and counted."""
    if error is None:
        obs.TASK_EXECUTION_SECONDS.labels("SUCCEEDED").observe(seconds)
        _worker_log.info("task %s attempt %d succeeded in %.3f s", delivery.task_key, delivery.attempt, seconds)
        return
    obs.TASK_EXECUTION_SECONDS.labels("FAILED").observe(seconds)
    obs.record_error("task", error)
    obs.mark_span_failed(error)
    _worker_log.warning(
        "task %s attempt %d failed: %s",
        delivery.task_key,
        delivery.attempt,
        error_text(error),
        extra={"component": "task", "error_type": type(error).__name__, "seconds": round(seconds, 6)},
    )


def worker_failed(delivery: Delivery, error: Exception) -> None:
    """An attempt's bookkeeping failed (a callback or ack): log and count; the queue redelivers."""
    obs.record_error("worker", error)
    extra = {"component": "worker", "error_type": type(error).__name__}
    _worker_log.error("attempt %s of task %s could not report: %s", delivery.attempt_id, delivery.task_key, error, extra=extra, exc_info=True)


def attempt_superseded(delivery: Delivery, error: Exception) -> None:
    """An attempt's report was refused as stale: the task was cancelled or the attempt
    timed out while it ran. Its result is discarded; nothing is retried."""
    extra = {"component": "worker", "error_type": type(error).__name__}
    _worker_log.info("attempt %s of task %s ended while running; result discarded: %s", delivery.attempt_id, delivery.task_key, error, extra=extra)


def run_failed(run_id: str, error: Exception) -> None:
    """The driver loop stopped on an error: log and count it with the run's ids."""
    obs.record_error("engine", error)
    extra = {"component": "engine", "error_type": type(error).__name__, "run_id": run_id}
    _log.error("run %s stopped: %s", run_id, error, extra=extra, exc_info=not isinstance(error, TimeoutError | ServoError))


def timer_handled(view: ProjectionView, timer: TimerRecord, events: Sequence[Event]) -> None:
    """Report what a timer's handling means for operators: a run that missed its SLA."""
    if timer.timer_type != "SLA_CHECK" or timer.run_id is None:
        return
    run = view.runs.get(timer.run_id)
    fired = any(e.event_type == "TimerFired" for e in events)
    if run is None or not fired or run.state in TERMINAL_RUN_STATES:
        return  # rescheduled (the watermark is behind), or the run ended in time
    cancel = any(e.event_type == "RunCancelRequested" for e in events)
    obs.RUN_SLA_MISSED.labels("cancel" if cancel else "alert").inc()
    extra = {"component": "engine", "error_type": "SlaMissed", "run_id": run.run_id}
    what = "cancelling it" if cancel else "it goes on (on_sla_miss='alert')"
    _log.warning("run %s missed its SLA of %s s; %s", run.run_id, f"{run.sla_sec:g}" if run.sla_sec else "?", what, extra=extra)


def attempts_timed_out(events: Sequence[Event]) -> None:
    """An attempt the engine ended for silence (AttemptTimedOut: no heartbeat within its
    heartbeat_timeout_sec, or its dispatch never started): a warning naming the task,
    and a count under servo_errors_total{component="engine"}, as a task's own error has."""
    for event in events:
        if event.event_type != "AttemptTimedOut":
            continue
        data = event.data
        reason = str(data.get("reason", ""))
        error_type = "HeartbeatTimeout" if reason == "HEARTBEAT_TIMEOUT" else "DispatchTimeout"
        obs.ERRORS.labels("engine", error_type).inc()
        why = (
            "no heartbeat within its heartbeat_timeout_sec"
            if reason == "HEARTBEAT_TIMEOUT"
            else "dispatched but never started within its heartbeat_timeout_sec"
        )
        extra = {
            "component": "engine", "error_type": error_type, "run_id": data.get("run_id"),
            "task_key": data.get("task_key"), "attempt": data.get("attempt"), "attempt_id": data.get("attempt_id"),
        }
        _log.warning(
            "task %s attempt %s of run %s timed out (%s): %s", data.get("task_key"), data.get("attempt"),
            data.get("run_id"), reason, why, extra=extra,
        )


def run_finished(run: Mapping[str, Any], seconds: float) -> None:
    """The run reached a terminal state."""
    extra = {"run_id": run["run_id"], "state": run["state"], "seconds": round(seconds, 3)}
    _log.info("run %s finished: %s in %.1f s", run["run_id"], run["state"], seconds, extra=extra)
