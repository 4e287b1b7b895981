"""`ready_intents` against the plain one-pass rule it was optimised from, on random views.

The driver's version skips the READY tasks of a run that is already full and looks
dispatch ids up in a cache; it must emit exactly what the plain rule emits.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from servo.core.controllers import ControllerConfig, Emitter, ProjectionView
from servo.core.controllers._dispatch import attempt_id_for, ready_intents
from servo.core.controllers._view import OutboxRecord, RunRecord, TaskRecord
from servo.core.events import Catalog, Event
from servo.core.ids import dispatch_id
from servo.spec import Spec

NOW = datetime(2026, 3, 1, tzinfo=UTC)
STATES = ["BLOCKED", "READY", "DISPATCHED", "RUNNING", "RETRY_WAIT", "SUCCEEDED", "FAILED"]


def plain_ready_intents(view: ProjectionView, emit: Emitter) -> list[Event]:
    """The rule as first written: one pass over every task, then the limit in task order."""
    limit = emit.config.max_in_flight
    candidates: list[tuple[TaskRecord, str]] = []
    in_flight: dict[str, int] = {}
    for task in view.tasks.values():
        if limit is not None and task.state in ("DISPATCHED", "RUNNING"):
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1
        if task.state != "READY":
            continue
        run = view.runs.get(task.run_id)
        if run is None or run.state != "RUNNING":
            continue
        attempt = task.attempt + 1
        if attempt > task.max_attempts:
            continue
        did = dispatch_id(task.run_id, task.task_key, attempt)
        if did in view.outbox:
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1
            continue
        candidates.append((task, did))
    if limit is not None:
        candidates.sort(key=lambda c: (c[0].run_id, c[0].task_key))
    out: list[Event] = []
    for task, did in candidates:
        if limit is not None:
            if in_flight.get(task.run_id, 0) >= limit:
                continue
            in_flight[task.run_id] = in_flight.get(task.run_id, 0) + 1
        data = {
            "run_id": task.run_id,
            "task_key": task.task_key,
            "attempt": task.attempt + 1,
            "attempt_id": attempt_id_for(did, emit.now),
            "dispatch_id": did,
            "worker_queue": task.worker_queue or emit.config.default_worker_queue,
        }
        out.append(emit.emit("DispatchRequested", data))
    return out


@st.composite
def views(draw: st.DrawFn) -> ProjectionView:
    runs = [RunRecord(f"run_{r}", "plan_1", draw(st.sampled_from(["RUNNING", "RUNNING", "CANCELLED"])), "v") for r in "ab"]
    tasks: list[TaskRecord] = []
    outbox: list[OutboxRecord] = []
    for run in runs:
        for _ in range(draw(st.integers(0, 12))):
            key = f"t{draw(st.integers(0, 40)):02d}"
            if any(t.run_id == run.run_id and t.task_key == key for t in tasks):
                continue
            attempt = draw(st.integers(0, 3))
            task = TaskRecord(
                run.run_id, key, draw(st.sampled_from(STATES)), attempt, None, 0, 0,
                draw(st.integers(1, 3)), 300, None, None, None, None, None, "v",
            )
            tasks.append(task)
            if draw(st.integers(0, 4)) == 0:  # an outbox row for the next attempt (rare in practice)
                did = dispatch_id(run.run_id, key, attempt + 1)
                outbox.append(OutboxRecord(did, "c", run.run_id, key, attempt + 1, "a", "default", "PENDING", "v"))
    return ProjectionView(runs, tasks, outbox, [])


@settings(max_examples=300, deadline=None)
@given(view=views(), limit=st.one_of(st.none(), st.integers(0, 5)))
def test_ready_intents_emits_what_the_plain_rule_emits(spec: Spec, view: ProjectionView, limit: int | None) -> None:
    config = ControllerConfig(Catalog(spec), max_in_flight=limit)
    ours = ready_intents(view, Emitter(config, "acme", "prod", NOW, "test"))
    plain = plain_ready_intents(view, Emitter(config, "acme", "prod", NOW, "test"))
    assert [e.to_json() for e in ours] == [e.to_json() for e in plain]
