"""Plans and payloads for the Layer 1 fold state machine (`fold_machine.py`).

The machine's rules come from the spec tables; what the tables cannot say is how to
fill one event's payload for a chosen target. That is one small function per event
type, kept in `PAYLOADS`, plus `CREATORS` for events that create an instance of their
primary machine (there is no instance to pick yet). `check_coverage` makes a catalog
event without a builder fail at class-build time, not silently go untested.

Builders read the world only through `World`; `variant` is a small drawn integer a
builder may use to pick an outcome, a reason, or (rarely) a wrong field. A builder
returns None to emit nothing this time: cancel does so 7 times in 8, or most runs would
be cancelled before anything else happens (likewise timeouts, 3 times in 4).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from hypothesis import strategies as st

from servo.core.builders import TaskDef
from servo.core.events import format_timestamp
from servo.core.ids import (
    cron_timer_id,
    dispatch_cloud_task_id,
    dispatch_id,
    heartbeat_timer_id,
    retry_timer_id,
    sla_timer_id,
    timer_cloud_task_id,
)
from servo.spec import Spec

__all__ = [
    "CREATORS",
    "LIVE",
    "PAYLOADS",
    "PLAN_ID",
    "RUN_IDS",
    "Row",
    "World",
    "check_coverage",
    "plans",
]

Row = dict[str, Any]
PLAN_ID = "plan_1"
RUN_IDS = ("run_a", "run_b", "run_c")
LIVE = frozenset({"DISPATCHED", "RUNNING"})
SHAPES = ("chain", "diamond", "fan_out", "fan_in", "random")
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


class World(Protocol):
    """What payload builders may read from the state machine."""

    plans: dict[str, list[TaskDef]]

    def instances(self, machine: str) -> list[Row]:
        """Rows of `machine` in the lagging projection, each with its `state`."""
        ...

    def fresh_id(self) -> str:
        """A new unique ULID (an attempt id) that does not move the event clock."""
        ...

    def clock(self) -> datetime:
        """The event clock's current instant."""
        ...


Builder = Callable[[World, Row, int], dict[str, Any] | None]
Creator = Callable[[World], list[Row]]


# --------------------------------------------------------------------- plans --


@st.composite
def plans(draw: st.DrawFn, max_tasks: int) -> list[TaskDef]:
    """A DAG plan: chain, diamond, fan-out, fan-in or random; 1-3 attempts per task."""
    n = draw(st.one_of(st.integers(1, 4), st.integers(1, max_tasks)))  # small plans finish
    shape = draw(st.sampled_from(SHAPES))
    prefix = draw(st.sampled_from(["t", "etl:t"]))  # ':' inside task keys stresses id parsing
    keys = [f"{prefix}{i:02d}" for i in range(n)]
    deps: list[list[str]]
    if shape == "chain":
        deps = [[keys[i - 1]] if i else [] for i in range(n)]
    elif shape == "fan_out":
        deps = [[keys[0]] if i else [] for i in range(n)]
    elif shape == "fan_in":
        deps = [[] for _ in range(n - 1)] + [keys[:-1]]
    elif shape == "diamond":
        middle = keys[1:-1] if n >= 3 else []
        deps = [[] if i == 0 else [keys[0]] for i in range(n)]
        if middle:
            deps[-1] = list(middle)
    else:
        deps = [
            draw(st.lists(st.sampled_from(keys[:i]), max_size=3, unique=True)) if i else []
            for i in range(n)
        ]
    attempts = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    return [
        TaskDef(k, depends_on=d, max_attempts=a, heartbeat_timeout_sec=30)
        for k, d, a in zip(keys, deps, attempts, strict=True)
    ]


# ------------------------------------------------------------------ builders --


def _epoch(world: World, variant: int) -> int:
    return int((world.clock() - _UNIX).total_seconds()) + 60 + variant


def _run_triggered(world: World, row: Row, variant: int) -> dict[str, Any]:
    kind = ("MANUAL", "SCHEDULE")[variant % 2]
    return {
        "run_id": row["run_id"],
        "plan_id": row["plan_id"],
        "trigger": {"kind": kind},
        "root_assets": [],
        "labels": {"team": "data"} if variant % 3 == 0 else {},
    }


def _plan_created(world: World, row: Row, variant: int) -> dict[str, Any]:
    tasks = world.plans.get(row["run_id"], [])
    return {
        "run_id": row["run_id"],
        # variant 7: a plan for another plan_id than the run's (refused)
        "plan_id": row["plan_id"] if variant != 7 else "plan_other",
        "tasks": [t.payload() for t in tasks],
    }


def _cancel(world: World, row: Row, variant: int) -> dict[str, Any] | None:
    if variant != 1:
        return None
    return {"run_id": row["run_id"], "requested_by": "tester", "reason": "test"}


def _dispatch(world: World, row: Row, variant: int) -> dict[str, Any]:
    # variant 7: a controller bug asking for an attempt out of sequence (refused).
    attempt = row["attempt"] + (2 if variant == 7 else 1)
    return {
        "run_id": row["run_id"],
        "task_key": row["task_key"],
        "attempt": attempt,
        "attempt_id": world.fresh_id(),
        "dispatch_id": dispatch_id(row["run_id"], row["task_key"], attempt),
        "worker_queue": row.get("worker_queue") or "default",
    }


def _dispatch_enqueued(world: World, row: Row, variant: int) -> dict[str, Any]:
    cloud = dispatch_cloud_task_id(row["dispatch_id"]) if variant != 7 else "d_wrong"
    return {"dispatch_id": row["dispatch_id"], "cloud_task_id": cloud}


def _timer_requested(world: World, row: Row, variant: int) -> dict[str, Any]:
    kind, run, task, attempt = (
        row["timer_type"],
        row.get("run_id"),
        row.get("task_key"),
        row.get("attempt"),
    )
    epoch = _epoch(world, variant)
    if kind == "RETRY":
        timer_id = retry_timer_id(row["run_id"], row["task_key"], row["attempt"], epoch)
    elif kind == "HEARTBEAT_CHECK":
        timer_id = heartbeat_timer_id(row["run_id"], row["task_key"], row["attempt"], epoch)
    elif kind == "SLA_CHECK":
        timer_id = sla_timer_id(row["run_id"], epoch)
    else:
        timer_id = cron_timer_id("sched_1", epoch)
    return {
        "timer_id": timer_id,
        "timer_type": kind,
        "run_id": run,
        "task_key": task,
        "attempt": attempt,
        "fire_at": format_timestamp(datetime.fromtimestamp(epoch, UTC)),
    }


def _timer_enqueued(world: World, row: Row, variant: int) -> dict[str, Any]:
    cloud = timer_cloud_task_id(row["timer_id"]) if variant != 7 else "t_wrong"
    return {"timer_id": row["timer_id"], "cloud_task_id": cloud}


def _timer_fired(world: World, row: Row, variant: int) -> dict[str, Any]:
    data = {
        name: row.get(name) for name in ("timer_id", "timer_type", "run_id", "task_key", "attempt")
    }
    if variant % 4 == 3:  # the optional echoes may be left out
        data.update(run_id=None, task_key=None, attempt=None)
    elif variant == 6 and data["attempt"] is not None:  # disagrees with the timer: refused
        data["attempt"] += 1
    return data


def _fact(row: Row, variant: int) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "task_key": row["task_key"],
        "attempt": row["attempt"],
        "attempt_id": row["attempt_id"],
        "worker_id": f"w-{variant % 2}",
    }


def _started(world: World, row: Row, variant: int) -> dict[str, Any]:
    return _fact(row, variant)


def _heartbeat(world: World, row: Row, variant: int) -> dict[str, Any]:
    data = _fact(row, variant)
    data["heartbeat_at"] = format_timestamp(world.clock())
    data["progress_pct"] = (variant * 13) % 101
    return data


# Mostly successes (runs should get somewhere); shrinks towards SUCCEEDED.
OUTCOMES = ("SUCCEEDED",) * 6 + ("FAILED", "CANCELLED")


def _finished(world: World, row: Row, variant: int) -> dict[str, Any]:
    data = _fact(row, variant)
    data["outcome"] = OUTCOMES[variant % len(OUTCOMES)]
    if data["outcome"] == "FAILED":
        data["error_message"] = "boom"
    return data


def _timed_out(world: World, row: Row, variant: int) -> dict[str, Any] | None:
    if variant % 4:
        return None
    data = _fact(row, variant)
    del data["worker_id"]
    data["reason"] = ("HEARTBEAT_TIMEOUT", "DISPATCH_TIMEOUT")[variant // 4 % 2]
    return data


PAYLOADS: dict[str, Builder] = {
    "RunTriggered": _run_triggered,
    "PlanCreated": _plan_created,
    "RunCancelRequested": _cancel,
    "DispatchRequested": _dispatch,
    "DispatchEnqueued": _dispatch_enqueued,
    "TimerRequested": _timer_requested,
    "TimerEnqueued": _timer_enqueued,
    "TimerFired": _timer_fired,
    "AttemptTimedOut": _timed_out,
    "TaskStarted": _started,
    "TaskHeartbeat": _heartbeat,
    "TaskFinished": _finished,
}
"""Event type -> payload for a chosen target row."""


# ------------------------------------------------------------------ creators --


def _runs_to_trigger(world: World) -> list[Row]:
    known = {r["run_id"] for r in world.instances("run")}
    return [{"run_id": run, "plan_id": PLAN_ID} for run in world.plans if run not in known]


def _timers_to_request(world: World) -> list[Row]:
    timers = world.instances("timer")
    out: list[Row] = []
    if not any(t["timer_type"] == "CRON" for t in timers):
        out.append({"timer_type": "CRON"})  # a run-less timer: its own partition
    with_sla = {t["run_id"] for t in timers if t["timer_type"] == "SLA_CHECK"}
    for task in world.instances("task"):
        where = {"run_id": task["run_id"], "task_key": task["task_key"], "attempt": task["attempt"]}
        if task["state"] == "RETRY_WAIT":
            out.append({"timer_type": "RETRY", **where})
        elif task["state"] in LIVE:
            out.append({"timer_type": "HEARTBEAT_CHECK", **where})
    for run in world.instances("run"):
        if run["state"] == "RUNNING" and run["run_id"] not in with_sla:
            out.append({"timer_type": "SLA_CHECK", "run_id": run["run_id"]})
    return out


CREATORS: dict[str, Creator] = {
    "RunTriggered": _runs_to_trigger,
    "TimerRequested": _timers_to_request,
}
"""Event type -> the instances it could create now (for `created_by` events)."""


def check_coverage(spec: Spec, event_types: list[str]) -> None:
    """Fail loudly if a Layer 1 catalog event has no payload (or creator) builder."""
    missing = sorted(set(event_types) - set(PAYLOADS))
    assert not missing, f"no payload builder in tests/property/fold_strategies.py for {missing}"
    for name in event_types:
        machine = spec.machines[spec.events[name].machine]
        assert name not in machine.created_by or name in CREATORS, (
            f"{name} creates a {machine.name}: add a CREATORS entry in fold_strategies.py"
        )
    stale = sorted(set(PAYLOADS) - set(event_types))
    assert not stale, f"payload builders for events not in the Layer 1 catalog: {stale}"
