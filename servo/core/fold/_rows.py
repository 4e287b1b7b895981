"""Mutable rows of the Layer 1 projection and the per-run partition that holds them.

A partition is everything one run's events can touch (its run, tasks, edges, outbox
rows, timers, rejections and idempotency keys); partitions never read each other, so
a late event refolds only its own partition (ADR 004).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from servo.core.ids import dispatch_cloud_task_id, timer_cloud_task_id

__all__ = [
    "Derived",
    "EdgeRow",
    "OutboxRow",
    "Partition",
    "Rejection",
    "RunRow",
    "TaskRow",
    "TimerRow",
]


@dataclass(slots=True)
class TaskRow:
    """A row of `tasks`."""

    run_id: str
    task_key: str
    state: str
    depends_on: tuple[str, ...]
    max_attempts: int
    heartbeat_timeout_sec: int
    asset_key: str | None
    partition_key: str | None
    worker_queue: str | None
    row_version: str
    attempt: int = 0
    attempt_id: str | None = None
    deps_satisfied_count: int = 0
    last_heartbeat_at: datetime | None = None
    ready_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error_message: str | None = None

    @property
    def deps_total(self) -> int:
        """Number of upstream edges."""
        return len(self.depends_on)


@dataclass(slots=True)
class RunRow:
    """A row of `runs` (task counts are computed from the partition on output)."""

    run_id: str
    plan_id: str
    state: str
    run_key: str | None
    trigger_kind: str
    created_at: datetime
    code_version: str | None
    labels: dict[str, Any]
    row_version: str
    tasks_total: int = 0
    completed_at: datetime | None = None


@dataclass(slots=True)
class EdgeRow:
    """A row of `dep_satisfaction`: one upstream -> downstream edge."""

    run_id: str
    upstream_task_key: str
    downstream_task_key: str
    row_version: str
    satisfied: bool = False
    resolution: str | None = None
    satisfying_attempt: int | None = None


@dataclass(slots=True)
class OutboxRow:
    """A row of `dispatch_outbox`."""

    dispatch_id: str
    run_id: str
    task_key: str
    attempt: int
    attempt_id: str
    worker_queue: str
    state: str
    row_version: str

    @property
    def cloud_task_id(self) -> str:
        """The API-safe queue task name, derived from dispatch_id (ADR 003)."""
        return dispatch_cloud_task_id(self.dispatch_id)


@dataclass(slots=True)
class TimerRow:
    """A row of `timers`."""

    timer_id: str
    timer_type: str
    run_id: str | None
    task_key: str | None
    attempt: int | None
    fire_at: datetime
    state: str
    row_version: str

    @property
    def cloud_task_id(self) -> str:
        """The API-safe queue task name, derived from timer_id (ADR 003)."""
        return timer_cloud_task_id(self.timer_id)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row of `rejected_events`."""

    event_id: str
    reason: str
    event_type: str | None
    detail: str


class Derived(NamedTuple):
    """A derived event raised by an effect, applied after the causing event (a
    NamedTuple: one is built for every downstream task a finish resolves)."""

    machine: str
    instance: Any
    event_type: str
    data: dict[str, Any]


@dataclass
class Partition:
    """All state one run (or one run-less timer) can reach."""

    key: str
    run: RunRow | None = None
    tasks: dict[str, TaskRow] = field(default_factory=dict)
    topo_order: list[str] = field(default_factory=list)
    downstream: dict[str, list[str]] = field(default_factory=dict)
    edges: dict[tuple[str, str], EdgeRow] = field(default_factory=dict)
    outbox: dict[str, OutboxRow] = field(default_factory=dict)
    timers: dict[str, TimerRow] = field(default_factory=dict)
    rejected: dict[str, Rejection] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    task_counts: dict[str, int] = field(default_factory=dict)
    max_event_id: str = ""
    pending: deque[Derived] = field(default_factory=deque)
