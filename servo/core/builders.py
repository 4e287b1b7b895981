"""Build Layer 1 events with deterministic ids: for tests, model checks, benchmarks
and producers that want catalog-correct envelopes without writing JSON by hand.

`EventBuilder` owns a logical clock: every event gets the next ULID (millisecond
time from the clock, a counter in the random part), so its events sort in the order
they were built unless a caller passes an explicit `at`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from servo.core.events import Catalog, Event, format_timestamp
from servo.core.ids import dispatch_id, new_ulid

__all__ = ["EventBuilder", "TaskDef"]

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TaskDef:
    """A task of a plan."""

    task_key: str
    depends_on: Sequence[str] = ()
    max_attempts: int = 1
    heartbeat_timeout_sec: int = 60
    asset_key: str | None = None
    partition_key: str | None = None
    worker_queue: str | None = None

    def payload(self) -> dict[str, Any]:
        """The PlanCreated entry of this task."""
        out: dict[str, Any] = {
            "task_key": self.task_key,
            "depends_on": list(self.depends_on),
            "max_attempts": self.max_attempts,
            "heartbeat_timeout_sec": self.heartbeat_timeout_sec,
        }
        for name in ("asset_key", "partition_key", "worker_queue"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class EventBuilder:
    """Makes validated events for one tenant/workspace with a deterministic clock."""

    catalog: Catalog
    tenant_id: str = "acme"
    workspace_id: str = "prod"
    now: datetime = EPOCH
    step: timedelta = timedelta(milliseconds=1)
    _counter: int = field(default=0, repr=False)

    def next_id(self, at: datetime | None = None) -> tuple[str, datetime]:
        """A fresh ULID and its instant; the clock advances by `step`."""
        self._counter += 1
        when = at if at is not None else self.now
        if at is None:
            self.now += self.step
        return new_ulid(when, self._counter.to_bytes(10, "big")), when

    def event(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        at: datetime | None = None,
        source: str = "builder",
    ) -> Event:
        """Any catalog event with the next id."""
        event_id, when = self.next_id(at)
        return self.catalog.make(
            event_type,
            data,
            event_id=event_id,
            tenant_id=self.tenant_id,
            workspace_id=self.workspace_id,
            occurred_at=when,
            source=source,
        )

    def run_triggered(self, run_id: str, plan_id: str = "plan_1", **extra: Any) -> Event:
        """RunTriggered with a manual trigger."""
        data = {
            "run_id": run_id,
            "plan_id": plan_id,
            "trigger": {"kind": "MANUAL"},
            "root_assets": [],
            "labels": {},
        }
        data.update(extra)
        return self.event("RunTriggered", data)

    def plan_created(self, run_id: str, tasks: Sequence[TaskDef], plan_id: str = "plan_1") -> Event:
        """PlanCreated for a list of tasks."""
        return self.event(
            "PlanCreated",
            {"run_id": run_id, "plan_id": plan_id, "tasks": [t.payload() for t in tasks]},
        )

    def dispatch_requested(
        self, run_id: str, task_key: str, attempt: int, attempt_id: str, queue: str = "default"
    ) -> Event:
        """DispatchRequested for an attempt."""
        return self.event(
            "DispatchRequested",
            {
                "run_id": run_id,
                "task_key": task_key,
                "attempt": attempt,
                "attempt_id": attempt_id,
                "dispatch_id": dispatch_id(run_id, task_key, attempt),
                "worker_queue": queue,
            },
        )

    def dispatch_enqueued(self, dispatch: str, cloud_task: str) -> Event:
        """DispatchEnqueued (the dispatcher's ack)."""
        return self.event(
            "DispatchEnqueued", {"dispatch_id": dispatch, "cloud_task_id": cloud_task}
        )

    def _fact(
        self, run_id: str, task_key: str, attempt: int, attempt_id: str, worker: str = "w-1"
    ) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "task_key": task_key,
            "attempt": attempt,
            "attempt_id": attempt_id,
            "worker_id": worker,
        }

    def started(self, run_id: str, task_key: str, attempt: int, attempt_id: str) -> Event:
        """TaskStarted."""
        return self.event("TaskStarted", self._fact(run_id, task_key, attempt, attempt_id))

    def heartbeat(
        self, run_id: str, task_key: str, attempt: int, attempt_id: str, at: datetime | None = None
    ) -> Event:
        """TaskHeartbeat at `at` (default: the clock)."""
        data = self._fact(run_id, task_key, attempt, attempt_id)
        data["heartbeat_at"] = format_timestamp(at or self.now)
        return self.event("TaskHeartbeat", data)

    def finished(
        self,
        run_id: str,
        task_key: str,
        attempt: int,
        attempt_id: str,
        outcome: str = "SUCCEEDED",
        error: str | None = None,
    ) -> Event:
        """TaskFinished with an outcome."""
        data = self._fact(run_id, task_key, attempt, attempt_id)
        data["outcome"] = outcome
        if error is not None:
            data["error_message"] = error
        return self.event("TaskFinished", data)

    def timed_out(
        self,
        run_id: str,
        task_key: str,
        attempt: int,
        attempt_id: str,
        reason: str = "HEARTBEAT_TIMEOUT",
    ) -> Event:
        """AttemptTimedOut."""
        return self.event(
            "AttemptTimedOut",
            {
                "run_id": run_id,
                "task_key": task_key,
                "attempt": attempt,
                "attempt_id": attempt_id,
                "reason": reason,
            },
        )

    def timer_requested(
        self,
        timer_id: str,
        timer_type: str,
        fire_at: datetime,
        *,
        run_id: str | None = None,
        task_key: str | None = None,
        attempt: int | None = None,
    ) -> Event:
        """TimerRequested."""
        return self.event(
            "TimerRequested",
            {
                "timer_id": timer_id,
                "timer_type": timer_type,
                "run_id": run_id,
                "task_key": task_key,
                "attempt": attempt,
                "fire_at": format_timestamp(fire_at),
            },
        )

    def timer_fired(
        self,
        timer_id: str,
        timer_type: str,
        *,
        run_id: str | None = None,
        task_key: str | None = None,
        attempt: int | None = None,
    ) -> Event:
        """TimerFired."""
        return self.event(
            "TimerFired",
            {
                "timer_id": timer_id,
                "timer_type": timer_type,
                "run_id": run_id,
                "task_key": task_key,
                "attempt": attempt,
            },
        )

    def cancel(self, run_id: str, by: str = "tester") -> Event:
        """RunCancelRequested."""
        return self.event("RunCancelRequested", {"run_id": run_id, "requested_by": by})
