"""The ready controller (READY task -> DispatchRequested) and the dispatcher's pure half.

The dispatcher itself is I/O: it reads PENDING outbox rows, creates one queue task
per row named by the row's `cloud_task_id` (so a repeat is the same task, INV-4) and
acknowledges with DispatchEnqueued. What it decides is here: which rows to send
(`pending_dispatches`) and which events a queue answer leads to
(`dispatch_outcome_events`), so the runtime and the model checks share one rule.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

from servo.core.controllers._emit import ControllerConfig, Emitter, deterministic_ulid
from servo.core.controllers._view import OutboxRecord, ProjectionView, TaskRecord
from servo.core.events import Event
from servo.core.ids import dispatch_id

__all__ = [
    "CreateStatus",
    "attempt_id_for",
    "dispatch_enqueued_event",
    "dispatch_outcome_events",
    "pending_dispatches",
    "ready_intents",
]


class CreateStatus(StrEnum):
    """What the queue answered to a create: new task, existing name (409), or refusal."""

    CREATED = "CREATED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    REJECTED = "REJECTED"


def attempt_id_for(dispatch: str, now: datetime) -> str:
    """The attempt id a controller mints at `now`: `ULID(now, sha256(dispatch_id)[:10])`.

    It equals the event_id of the DispatchRequested that carries it (both hash the
    same text): the attempt is named by the event that created it.
    """
    return deterministic_ulid(now, dispatch)


_IN_FLIGHT = frozenset({"DISPATCHED", "RUNNING"})
# The same READY tasks are looked at on every driver loop until they are dispatched.
_dispatch_id: Callable[[str, str, int], str] = lru_cache(maxsize=1 << 16)(dispatch_id)


def ready_intents(view: ProjectionView, emit: Emitter) -> list[Event]:
    """DispatchRequested for attempt+1 of every READY task without that outbox row.

    With `config.max_in_flight`, a run gets new dispatches (in task_key order) only
    while fewer than that many of its attempts are requested, dispatched or running.
    """
    limit = emit.config.max_in_flight
    in_flight: dict[str, int] = {}
    ready: list[TaskRecord] = []  # in (run_id, task_key) order: the view's
    for task in view.tasks.values():
        state = task.state
        if state == "READY":
            ready.append(task)
        elif limit is not None and state in _IN_FLIGHT:
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1
    candidates: list[tuple[TaskRecord, str]] = []
    outbox, runs = view.outbox, view.runs
    for task in ready:
        if limit is not None and in_flight.get(task.run_id, 0) >= limit:
            continue  # the run is full: nothing of it is dispatched whatever else counts
        run = runs.get(task.run_id)
        if run is None or run.state != "RUNNING":
            continue
        attempt = task.attempt + 1
        if attempt > task.max_attempts:
            continue
        did = _dispatch_id(task.run_id, task.task_key, attempt)
        if did in outbox:
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1  # requested, not folded as DISPATCHED yet
            continue
        candidates.append((task, did))
    out: list[Event] = []
    for task, did in candidates:
        if limit is not None:
            if in_flight.get(task.run_id, 0) >= limit:
                continue
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1
        out.append(
            emit.emit(
                "DispatchRequested",
                {
                    "run_id": task.run_id,
                    "task_key": task.task_key,
                    "attempt": task.attempt + 1,
                    "attempt_id": attempt_id_for(did, emit.now),
                    "dispatch_id": did,
                    "worker_queue": task.worker_queue or emit.config.default_worker_queue,
                },
            )
        )
    return out


def pending_dispatches(view: ProjectionView) -> list[OutboxRecord]:
    """PENDING outbox rows whose attempt is still the task's live one, by dispatch_id.

    A row whose task moved on (cancelled, timed out) is not sent: its worker facts
    would be STALE_ATTEMPT anyway.
    """
    out: list[OutboxRecord] = []
    for row in view.outbox.values():
        if row.status != "PENDING":
            continue
        task = view.task(row.run_id, row.task_key)
        if task is not None and task.is_live and task.attempt_id == row.attempt_id:
            out.append(row)
    return out


def dispatch_enqueued_event(
    row: OutboxRecord,
    now: datetime,
    *,
    tenant: str,
    workspace: str,
    config: ControllerConfig,
    source: str = "dispatcher",
) -> Event:
    """The dispatcher's acknowledgement that the row's queue task exists."""
    emit = Emitter(config, tenant, workspace, now, source)
    return emit.emit("DispatchEnqueued", {"dispatch_id": row.dispatch_id, "cloud_task_id": row.cloud_task_id})


def dispatch_outcome_events(
    row: OutboxRecord,
    status: CreateStatus,
    now: datetime,
    *,
    tenant: str,
    workspace: str,
    config: ControllerConfig,
    source: str = "dispatcher",
) -> list[Event]:
    """Events after the queue answered a create for `row`.

    CREATED and ALREADY_EXISTS (HTTP 409 / gRPC ALREADY_EXISTS) both mean the task
    exists: acknowledge (INV-4). A refusal ends the attempt with DISPATCH_TIMEOUT so
    the retry policy applies instead of a silent hang.
    """
    if status in (CreateStatus.CREATED, CreateStatus.ALREADY_EXISTS):
        return [dispatch_enqueued_event(row, now, tenant=tenant, workspace=workspace, config=config, source=source)]
    emit = Emitter(config, tenant, workspace, now, source)
    return [
        emit.emit(
            "AttemptTimedOut",
            {
                "run_id": row.run_id,
                "task_key": row.task_key,
                "attempt": row.attempt,
                "attempt_id": row.attempt_id,
                "reason": "DISPATCH_TIMEOUT",
            },
        )
    ]
