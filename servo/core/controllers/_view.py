"""A read-only view of the Layer 1 tables, the only input controllers get (INV-7, P5).

The view is built from rows: either the tables the compactor publishes (JSON rows from
`Projection.tables()` / `servo fold --json`, or rows read back from Parquet, whose
timestamps are datetimes) or, without the JSON round trip, the live rows of an
in-memory `Projection`. Both give equal views (a test pins it). Records are frozen:
a controller cannot write the projection, only return events.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from servo.core.events import parse_timestamp
from servo.core.fold import Projection
from servo.core.ids import dispatch_cloud_task_id, is_finite_number, timer_cloud_task_id

__all__ = [
    "ON_SLA_MISS_LABEL",
    "SLA_LABEL",
    "TERMINAL_RUN_STATES",
    "OutboxRecord",
    "ProjectionView",
    "RunRecord",
    "TaskRecord",
    "TimerRecord",
    "run_sla",
]

TERMINAL_TASK_STATES = frozenset({"SKIPPED", "CANCELLED", "FAILED", "SUCCEEDED"})
LIVE_TASK_STATES = frozenset({"DISPATCHED", "RUNNING"})
TERMINAL_RUN_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
RUN_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")  # SPEC §5 runs.state


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """The columns of a `tasks` row that controllers use."""

    run_id: str
    task_key: str
    state: str
    attempt: int
    attempt_id: str | None
    deps_total: int
    deps_satisfied_count: int
    max_attempts: int
    heartbeat_timeout_sec: int
    last_heartbeat_at: datetime | None
    ready_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker_queue: str | None
    row_version: str
    asset_key: str | None = None
    partition_key: str | None = None

    @property
    def is_live(self) -> bool:
        """An attempt is in flight (DISPATCHED or RUNNING)."""
        return self.state in LIVE_TASK_STATES

    @property
    def is_terminal(self) -> bool:
        """SKIPPED, CANCELLED, FAILED or SUCCEEDED."""
        return self.state in TERMINAL_TASK_STATES


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The columns of a `runs` row that controllers use (the SLA from its labels)."""

    run_id: str
    plan_id: str
    state: str
    row_version: str
    created_at: datetime | None = None
    sla_sec: float | None = None
    cancel_on_sla_miss: bool = False
    pipeline: str | None = None
    """The `servo.pipeline` label: which declared pipeline's code runs its tasks."""
    retry_policies: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    """From the `servo.retry` label, sorted by task key: (task_key, (base_sec, factor,
    cap_sec)) of each task whose retry policy is not the default."""

    def retry_policy(self, task_key: str) -> tuple[float, float, float] | None:
        """The task's own (base_sec, factor, cap_sec), or None for the default."""
        policies = self.retry_policies
        i = bisect.bisect_left(policies, task_key, key=lambda p: p[0])
        return policies[i][1] if i < len(policies) and policies[i][0] == task_key else None


SLA_LABEL = "servo.sla_sec"
ON_SLA_MISS_LABEL = "servo.on_sla_miss"
PIPELINE_LABEL = "servo.pipeline"
RETRY_LABEL = "servo.retry"


def _label_map(labels: object) -> Mapping[str, Any] | None:
    """A run's labels as a mapping (a dict, or the JSON text a Parquet row holds)."""
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except ValueError:
            return None
    return labels if isinstance(labels, Mapping) else None


def run_retry(labels: object) -> tuple[tuple[str, tuple[float, float, float]], ...]:
    """The per-task retry policies a run's `servo.retry` label carries (a JSON object
    task_key -> [base_sec, factor, cap_sec]); a malformed entry is the default policy."""
    found = _label_map(labels)
    text = None if found is None else found.get(RETRY_LABEL)
    if not isinstance(text, str):
        return ()
    try:
        table = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(table, Mapping):
        return ()
    out: list[tuple[str, tuple[float, float, float]]] = []
    for key, value in table.items():
        if (
            isinstance(value, list)
            and len(value) == 3
            and all(is_finite_number(v) for v in value)
            and value[0] >= 0
            and value[1] >= 1
            and value[2] >= 0
        ):
            out.append((str(key), (float(value[0]), float(value[1]), float(value[2]))))
    return tuple(sorted(out))


def run_pipeline(labels: object) -> str | None:
    """The pipeline a run belongs to (its `servo.pipeline` label), if it names one."""
    found = _label_map(labels)
    name = None if found is None else found.get(PIPELINE_LABEL)
    return name if isinstance(name, str) and name else None


def run_sla(labels: object) -> tuple[float | None, bool]:
    """(sla seconds or None, cancel on a miss) from a run's labels (a dict, or the JSON
    text a Parquet row holds). A malformed or non-positive SLA is no SLA."""
    labels = _label_map(labels)
    if labels is None:
        return None, False
    try:
        sla: float | None = float(labels[SLA_LABEL]) if SLA_LABEL in labels else None
    except (TypeError, ValueError):
        sla = None
    if sla is not None and not (0 < sla < math.inf):
        sla = None
    return sla, labels.get(ON_SLA_MISS_LABEL) == "cancel"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A `dispatch_outbox` row."""

    dispatch_id: str
    cloud_task_id: str
    run_id: str
    task_key: str
    attempt: int
    attempt_id: str
    worker_queue: str
    status: str
    row_version: str


@dataclass(frozen=True, slots=True)
class TimerRecord:
    """A `timers` row."""

    timer_id: str
    cloud_task_id: str
    timer_type: str
    run_id: str | None
    task_key: str | None
    attempt: int | None
    fire_at: datetime
    state: str
    row_version: str


# Sort keys in C (a view is rebuilt on every driver loop).
_TASK_ORDER = attrgetter("run_id", "task_key")
_OUTBOX_ORDER = attrgetter("dispatch_id")
_TIMER_ORDER = attrgetter("timer_id")

# The rows derive cloud task ids by hashing on every read; a view is rebuilt often.
_dispatch_cloud_id: Callable[[str], str] = lru_cache(maxsize=1 << 16)(dispatch_cloud_task_id)
_timer_cloud_id: Callable[[str], str] = lru_cache(maxsize=1 << 16)(timer_cloud_task_id)


def _ts(value: object, what: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return parse_timestamp(value, what)


def _req_ts(value: object, what: str) -> datetime:
    out = _ts(value, what)
    if out is None:
        raise ValueError(f"{what} is required")
    return out


class ProjectionView:
    """Runs, tasks, outbox rows and timers by key, plus the lookups controllers need."""

    __slots__ = ("_timers_by_attempt", "outbox", "runs", "tasks", "timers")

    def __init__(
        self,
        runs: Iterable[RunRecord],
        tasks: Iterable[TaskRecord],
        outbox: Iterable[OutboxRecord],
        timers: Iterable[TimerRecord],
    ) -> None:
        self.runs: Mapping[str, RunRecord] = MappingProxyType({r.run_id: r for r in runs})
        self.tasks: Mapping[tuple[str, str], TaskRecord] = MappingProxyType(
            {(t.run_id, t.task_key): t for t in sorted(tasks, key=_TASK_ORDER)}
        )
        self.outbox: Mapping[str, OutboxRecord] = MappingProxyType(
            {o.dispatch_id: o for o in sorted(outbox, key=_OUTBOX_ORDER)}
        )
        self.timers: Mapping[str, TimerRecord] = MappingProxyType(
            {t.timer_id: t for t in sorted(timers, key=_TIMER_ORDER)}
        )
        self._timers_by_attempt: Mapping[tuple[str, str | None, str | None, int | None], tuple[TimerRecord, ...]] | None
        self._timers_by_attempt = None  # built on the first timers_of

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProjectionView):
            return NotImplemented
        return (
            dict(self.runs) == dict(other.runs)
            and dict(self.tasks) == dict(other.tasks)
            and dict(self.outbox) == dict(other.outbox)
            and dict(self.timers) == dict(other.timers)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ProjectionView(runs={len(self.runs)}, tasks={len(self.tasks)}, "
            f"outbox={len(self.outbox)}, timers={len(self.timers)})"
        )

    # ------------------------------------------------------------ lookups --

    def task(self, run_id: str, task_key: str) -> TaskRecord | None:
        """The task (run_id, task_key), if the projection has it."""
        return self.tasks.get((run_id, task_key))

    def timers_of(
        self, timer_type: str, run_id: str, task_key: str | None, attempt: int | None
    ) -> tuple[TimerRecord, ...]:
        """Every timer of one type for one attempt of a task (or, with None for both,
        for the run itself: SLA checks), by timer_id."""
        if self._timers_by_attempt is None:
            by_attempt: dict[tuple[str, str | None, str | None, int | None], list[TimerRecord]] = {}
            for timer in self.timers.values():
                key = (timer.timer_type, timer.run_id, timer.task_key, timer.attempt)
                by_attempt.setdefault(key, []).append(timer)
            self._timers_by_attempt = {k: tuple(v) for k, v in by_attempt.items()}
        return self._timers_by_attempt.get((timer_type, run_id, task_key, attempt), ())

    # ------------------------------------------------------- construction --

    TABLES = ("runs", "tasks", "dispatch_outbox", "timers")
    """The Layer 1 tables a view holds records of."""

    @staticmethod
    def record(table: str, r: Mapping[str, Any]) -> RunRecord | TaskRecord | OutboxRecord | TimerRecord:
        """The record of one published row of `table` (one of `TABLES`)."""
        if table == "tasks":
            return TaskRecord(
                run_id=r["run_id"],
                task_key=r["task_key"],
                state=r["state"],
                attempt=int(r["attempt"]),
                attempt_id=r["attempt_id"],
                deps_total=int(r["deps_total"]),
                deps_satisfied_count=int(r["deps_satisfied_count"]),
                max_attempts=int(r["max_attempts"]),
                heartbeat_timeout_sec=int(r["heartbeat_timeout_sec"]),
                last_heartbeat_at=_ts(r["last_heartbeat_at"], "last_heartbeat_at"),
                ready_at=_ts(r["ready_at"], "ready_at"),
                started_at=_ts(r["started_at"], "started_at"),
                finished_at=_ts(r["finished_at"], "finished_at"),
                worker_queue=r["worker_queue"],
                row_version=r["row_version"],
                asset_key=r.get("asset_key"),
                partition_key=r.get("partition_key"),
            )
        if table == "runs":
            created = _ts(r.get("created_at"), "created_at")
            labels = r.get("labels")
            return RunRecord(
                r["run_id"], r["plan_id"], r["state"], r["row_version"], created,
                *run_sla(labels), run_pipeline(labels), run_retry(labels),
            )
        if table == "dispatch_outbox":
            return OutboxRecord(
                dispatch_id=r["dispatch_id"],
                cloud_task_id=r["cloud_task_id"],
                run_id=r["run_id"],
                task_key=r["task_key"],
                attempt=int(r["attempt"]),
                attempt_id=r["attempt_id"],
                worker_queue=r["worker_queue"],
                status=r["status"],
                row_version=r["row_version"],
            )
        if table == "timers":
            return TimerRecord(
                timer_id=r["timer_id"],
                cloud_task_id=r["cloud_task_id"],
                timer_type=r["timer_type"],
                run_id=r["run_id"],
                task_key=r["task_key"],
                attempt=None if r["attempt"] is None else int(r["attempt"]),
                fire_at=_req_ts(r["fire_at"], "fire_at"),
                state=r["state"],
                row_version=r["row_version"],
            )
        raise ValueError(f"a ProjectionView holds no {table!r} records")

    @classmethod
    def from_records(cls, records: Mapping[str, Iterable[Any]]) -> ProjectionView:
        """A view of records made by `record` (by table name), e.g. kept up to date per row."""
        return cls(
            records.get("runs", ()), records.get("tasks", ()), records.get("dispatch_outbox", ()), records.get("timers", ())
        )

    @classmethod
    def of_sorted(
        cls,
        runs: Mapping[str, RunRecord],
        tasks: Mapping[tuple[str, str], TaskRecord],
        outbox: Mapping[str, OutboxRecord],
        timers: Mapping[str, TimerRecord],
        *,
        timers_by_attempt: Mapping[tuple[str, str | None, str | None, int | None], tuple[TimerRecord, ...]] | None = None,
    ) -> ProjectionView:
        """A view over mappings already keyed and sorted as `__init__` would make them
        (tasks by (run_id, task_key), the rest by id), which the caller never mutates;
        `timers_by_attempt`, if given, is what `timers_of` looks up (each group sorted
        by timer_id), else it is built from `timers` on first use."""
        view = cls.__new__(cls)
        view.runs = MappingProxyType(runs)
        view.tasks = MappingProxyType(tasks)
        view.outbox = MappingProxyType(outbox)
        view.timers = MappingProxyType(timers)
        view._timers_by_attempt = timers_by_attempt
        return view

    @classmethod
    def from_tables(cls, tables: Mapping[str, Iterable[Mapping[str, Any]]]) -> ProjectionView:
        """A view of published Layer 1 tables (JSON rows or Parquet rows)."""
        return cls.from_records({t: [cls.record(t, r) for r in tables.get(t, ())] for t in cls.TABLES})

    @classmethod
    def from_projection(cls, projection: Projection, run_ids: Iterable[str] | None = None) -> ProjectionView:
        """A view of an in-memory projection's rows (same content as `from_tables`)."""
        parts = (
            projection.partitions.values()
            if run_ids is None
            else [projection.partitions[k] for k in run_ids if k in projection.partitions]
        )
        runs: list[RunRecord] = []
        tasks: list[TaskRecord] = []
        outbox: list[OutboxRecord] = []
        timers: list[TimerRecord] = []
        for part in parts:
            if part.run is not None:
                run = part.run
                runs.append(
                    RunRecord(
                        run.run_id, run.plan_id, run.state, run.row_version, run.created_at,
                        *run_sla(run.labels), run_pipeline(run.labels), run_retry(run.labels),
                    )
                )
            for t in part.tasks.values():
                tasks.append(
                    TaskRecord(
                        t.run_id, t.task_key, t.state, t.attempt, t.attempt_id, t.deps_total,
                        t.deps_satisfied_count, t.max_attempts, t.heartbeat_timeout_sec,
                        t.last_heartbeat_at, t.ready_at, t.started_at, t.finished_at,
                        t.worker_queue, t.row_version, t.asset_key, t.partition_key,
                    )
                )
            for o in part.outbox.values():
                outbox.append(
                    OutboxRecord(
                        o.dispatch_id, _dispatch_cloud_id(o.dispatch_id), o.run_id, o.task_key, o.attempt,
                        o.attempt_id, o.worker_queue, o.state, o.row_version,
                    )
                )
            for m in part.timers.values():
                timers.append(
                    TimerRecord(
                        m.timer_id, _timer_cloud_id(m.timer_id), m.timer_type, m.run_id, m.task_key,
                        m.attempt, m.fire_at, m.state, m.row_version,
                    )
                )
        return cls(runs, tasks, outbox, timers)
