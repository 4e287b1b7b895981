"""Layer 1 guards, effects and locators: the pure functions the spec rows name.

Each is a few lines over `Ctx` (partition + event + instance). Effects only write the
projection being built; derived events (TaskBecameReady, TaskSkipped, RunCompleted)
are queued with `ctx.raise_derived` and never reach the ledger.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from servo.core._registry import REGISTRY
from servo.core.events import parse_timestamp
from servo.core.fold._engine import Ctx
from servo.core.fold._rows import EdgeRow, OutboxRow, RunRow, TaskRow, TimerRow
from servo.core.ids import parse_timer_id

__all__: list[str] = []

TERMINAL = frozenset({"SKIPPED", "CANCELLED", "FAILED", "SUCCEEDED"})
LIVE = frozenset({"DISPATCHED", "RUNNING"})
_TERMINAL, _NONE = tuple(TERMINAL), (0,) * len(TERMINAL)  # counts.get(state, 0) for each, in C
RESOLUTION = {"SUCCEEDED": "SUCCESS", "FAILED": "FAILED", "SKIPPED": "SKIPPED", "CANCELLED": "CANCELLED"}

guard = REGISTRY.guard
effect = REGISTRY.effect
locator = REGISTRY.locator


# ----------------------------------------------------------------- locators --


def _run_or_reason(ctx: Ctx) -> RunRow | str:
    run = ctx.part.run
    if run is None or run.run_id != ctx.data.get("run_id", run.run_id):
        return "UNKNOWN_RUN"
    return run


@locator("run_of_event")
class RunOfEvent:
    """The run named by data.run_id (RunTriggered creates it)."""

    def find(self, ctx: Ctx) -> list[Any] | str:
        run = ctx.part.run
        if run is None:
            return "" if ctx.event_type == "RunTriggered" else "UNKNOWN_RUN"
        return [run]

    def create(self, ctx: Ctx) -> list[Any]:
        d = ctx.data
        trigger = d.get("trigger") or {}
        run = RunRow(
            run_id=d["run_id"],
            plan_id=d["plan_id"],
            state="",
            run_key=d.get("run_key"),
            trigger_kind=str(trigger.get("kind", "")),
            created_at=ctx.occurred_at,
            code_version=d.get("code_version"),
            labels=dict(sorted((d.get("labels") or {}).items())),  # copies may order keys apart
            row_version=ctx.event_id,
        )
        ctx.part.run = run
        return [run]


@locator("task_of_event")
class TaskOfEvent:
    """The task (run_id, task_key); PlanCreated creates all; cancel moves all open ones."""

    def find(self, ctx: Ctx) -> list[Any] | str:
        part = ctx.part
        run = part.run  # _run_or_reason, inlined: this is the hot path
        if run is None or run.run_id != ctx.data.get("run_id", run.run_id):
            return "UNKNOWN_RUN"
        if ctx.event_type == "PlanCreated":
            return []
        if ctx.event_type == "RunCancelRequested":
            # Downstream first, so no upstream's cancellation skips a task we cancel.
            return [part.tasks[k] for k in reversed(part.topo_order) if part.tasks[k].state not in TERMINAL]
        task_key = ctx.data.get("task_key")
        if task_key is None and ctx.event_type == "TimerFired":
            timer = part.timers.get(ctx.data["timer_id"])
            task_key = timer.task_key if timer is not None else None
        task = part.tasks.get(task_key or "")
        if task is None:
            return "UNKNOWN_TASK"
        return [task]

    def create(self, ctx: Ctx) -> list[Any]:
        tasks, run_id, event_id = ctx.part.tasks, ctx.data["run_id"], ctx.event_id
        for spec in ctx.data["tasks"]:
            ups = spec["depends_on"]
            key = spec["task_key"]
            get = spec.get
            # Positional: run_id, task_key, state, depends_on, max_attempts,
            # heartbeat_timeout_sec, asset_key, partition_key, worker_queue, row_version.
            tasks[key] = TaskRow(
                run_id, key, "", tuple(sorted(set(ups))) if ups else (), spec["max_attempts"],
                spec["heartbeat_timeout_sec"], get("asset_key"), get("partition_key"), get("worker_queue"), event_id,
            )
        return [tasks[k] for k in ctx.part.topo_order]


@locator("outbox_of_event")
class OutboxOfEvent:
    """The outbox row of an attempt: by dispatch_id, or by (run_id, task_key, attempt)."""

    def find(self, ctx: Ctx) -> list[Any] | str:
        d, part = ctx.data, ctx.part
        if ctx.event_type != "DispatchEnqueued":
            run = part.run  # _run_or_reason, inlined: this is the hot path
            if run is None or run.run_id != d.get("run_id", run.run_id):
                return "UNKNOWN_RUN"
        # The dispatch id of the attempt (ids.dispatch_id, inlined: this is the hot path).
        key = d.get("dispatch_id") or f"dispatch:{d['run_id']}:{d['task_key']}:{d['attempt']}"
        row = part.outbox.get(key)
        if row is not None:
            return [row]
        if part.run is None:
            return "UNKNOWN_RUN"
        return ""

    def create(self, ctx: Ctx) -> list[Any]:
        d = ctx.data
        row = OutboxRow(
            dispatch_id=d["dispatch_id"],
            run_id=d["run_id"],
            task_key=d["task_key"],
            attempt=d["attempt"],
            attempt_id=d["attempt_id"],
            worker_queue=d["worker_queue"],
            state="",
            row_version=ctx.event_id,
        )
        ctx.part.outbox[row.dispatch_id] = row
        return [row]


def _timer_fields(data: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    """run_id, task_key, attempt of a timer event: the payload's, else the timer id's."""
    parsed = parse_timer_id(data["timer_id"])
    _, run_id, task_key, attempt = parsed if parsed is not None else (None, None, None, None)
    return (
        data.get("run_id", run_id),
        data.get("task_key", task_key),
        data.get("attempt", attempt),
    )


@locator("timer_of_event")
class TimerOfEvent:
    """The timer by timer_id; run cancel moves every scheduled timer of the run."""

    def find(self, ctx: Ctx) -> list[Any] | str:
        part = ctx.part
        if ctx.event_type == "RunCancelRequested":
            return [t for _, t in sorted(part.timers.items()) if t.state == "SCHEDULED"]
        if ctx.event_type == "TimerRequested":
            run_id, task_key, _ = _timer_fields(ctx.data)
            if run_id is not None:
                run = part.run
                if run is None or run.run_id != run_id:
                    return "UNKNOWN_RUN"
                if task_key is not None and task_key not in part.tasks:
                    return "UNKNOWN_TASK"
            return [part.timers[ctx.data["timer_id"]]] if ctx.data["timer_id"] in part.timers else ""
        row = part.timers.get(ctx.data["timer_id"])
        return [row] if row is not None else ""

    def create(self, ctx: Ctx) -> list[Any]:
        d = ctx.data
        run_id, task_key, attempt = _timer_fields(d)
        row = TimerRow(
            timer_id=d["timer_id"],
            timer_type=d["timer_type"],
            run_id=run_id,
            task_key=task_key,
            attempt=attempt,
            fire_at=parse_timestamp(d["fire_at"], "fire_at"),
            state="",
            row_version=ctx.event_id,
        )
        ctx.part.timers[row.timer_id] = row
        return [row]


# ------------------------------------------------------------------- guards --


@guard()
def has_no_upstream(ctx: Ctx) -> bool:
    """The task has no dependency edge."""
    task: TaskRow = ctx.row
    return not task.depends_on


@guard()
def all_upstream_succeeded(ctx: Ctx) -> bool:
    """Every upstream edge is satisfied with SUCCESS (INV-6)."""
    task: TaskRow = ctx.row
    return task.deps_satisfied_count == task.deps_total


@guard()
def an_upstream_did_not_succeed(ctx: Ctx) -> bool:
    """Some upstream edge resolved FAILED, SKIPPED or CANCELLED (INV-10)."""
    task: TaskRow = ctx.row
    edges = ctx.part.edges
    return any(
        edges[(up, task.task_key)].resolution not in (None, "SUCCESS") for up in task.depends_on
    )


@guard()
def attempt_is_next(ctx: Ctx) -> bool:
    """A DispatchRequested asks for exactly the next attempt, within max_attempts."""
    task: TaskRow = ctx.row
    attempt: int = ctx.data["attempt"]
    return attempt == task.attempt + 1 and attempt <= task.max_attempts


@guard(rejects="STALE_ATTEMPT")
def attempt_is_current(ctx: Ctx) -> bool:
    """The fact names the task's current, live attempt (INV-8)."""
    task: TaskRow = ctx.row
    return (
        task.state in LIVE
        and ctx.data["attempt_id"] == task.attempt_id
        and ctx.data["attempt"] == task.attempt
    )


@guard()
def outcome_succeeded(ctx: Ctx) -> bool:
    """TaskFinished with outcome SUCCEEDED."""
    return bool(ctx.data["outcome"] == "SUCCEEDED")


@guard()
def outcome_failed(ctx: Ctx) -> bool:
    """TaskFinished with outcome FAILED."""
    return bool(ctx.data["outcome"] == "FAILED")


@guard()
def outcome_cancelled(ctx: Ctx) -> bool:
    """TaskFinished with outcome CANCELLED."""
    return bool(ctx.data["outcome"] == "CANCELLED")


@guard()
def attempts_remain(ctx: Ctx) -> bool:
    """Another attempt is allowed (attempt < max_attempts)."""
    task: TaskRow = ctx.row
    return task.attempt < task.max_attempts


@guard()
def is_retry_timer_of_current_attempt(ctx: Ctx) -> bool:
    """A RETRY timer for this task and the attempt that failed."""
    task: TaskRow = ctx.row
    timer = ctx.part.timers.get(ctx.data["timer_id"])
    return (
        timer is not None
        and timer.timer_type == "RETRY"
        and timer.task_key == task.task_key
        and timer.attempt == task.attempt
    )


@guard()
def plan_matches_run(ctx: Ctx) -> bool:
    """PlanCreated names the plan the run was triggered with."""
    run: RunRow = ctx.row
    return bool(ctx.data["plan_id"] == run.plan_id)


@guard()
def all_tasks_terminal(ctx: Ctx) -> bool:
    """Every task of the run is terminal."""
    return sum(map(ctx.part.task_counts.get, _TERMINAL, _NONE)) == len(ctx.part.tasks)


@guard()
def all_tasks_succeeded(ctx: Ctx) -> bool:
    """Every task of the run SUCCEEDED."""
    return ctx.part.task_counts.get("SUCCEEDED", 0) == len(ctx.part.tasks)


@guard()
def any_task_failed(ctx: Ctx) -> bool:
    """Every task is terminal and at least one FAILED."""
    return all_tasks_terminal(ctx) and ctx.part.task_counts.get("FAILED", 0) > 0


@guard()
def cloud_task_id_matches(ctx: Ctx) -> bool:
    """The acknowledged queue task is the one derived from the internal id."""
    return bool(ctx.data["cloud_task_id"] == ctx.row.cloud_task_id)


@guard()
def timer_fields_match(ctx: Ctx) -> bool:
    """TimerFired agrees with the requested timer on every field it repeats."""
    timer: TimerRow = ctx.row
    d = ctx.data
    return d["timer_type"] == timer.timer_type and all(
        d.get(name) is None or d.get(name) == getattr(timer, name)
        for name in ("run_id", "task_key", "attempt")
    )


@guard()
def outbox_attempt_matches(ctx: Ctx) -> bool:
    """The worker fact is about this outbox row's attempt."""
    row: OutboxRow = ctx.row
    return bool(ctx.data["attempt_id"] == row.attempt_id)


@guard()
def is_dispatch_timeout(ctx: Ctx) -> bool:
    """The attempt timed out before any worker reported (stuck dispatch)."""
    return bool(ctx.data["reason"] == "DISPATCH_TIMEOUT")


# ------------------------------------------------------------------ effects --


@effect()
def record_plan(ctx: Ctx) -> None:
    """Record the plan's edges and a deterministic topological order."""
    part = ctx.part
    run: RunRow = ctx.row
    tasks = ctx.data["tasks"]
    run.tasks_total = len(tasks)
    deps = {t["task_key"]: sorted(set(ups)) if (ups := t["depends_on"]) else [] for t in tasks}
    downstream: dict[str, list[str]] = {k: [] for k in deps}
    edges, run_id, event_id = part.edges, run.run_id, ctx.event_id
    for down, ups in deps.items():
        for up in ups:
            downstream[up].append(down)
            edges[(up, down)] = EdgeRow(run_id, up, down, event_id)
    part.downstream = {k: sorted(v) if len(v) > 1 else v for k, v in downstream.items()}
    part.topo_order = topological_order(deps)


def topological_order(deps: dict[str, list[str]]) -> list[str]:
    """Kahn's order, smallest key first among ready ones (deterministic)."""
    remaining = {k: len(v) for k, v in deps.items()}
    children: dict[str, list[str]] = {k: [] for k in deps}
    for down, ups in deps.items():
        for up in ups:
            children[up].append(down)
    ready = [k for k, n in remaining.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        key = heapq.heappop(ready)
        order.append(key)
        for child in children[key]:
            remaining[child] -= 1
            if remaining[child] == 0:
                heapq.heappush(ready, child)
    return order


@effect()
def mark_ready(ctx: Ctx) -> None:
    """ready_at = when the task became READY."""
    ctx.row.ready_at = ctx.occurred_at


@effect()
def begin_attempt(ctx: Ctx) -> None:
    """The requested attempt becomes the task's current one (its error starts empty)."""
    task: TaskRow = ctx.row
    task.attempt = ctx.data["attempt"]
    task.attempt_id = ctx.data["attempt_id"]
    task.worker_queue = ctx.data["worker_queue"]
    task.started_at = None
    task.last_heartbeat_at = None
    task.error_message = None


@effect()
def mark_started(ctx: Ctx) -> None:
    """started_at = first report of the current attempt."""
    task: TaskRow = ctx.row
    if task.started_at is None:
        task.started_at = ctx.occurred_at


@effect()
def record_heartbeat(ctx: Ctx) -> None:
    """last_heartbeat_at only moves forward."""
    task: TaskRow = ctx.row
    beat = parse_timestamp(ctx.data["heartbeat_at"], "heartbeat_at")
    if task.last_heartbeat_at is None or beat > task.last_heartbeat_at:
        task.last_heartbeat_at = beat


@effect()
def record_failure(ctx: Ctx) -> None:
    """Keep the worker's error message."""
    ctx.row.error_message = ctx.data.get("error_message")


@effect()
def record_timeout(ctx: Ctx) -> None:
    """The timeout reason becomes the error message."""
    ctx.row.error_message = ctx.data["reason"]


@effect()
def mark_finished(ctx: Ctx) -> None:
    """finished_at = when the task became terminal."""
    ctx.row.finished_at = ctx.occurred_at


@effect()
def resolve_downstream(ctx: Ctx) -> None:
    """Resolve each outgoing edge once; a newly satisfied edge increments its downstream.

    The increment is conditional on the edge changing from unresolved, so a duplicate
    or replayed finish never counts twice (INV-6). A non-success resolution skips the
    downstream (INV-10) through the derived TaskSkipped.
    """
    task: TaskRow = ctx.row
    part = ctx.part
    resolution = RESOLUTION[task.state]
    for down_key in part.downstream.get(task.task_key, ()):
        edge = part.edges[(task.task_key, down_key)]
        if edge.resolution is not None:
            continue
        edge.resolution = resolution
        edge.row_version = ctx.event_id
        down = part.tasks[down_key]
        data = {"run_id": task.run_id, "task_key": down_key}
        if resolution == "SUCCESS":
            edge.satisfied = True
            edge.satisfying_attempt = task.attempt
            down.deps_satisfied_count += 1
            down.row_version = ctx.event_id
            ctx.raise_derived("task", down, "TaskBecameReady", data)
        else:
            ctx.raise_derived("task", down, "TaskSkipped", data)


@effect()
def complete_run_if_done(ctx: Ctx) -> None:
    """Raise RunCompleted; the run's rows decide whether (and how) it completes."""
    run = ctx.part.run
    if run is not None and all_tasks_terminal(ctx):
        ctx.raise_derived("run", run, "RunCompleted", {"run_id": run.run_id})


@effect()
def mark_run_completed(ctx: Ctx) -> None:
    """completed_at = when the run reached a terminal state."""
    ctx.row.completed_at = ctx.occurred_at
