"""The Layer 1 fold: named seed tests and the behaviours of SPEC §3-5."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest

from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.events import Catalog, Event, format_timestamp
from servo.core.fold import Projection, fold, fold_file, fold_lines
from servo.core.ids import retry_timer_id
from servo.spec import Spec

RUN = "run_1"


@pytest.fixture
def b(catalog: Catalog) -> EventBuilder:
    return EventBuilder(catalog)


def tables(events: list[Event], spec: Spec, rules: Registry) -> dict[str, list[dict[str, object]]]:
    return fold(events, spec, rules).tables()


def task(t: dict[str, list[dict[str, object]]], key: str) -> dict[str, object]:
    return next(r for r in t["tasks"] if r["task_key"] == key)


def reasons(t: dict[str, list[dict[str, object]]]) -> dict[object, object]:
    return {r["event_id"]: r["reason"] for r in t["rejected_events"]}


def chain_run(b: EventBuilder, *keys: str, attempts: int = 1) -> list[Event]:
    defs = [TaskDef(k, depends_on=[keys[i - 1]] if i else [], max_attempts=attempts) for i, k in enumerate(keys)]
    return [b.run_triggered(RUN), b.plan_created(RUN, defs)]


def succeed(b: EventBuilder, key: str, attempt: int = 1) -> list[Event]:
    aid = f"A-{key}-{attempt}"
    return [
        b.dispatch_requested(RUN, key, attempt, aid),
        b.started(RUN, key, attempt, aid),
        b.finished(RUN, key, attempt, aid),
    ]


def test_duplicate_event_is_noop(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """The same event (same event_id) delivered three times folds exactly once."""
    events = chain_run(b, "a", "b") + succeed(b, "a")
    once = tables(events, spec, rules)
    thrice = tables(events + events[2:] + events[-1:], spec, rules)
    assert thrice == once
    assert task(once, "a")["state"] == "SUCCEEDED"
    assert task(once, "b")["deps_satisfied_count"] == 1
    assert once["rejected_events"] == []


def test_out_of_order_events_same_result(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """Any arrival order and any split into incremental folds gives the same tables."""
    events = chain_run(b, "a", "b", "c") + succeed(b, "a") + succeed(b, "b") + succeed(b, "c")
    expected = tables(events, spec, rules)
    assert [r["state"] for r in expected["runs"]] == ["SUCCEEDED"]
    rng = random.Random(7)
    for _ in range(25):
        shuffled = events[:]
        rng.shuffle(shuffled)
        projection = Projection(spec, rules)
        cut = rng.randrange(len(shuffled))
        projection.apply(shuffled[:cut])
        projection.apply(shuffled[cut:])
        assert projection.tables() == expected


def test_duplicate_task_finished_does_not_double_decrement(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """A finish replayed under a new event_id is DUPLICATE; the edge counts once."""
    defs = [TaskDef("a"), TaskDef("x"), TaskDef("join", depends_on=["a", "x"])]
    events = [b.run_triggered(RUN), b.plan_created(RUN, defs), *succeed(b, "a")]
    replay = b.finished(RUN, "a", 1, "A-a-1")  # same idempotency key, new event_id
    t = tables([*events, replay], spec, rules)
    join = task(t, "join")
    assert join["deps_satisfied_count"] == 1
    assert join["state"] == "BLOCKED"
    assert reasons(t) == {replay.event_id: "DUPLICATE"}


def test_stale_attempt_event_is_rejected(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """A late success of a timed-out attempt changes nothing and is STALE_ATTEMPT."""
    events = chain_run(b, "a", "b", attempts=2)
    events += [
        b.dispatch_requested(RUN, "a", 1, "OLD"),
        b.started(RUN, "a", 1, "OLD"),
        b.timed_out(RUN, "a", 1, "OLD"),
    ]
    late = b.finished(RUN, "a", 1, "OLD")
    forged = b.started(RUN, "a", 1, "FORGED")
    t = tables([*events, late, forged], spec, rules)
    assert task(t, "a")["state"] == "RETRY_WAIT"
    assert task(t, "b")["state"] == "BLOCKED"
    assert task(t, "b")["deps_satisfied_count"] == 0
    assert reasons(t) == {late.event_id: "STALE_ATTEMPT", forged.event_id: "STALE_ATTEMPT"}


def test_failure_skips_every_transitive_downstream(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    defs = [TaskDef("a"), TaskDef("b", ["a"]), TaskDef("c", ["b"]), TaskDef("d", ["a"]), TaskDef("e")]
    events = [b.run_triggered(RUN), b.plan_created(RUN, defs)]
    events += [b.dispatch_requested(RUN, "a", 1, "A1"), b.finished(RUN, "a", 1, "A1", "FAILED", "boom")]
    events += succeed(b, "e")
    t = tables(events, spec, rules)
    states = {r["task_key"]: r["state"] for r in t["tasks"]}
    assert states == {"a": "FAILED", "b": "SKIPPED", "c": "SKIPPED", "d": "SKIPPED", "e": "SUCCEEDED"}
    assert task(t, "a")["error_message"] == "boom"
    run = t["runs"][0]
    assert (run["state"], run["tasks_failed"], run["tasks_skipped"]) == ("FAILED", 1, 3)
    edges = {(r["upstream_task_key"], r["downstream_task_key"]): r["resolution"] for r in t["dep_satisfaction"]}
    assert edges == {("a", "b"): "FAILED", ("b", "c"): "SKIPPED", ("a", "d"): "FAILED"}


def test_retry_moves_through_retry_wait_and_the_retry_timer(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    events = chain_run(b, "a", attempts=2)
    events += [b.dispatch_requested(RUN, "a", 1, "A1"), b.finished(RUN, "a", 1, "A1", "FAILED")]
    timer = retry_timer_id(RUN, "a", 1, 1767225605)
    fire_at = b.now + timedelta(seconds=5)
    events += [
        b.timer_requested(timer, "RETRY", fire_at, run_id=RUN, task_key="a", attempt=1),
        b.timer_fired(timer, "RETRY", run_id=RUN, task_key="a", attempt=1),
    ]
    mid = tables(events, spec, rules)
    assert task(mid, "a")["state"] == "READY"
    assert mid["timers"][0]["state"] == "FIRED"
    events += succeed(b, "a", attempt=2)
    t = tables(events, spec, rules)
    assert (task(t, "a")["state"], task(t, "a")["attempt"]) == ("SUCCEEDED", 2)
    assert t["runs"][0]["state"] == "SUCCEEDED"


def test_last_attempt_failure_is_final(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    events = chain_run(b, "a", attempts=1)
    events += [b.dispatch_requested(RUN, "a", 1, "A1"), b.timed_out(RUN, "a", 1, "A1", "DISPATCH_TIMEOUT")]
    t = tables(events, spec, rules)
    assert task(t, "a")["state"] == "FAILED"
    assert task(t, "a")["error_message"] == "DISPATCH_TIMEOUT"
    assert t["dispatch_outbox"][0]["status"] == "FAILED"
    assert t["runs"][0]["state"] == "FAILED"


def test_cancel_reaches_every_non_terminal_task_including_retry_wait(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    defs = [TaskDef("a", max_attempts=3), TaskDef("b", ["a"]), TaskDef("c"), TaskDef("d")]
    events = [b.run_triggered(RUN), b.plan_created(RUN, defs)]
    events += [b.dispatch_requested(RUN, "a", 1, "A1"), b.finished(RUN, "a", 1, "A1", "FAILED")]
    events += succeed(b, "c")
    events += [b.dispatch_requested(RUN, "d", 1, "D1"), b.started(RUN, "d", 1, "D1")]
    timer = retry_timer_id(RUN, "a", 1, 99)
    events += [b.timer_requested(timer, "RETRY", b.now, run_id=RUN, task_key="a", attempt=1)]
    events += [b.cancel(RUN)]
    late = b.finished(RUN, "d", 1, "D1")
    t = tables([*events, late], spec, rules)
    states = {r["task_key"]: r["state"] for r in t["tasks"]}
    assert states == {"a": "CANCELLED", "b": "CANCELLED", "c": "SUCCEEDED", "d": "CANCELLED"}
    assert t["runs"][0]["state"] == "CANCELLED"
    assert t["timers"][0]["state"] == "CANCELLED"
    assert reasons(t) == {late.event_id: "STALE_ATTEMPT"}


def test_heartbeats_only_move_forward_and_mark_running(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    events = [*chain_run(b, "a"), b.dispatch_requested(RUN, "a", 1, "A1")]
    t0 = b.now
    events += [
        b.heartbeat(RUN, "a", 1, "A1", at=t0 + timedelta(seconds=10)),
        b.heartbeat(RUN, "a", 1, "A1", at=t0 + timedelta(seconds=5)),
    ]
    t = tables(events, spec, rules)
    a = task(t, "a")
    assert a["state"] == "RUNNING"
    assert a["last_heartbeat_at"] == format_timestamp(t0 + timedelta(seconds=10))


def test_empty_plan_completes_the_run(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    t = tables([b.run_triggered(RUN), b.plan_created(RUN, [])], spec, rules)
    assert t["runs"][0]["state"] == "SUCCEEDED"


def test_events_for_unknown_runs_and_tasks_are_rejected(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    orphan = b.started("run_x", "a", 1, "A")
    events = chain_run(b, "a")
    ghost = b.dispatch_requested(RUN, "ghost", 1, "G")
    t = tables([orphan, *events, ghost], spec, rules)
    assert reasons(t) == {orphan.event_id: "UNKNOWN_RUN", ghost.event_id: "UNKNOWN_TASK"}


def test_invalid_lines_are_rejected_not_raised(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    good = chain_run(b, "a")
    lines = [e.to_json() for e in good] + [
        "not json",
        json.dumps({"event_id": "01JX", "event_type": "Nope", "tenant_id": "t", "workspace_id": "w", "occurred_at": "2026-01-01T00:00:00Z", "data": {}}),
        json.dumps({"event_id": "01JY", "event_type": "TaskStarted", "tenant_id": "t", "workspace_id": "w", "occurred_at": "2026-01-01T00:00:00Z", "data": {"run_id": RUN}}),
        json.dumps({"event_id": "01JZ", "event_type": "TaskBecameReady", "tenant_id": "t", "workspace_id": "w", "occurred_at": "2026-01-01T00:00:00Z", "data": {"run_id": RUN, "task_key": "a"}}),
        json.dumps({"event_id": "01JW", "event_type": "PlanCreated", "tenant_id": "t", "workspace_id": "w", "occurred_at": "2026-01-01T00:00:00Z", "data": {"run_id": "run_2", "plan_id": "p", "tasks": [
            {"task_key": "x", "depends_on": ["y"], "max_attempts": 1, "heartbeat_timeout_sec": 1},
            {"task_key": "y", "depends_on": ["x"], "max_attempts": 1, "heartbeat_timeout_sec": 1}]}}),
    ]
    projection = Projection(spec, rules)
    projection.apply_lines(lines)
    got = {r["event_id"]: (r["reason"], r["detail"]) for r in projection.tables()["rejected_events"]}
    assert got["01JX"][0] == "UNKNOWN_EVENT_TYPE"
    assert got["01JY"] == ("INVALID", "TaskStarted: data.task_key is required")
    assert got["01JZ"][0] == "INVALID"
    assert got["01JW"][0] == "INVALID" and "cycle" in str(got["01JW"][1])
    assert sum(1 for k in got if str(k).startswith("invalid:")) == 1
    assert task(projection.tables(), "a")["state"] == "READY"


def test_late_event_refolds_only_to_what_a_full_fold_gives(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """A RunTriggered that arrives after its run's other events still wins by event_id."""
    events = chain_run(b, "a") + succeed(b, "a")
    projection = Projection(spec, rules)
    projection.apply(events[1:])
    assert {r["reason"] for r in projection.tables()["rejected_events"]} == {"UNKNOWN_RUN"}
    projection.apply(events[:1])
    assert projection.tables() == tables(events, spec, rules)


def test_two_dispatch_requests_for_one_attempt_keep_the_lowest(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """Two controller replicas racing converge on one outbox row (INV-3)."""
    events = chain_run(b, "a")
    first = b.dispatch_requested(RUN, "a", 1, "REPLICA-1")
    second = b.dispatch_requested(RUN, "a", 1, "REPLICA-2")
    for order in ([first, second], [second, first]):
        t = tables(events + order, spec, rules)
        assert [(r["attempt_id"], r["status"]) for r in t["dispatch_outbox"]] == [("REPLICA-1", "PENDING")]
        assert task(t, "a")["attempt_id"] == "REPLICA-1"
        assert reasons(t) == {second.event_id: "DUPLICATE"}


def test_fold_lines_gives_the_same_tables_sorted_shuffled_or_streamed(b: EventBuilder, spec: Spec, rules: Registry, tmp_path: Path) -> None:
    """The streaming path (sorted input) and the two-pass path (any order) agree."""
    events = chain_run(b, "a", "b") + succeed(b, "a") + [b.started(RUN, "zz", 1, "x")]
    lines = [e.to_json() for e in events] + ["", "garbage"]
    expected = Projection(spec, rules)
    expected.apply_lines(lines)
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    for variant in (lines, shuffled, lines + lines[:3]):
        assert fold_lines(variant, spec, rules).tables() == expected.tables()
        assert fold_lines(iter(variant), spec, rules).tables() == expected.tables()
        path = tmp_path / "ledger.jsonl"
        path.write_text("\n".join(variant))
        assert fold_file(path, spec, rules).tables() == expected.tables()


def test_take_changes_returns_changed_rows_and_deletions(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """Changes since the last take rebuild the full tables (what L0 deltas rely on)."""
    events = chain_run(b, "a", "b", "c") + succeed(b, "a") + succeed(b, "b")
    other = [b.run_triggered("run_2"), b.plan_created("run_2", [TaskDef("x")])]
    projection = Projection(spec, rules)
    merged: dict[str, dict[tuple[object, ...], dict[str, object]]] = {}

    def absorb(changes: dict[str, tuple[list[dict[str, object]], list[tuple[object, ...]]]]) -> None:
        for table, (rows, deleted) in changes.items():
            pk = spec.tables[table].primary_key
            target = merged.setdefault(table, {})
            for key in deleted:
                target.pop(key, None)
            for row in rows:
                target[tuple(row[k] for k in pk)] = row

    projection.apply(events[:4] + other)
    absorb(projection.take_changes())
    assert projection.take_changes() == {}
    # A late lower-id PlanCreated with another plan wins: run_1's old tasks vanish.
    late_plan = b.event("PlanCreated", {"run_id": RUN, "plan_id": "plan_1", "tasks": [TaskDef("solo").payload()]}, at=events[0].occurred_at)
    projection.apply([*events[4:], late_plan])
    changes = projection.take_changes()
    assert all(r["run_id"] == RUN for r in changes["tasks"][0])
    assert ("run_1", "a") in changes["tasks"][1]
    absorb(changes)
    projection2 = Projection(spec, rules)
    projection2.apply([*events, *other, late_plan])
    for table, rows in projection2.tables().items():
        assert sorted(merged.get(table, {}).values(), key=lambda r: tuple(str(r[k]) for k in spec.tables[table].primary_key)) == rows, table


def test_retry_timer_fields_default_to_what_the_timer_id_names(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    """A TimerRequested may omit run/task/attempt: the timer id carries them."""
    events = chain_run(b, "a", attempts=2)
    events += [b.dispatch_requested(RUN, "a", 1, "A1"), b.finished(RUN, "a", 1, "A1", "FAILED")]
    timer = retry_timer_id(RUN, "a", 1, 1767225700)
    events += [b.timer_requested(timer, "RETRY", b.now), b.timer_fired(timer, "RETRY")]
    t = tables(events, spec, rules)
    assert task(t, "a")["state"] == "READY"
    assert (t["timers"][0]["run_id"], t["timers"][0]["task_key"], t["timers"][0]["attempt"]) == (RUN, "a", 1)


def test_timer_events_contradicting_their_id_are_invalid(b: EventBuilder, spec: Spec, rules: Registry) -> None:
    events = chain_run(b, "a", attempts=2)
    timer = retry_timer_id(RUN, "a", 1, 1767225700)
    wrong_type = b.timer_requested(timer, "HEARTBEAT_CHECK", b.now)
    wrong_attempt = b.timer_requested(retry_timer_id(RUN, "a", 2, 5), "RETRY", b.now, attempt=1)
    t = tables([*events, wrong_type, wrong_attempt], spec, rules)
    assert reasons(t) == {wrong_type.event_id: "INVALID", wrong_attempt.event_id: "INVALID"}
