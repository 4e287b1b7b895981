"""Layer 1 controllers: pure view -> events, watermark guards (INV-9), determinism (INV-3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.controllers import (
    ControllerConfig,
    CreateStatus,
    ProjectionView,
    TimerRecord,
    attempt_id_for,
    derived_jitter,
    dispatch_outcome_events,
    on_timer_fired,
    pending_dispatches,
    reconcile,
    repair,
    retry_delay,
)
from servo.core.events import Catalog, Event, format_timestamp
from servo.core.fold import Projection
from servo.core.ids import dispatch_cloud_task_id, dispatch_id, retry_backoff, ulid_timestamp
from servo.spec import Spec

RUN = "run_1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCOPE = {"tenant": "acme", "workspace": "prod"}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class World:
    """A ledger, its projection, and the controllers run against the folded part only."""

    def __init__(
        self, spec: Spec, rules: Registry, catalog: Catalog, tasks: list[TaskDef], labels: dict[str, str] | None = None
    ) -> None:
        self.spec, self.rules = spec, rules
        self.config = ControllerConfig(catalog)
        self.b = EventBuilder(catalog, now=T0 - timedelta(seconds=10))
        self.ledger: list[Event] = [self.b.run_triggered(RUN, labels=labels or {}), self.b.plan_created(RUN, tasks)]
        self.folded = 0
        self.projection = Projection(spec, rules)
        self.compact()

    def append(self, events: list[Event]) -> list[Event]:
        self.ledger.extend(events)
        return events

    def compact(self) -> None:
        self.projection.apply(self.ledger[self.folded :])
        self.folded = len(self.ledger)

    def view(self) -> ProjectionView:
        return ProjectionView.from_projection(self.projection)

    def reconcile(self, now: datetime, watermark: datetime | None = None) -> list[Event]:
        return reconcile(self.view(), now, watermark or now, config=self.config, **SCOPE)

    def fire(self, timer_id: str, now: datetime, watermark: datetime) -> list[Event]:
        return on_timer_fired(self.view(), self.view().timers[timer_id], now, watermark, config=self.config, **SCOPE)

    def task(self, key: str) -> dict[str, object]:
        return next(r for r in self.projection.tables()["tasks"] if r["task_key"] == key)

    def fact(self, kind: str, key: str, when: datetime, **extra: object) -> Event:
        task = self.view().tasks[(RUN, key)]
        assert task.attempt_id is not None
        data: dict[str, object] = {
            "run_id": RUN, "task_key": key, "attempt": task.attempt,
            "attempt_id": task.attempt_id, "worker_id": "w-1", **extra,
        }
        return self.b.event(kind, data, at=when)


@pytest.fixture
def world(spec: Spec, rules: Registry, catalog: Catalog) -> World:
    return World(spec, rules, catalog, [TaskDef("a", max_attempts=2, heartbeat_timeout_sec=10), TaskDef("b", ["a"])])


def types(events: list[Event]) -> list[str]:
    return [e.event_type for e in events]


def dispatch_and_start(world: World, now: datetime) -> None:
    world.append(world.reconcile(now))
    world.compact()
    # A worker fact follows its dispatch; within one millisecond ids sort by hash.
    world.append([world.fact("TaskStarted", "a", now + timedelta(milliseconds=1))])
    world.compact()


# ---------------------------------------------------------------- ready --


def test_ready_task_gets_one_dispatch_with_a_deterministic_attempt_id(world: World) -> None:
    events = world.reconcile(at(0))
    assert types(events) == ["DispatchRequested"]
    data = events[0].data
    did = dispatch_id(RUN, "a", 1)
    assert (data["task_key"], data["attempt"], data["dispatch_id"]) == ("a", 1, did)
    assert data["attempt_id"] == attempt_id_for(did, at(0))
    assert ulid_timestamp(data["attempt_id"]) == at(0)
    world.append(events)
    world.compact()
    # DISPATCHED now: the only intent left is the heartbeat check of attempt 1.
    assert types(world.reconcile(at(1))) == ["TimerRequested"]


def test_max_in_flight_holds_ready_tasks_until_attempts_finish(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """With `max_in_flight`, a wide fan-out dispatches no more attempts per run than the
    workers can take, so queued attempts do not age past their heartbeat timeout
    before they start; the rest stay READY (in task_key order) until some finish."""
    leaves = [TaskDef(f"leaf{i}", ["root"]) for i in range(5)]
    world = World(spec, rules, catalog, [TaskDef("root"), *leaves])
    world.config = ControllerConfig(catalog, max_in_flight=2)
    world.append(world.reconcile(at(0)))
    world.compact()
    world.append([world.fact("TaskStarted", "root", at(1)), world.fact("TaskFinished", "root", at(2), outcome="SUCCEEDED")])
    world.compact()

    first = [e for e in world.reconcile(at(3)) if e.event_type == "DispatchRequested"]
    assert [e.data["task_key"] for e in first] == ["leaf0", "leaf1"]
    world.append(first)
    world.compact()
    assert [e for e in world.reconcile(at(4)) if e.event_type == "DispatchRequested"] == []

    world.append([world.fact("TaskStarted", "leaf0", at(5)), world.fact("TaskFinished", "leaf0", at(6), outcome="SUCCEEDED")])
    world.compact()
    again = [e for e in world.reconcile(at(7)) if e.event_type == "DispatchRequested"]
    assert [e.data["task_key"] for e in again] == ["leaf2"]
    # Unlimited by default: every READY task is dispatched at once.
    world.config = ControllerConfig(catalog)
    assert [e.data["task_key"] for e in world.reconcile(at(8)) if e.event_type == "DispatchRequested"] == ["leaf2", "leaf3", "leaf4"]


def test_reconcile_is_deterministic_and_reads_only_published_tables(world: World) -> None:
    """Same view + same now -> the same events (INV-3); the view from the published
    JSON tables equals the in-memory one, so controllers need nothing else (INV-7)."""
    published = ProjectionView.from_tables(world.projection.tables())
    assert published == world.view()
    first = world.reconcile(at(3))
    again = reconcile(published, at(3), at(3), config=world.config, **SCOPE)
    assert [e.to_json() for e in first] == [e.to_json() for e in again]
    assert first[0].event_id != world.reconcile(at(4))[0].event_id


def test_two_replicas_reconciling_the_same_view_keep_one_outbox_row(world: World) -> None:
    """Replicas at the same instant emit identical events; at different instants the
    fold keeps the lowest event_id per key: one outbox row, one attempt id (INV-3)."""
    replica_1 = world.reconcile(at(0))
    replica_2 = world.reconcile(at(0))
    late_replica = world.reconcile(at(2))
    world.append(replica_1 + replica_2 + late_replica)
    world.compact()
    tables = world.projection.tables()
    assert [(r["dispatch_id"], r["attempt_id"]) for r in tables["dispatch_outbox"]] == [
        (dispatch_id(RUN, "a", 1), replica_1[0].data["attempt_id"])
    ]
    assert {r["event_id"]: r["reason"] for r in tables["rejected_events"]} == {late_replica[0].event_id: "DUPLICATE"}


# ------------------------------------------------------------ dispatcher --


def test_dispatcher_sends_pending_rows_and_counts_409_as_success(world: World) -> None:
    world.append(world.reconcile(at(0)))
    world.compact()
    (row,) = pending_dispatches(world.view())
    assert row.cloud_task_id == dispatch_cloud_task_id(row.dispatch_id)
    created = dispatch_outcome_events(row, CreateStatus.CREATED, at(1), config=world.config, **SCOPE)
    exists = dispatch_outcome_events(row, CreateStatus.ALREADY_EXISTS, at(1), config=world.config, **SCOPE)
    assert types(created) == types(exists) == ["DispatchEnqueued"]
    assert created == exists
    refused = dispatch_outcome_events(row, CreateStatus.REJECTED, at(1), config=world.config, **SCOPE)
    assert types(refused) == ["AttemptTimedOut"] and refused[0].data["reason"] == "DISPATCH_TIMEOUT"
    world.append(created)
    world.compact()
    assert pending_dispatches(world.view()) == []
    assert world.projection.tables()["dispatch_outbox"][0]["status"] == "CREATED"


# ------------------------------------------------------------------ timers --


def fail_attempt_one(world: World, when: datetime) -> Event:
    dispatch_and_start(world, at(0))
    (failed,) = world.append([world.fact("TaskFinished", "a", when, outcome="FAILED")])
    world.compact()
    return failed


def test_retry_backoff_is_capped_and_jittered_deterministically(world: World) -> None:
    jitters = {derived_jitter(RUN, key, n) for key in "abcdefgh" for n in (1, 2, 3)}
    assert len(jitters) == 24 and all(0.0 <= j < 1.0 for j in jitters)
    assert derived_jitter(RUN, "a", 1) == derived_jitter(RUN, "a", 1)
    for attempt in range(1, 40):
        delay = retry_backoff(attempt, cap_sec=300.0, jitter=derived_jitter(RUN, "a", attempt))
        raw = min(300.0, 2.0 ** (attempt - 1))
        assert raw / 2 <= delay <= raw <= 300.0
    fail_attempt_one(world, at(5))
    task = world.view().tasks[(RUN, "a")]
    assert timedelta(seconds=0.5) <= retry_delay(task, world.config) <= timedelta(seconds=1)


def test_retry_timer_respects_watermark_freshness(world: World) -> None:
    """A retry timer whose fire_at is past the watermark reschedules itself; once the
    projection has folded up to fire_at it fires and the next attempt is dispatched."""
    failed = fail_attempt_one(world, at(5))
    (request,) = world.reconcile(at(6))
    assert request.event_type == "TimerRequested" and request.data["timer_type"] == "RETRY"
    fire_at = failed.occurred_at + retry_delay(world.view().tasks[(RUN, "a")], world.config)
    assert request.data["fire_at"] == format_timestamp(fire_at)
    assert request.data["timer_id"].startswith(f"timer:retry:{RUN}:a:1:")
    world.append([request])
    world.compact()
    timer_id = request.data["timer_id"]

    # Delivered on time, but compaction lags: the watermark is before fire_at.
    lagging = world.fire(timer_id, now=fire_at + timedelta(seconds=1), watermark=fire_at - timedelta(milliseconds=1))
    assert types(lagging) == ["TimerRequested"]
    later = lagging[0].data
    assert later["timer_type"] == "RETRY" and later["attempt"] == 1 and later["timer_id"] != timer_id
    assert datetime.fromisoformat(later["fire_at"]) > fire_at
    assert world.task("a")["state"] == "RETRY_WAIT"

    fresh = world.fire(timer_id, now=fire_at + timedelta(seconds=1), watermark=fire_at)
    assert types(fresh) == ["TimerFired"]
    world.append(fresh)
    world.compact()
    assert world.task("a")["state"] == "READY"
    (dispatch,) = world.reconcile(at(20))
    assert (dispatch.event_type, dispatch.data["attempt"]) == ("DispatchRequested", 2)


def test_heartbeat_check_guards_against_compaction_lag(world: World) -> None:
    """A heartbeat in the ledger but not yet compacted never fails the task: with the
    watermark before fire_at the check reschedules; once the heartbeat is folded and
    the watermark passes fire_at, the check finds it and schedules the next one."""
    dispatch_and_start(world, at(0))
    (check,) = world.reconcile(at(1))
    assert check.data["timer_type"] == "HEARTBEAT_CHECK"
    fire_at = at(11)  # started at 0.001, timeout 10 s: the next whole second
    assert check.data["fire_at"] == format_timestamp(fire_at)
    world.append([check])
    world.compact()
    timer_id = check.data["timer_id"]

    world.append([world.fact("TaskHeartbeat", "a", at(8), heartbeat_at=format_timestamp(at(8)))])  # not compacted
    lagging = world.fire(timer_id, now=at(12), watermark=at(7))
    assert types(lagging) == ["TimerRequested"]
    assert "AttemptTimedOut" not in types(lagging)

    world.compact()
    fresh = world.fire(timer_id, now=at(12), watermark=at(12))
    assert types(fresh) == ["TimerRequested", "TimerFired"]
    assert fresh[0].data["fire_at"] == format_timestamp(at(18))
    world.append(fresh)
    world.compact()
    assert world.task("a")["state"] == "RUNNING"


def test_heartbeat_check_times_out_a_silent_attempt(world: World) -> None:
    """Silent past the timeout: HEARTBEAT_TIMEOUT if it started, DISPATCH_TIMEOUT if not."""
    dispatch_and_start(world, at(0))
    (check,) = world.reconcile(at(1))
    world.append([check])
    world.compact()
    verdict = world.fire(check.data["timer_id"], now=at(12), watermark=at(12))
    assert types(verdict) == ["AttemptTimedOut", "TimerFired"]
    assert verdict[0].data["reason"] == "HEARTBEAT_TIMEOUT"
    world.append(verdict)
    world.compact()
    assert world.task("a")["state"] == "RETRY_WAIT"
    # The retry dispatches attempt 2, which no worker picks up: a stuck dispatch.
    world.append(world.reconcile(at(13)))
    world.compact()
    (retry,) = [t for t in world.view().timers.values() if t.timer_type == "RETRY"]
    world.append(world.fire(retry.timer_id, now=at(20), watermark=at(20)))
    world.compact()
    world.append(world.reconcile(at(21)))
    world.compact()
    assert world.task("a")["state"] == "DISPATCHED"
    (check2,) = [e for e in world.reconcile(at(22)) if e.data.get("attempt") == 2]
    world.append([check2])
    world.compact()
    # Still waiting in a live queue (workers busy, not lost): the check looks again later.
    attempt_id = world.task("a")["attempt_id"]
    waiting = on_timer_fired(
        world.view(), world.view().timers[check2.data["timer_id"]], at(40), at(40),
        config=world.config, waiting=frozenset({attempt_id}), **SCOPE,
    )
    assert types(waiting) == ["TimerRequested", "TimerFired"]
    assert waiting[0].data["timer_type"] == "HEARTBEAT_CHECK" and waiting[0].data["fire_at"] > format_timestamp(at(40))
    verdict2 = world.fire(check2.data["timer_id"], now=at(40), watermark=at(40))
    assert verdict2[0].data["reason"] == "DISPATCH_TIMEOUT"  # its queue task is gone: lost
    world.append(verdict2)
    world.compact()
    tables = world.projection.tables()
    assert world.task("a")["state"] == "FAILED" and world.task("b")["state"] == "SKIPPED"
    assert tables["runs"][0]["state"] == "FAILED"


def test_timer_handler_ignores_duplicates_and_moved_on_attempts(world: World) -> None:
    dispatch_and_start(world, at(0))
    (check,) = world.reconcile(at(1))
    world.append([check])
    world.compact()
    world.append([world.fact("TaskFinished", "a", at(2), outcome="SUCCEEDED")])
    world.compact()
    assert types(world.fire(check.data["timer_id"], now=at(12), watermark=at(12))) == ["TimerFired"]
    world.append(world.fire(check.data["timer_id"], now=at(12), watermark=at(12)))
    world.compact()
    assert world.fire(check.data["timer_id"], now=at(13), watermark=at(13)) == []


def test_repair_reemits_lost_intents_and_handles_overdue_timers(world: World) -> None:
    """Anti-entropy: a READY task never dispatched gets its intent; a SCHEDULED timer
    whose queue task was lost is handled once it is overdue past the watermark."""
    assert types(repair(world.view(), at(0), at(0), config=world.config, **SCOPE)) == ["DispatchRequested"]
    dispatch_and_start(world, at(0))
    (check,) = world.reconcile(at(1))
    world.append([check])
    world.compact()
    grace = world.config.repair_grace_sec
    assert repair(world.view(), at(5), at(5), config=world.config, **SCOPE) == []
    late = at(11 + grace)
    repaired = repair(world.view(), late, late, config=world.config, **SCOPE)
    assert types(repaired) == ["AttemptTimedOut", "TimerFired"]
    assert [e.to_json() for e in repaired] == [
        e.to_json() for e in repair(world.view(), late, late, config=world.config, **SCOPE)
    ]


def test_view_records_are_read_only(world: World) -> None:
    view = world.view()
    timer = TimerRecord("timer:retry:run_1:a:1:5", "t_x", "RETRY", RUN, "a", 1, at(5), "SCHEDULED", "v")
    with pytest.raises(AttributeError):
        timer.state = "FIRED"  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.tasks[(RUN, "zz")] = view.tasks[(RUN, "a")]  # type: ignore[index]


# ------------------------------------------------------------------ run SLA --


def sla_world(spec: Spec, rules: Registry, catalog: Catalog, on_miss: str = "alert", sla_sec: int = 30) -> World:
    labels = {"servo.sla_sec": str(sla_sec), "servo.on_sla_miss": on_miss}
    return World(spec, rules, catalog, [TaskDef("a", heartbeat_timeout_sec=0)], labels)


def test_a_run_with_an_sla_gets_one_sla_check_at_created_at_plus_the_sla(
    spec: Spec, rules: Registry, catalog: Catalog, world: World
) -> None:
    w = sla_world(spec, rules, catalog)
    created = datetime.fromisoformat(str(w.projection.tables()["runs"][0]["created_at"]).replace("Z", "+00:00"))
    events = w.reconcile(at(0))
    (check,) = [e for e in events if e.event_type == "TimerRequested"]
    fire_at = created + timedelta(seconds=30)
    epoch = int(fire_at.timestamp())
    assert check.data == {
        "timer_id": f"timer:sla:{RUN}:{epoch}",
        "timer_type": "SLA_CHECK",
        "run_id": RUN,
        "fire_at": format_timestamp(fire_at),
    }
    w.append(events)
    w.compact()
    assert [e.event_type for e in w.reconcile(at(1))] == []  # one check per run
    assert not [e for e in world.reconcile(at(0)) if e.data.get("timer_type") == "SLA_CHECK"]  # no SLA, no check


def test_run_sla_check_respects_watermark_freshness(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """Before the watermark reaches fire_at the check only reschedules itself (INV-9):
    a run that finished in time but is not folded yet is never flagged or cancelled."""
    w = sla_world(spec, rules, catalog, on_miss="cancel")
    w.append(w.reconcile(at(0)))
    w.compact()
    (timer,) = [t for t in w.view().timers.values() if t.timer_type == "SLA_CHECK"]

    lagging = w.fire(timer.timer_id, now=timer.fire_at + timedelta(seconds=1), watermark=timer.fire_at - timedelta(milliseconds=1))
    assert types(lagging) == ["TimerRequested"]
    later = lagging[0].data
    assert later["timer_type"] == "SLA_CHECK" and later["timer_id"].startswith(f"timer:sla:{RUN}:")
    assert later["timer_id"] != timer.timer_id and datetime.fromisoformat(later["fire_at"]) > timer.fire_at

    missed = w.fire(timer.timer_id, now=timer.fire_at + timedelta(seconds=1), watermark=timer.fire_at)
    assert types(missed) == ["RunCancelRequested", "TimerFired"]
    assert missed[0].data["requested_by"] == "servo:sla" and "SLA of 30 s" in missed[0].data["reason"]
    w.append(missed)
    w.compact()
    tables = w.projection.tables()
    assert tables["runs"][0]["state"] == "CANCELLED" and w.task("a")["state"] == "CANCELLED"
    assert {t["timer_id"]: t["state"] for t in tables["timers"]}[timer.timer_id] == "FIRED"


def test_an_sla_cancel_folds_after_the_timer_that_caused_it(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """The handler's RunCancelRequested sorts after its TimerFired (event_id order is the
    fold's order), whatever its timer id: else the cancel folds first (two ids of one
    millisecond order by a hash of their keys), cancels the SCHEDULED check, and the
    fold refuses the TimerFired as INVALID_TRANSITION: the audit tables would say the
    check that cancelled the run never fired."""
    for offset_ms, sla_sec in enumerate(range(30, 62)):
        w = sla_world(spec, rules, catalog, on_miss="cancel", sla_sec=sla_sec)
        w.append(w.reconcile(at(0)))
        w.compact()
        (timer,) = [t for t in w.view().timers.values() if t.timer_type == "SLA_CHECK"]
        now = timer.fire_at + timedelta(milliseconds=offset_ms)
        missed = w.fire(timer.timer_id, now=now, watermark=now)
        assert types(missed) == ["RunCancelRequested", "TimerFired"]  # written in this order (crash safety)
        cancel, fired = missed
        assert fired.event_id < cancel.event_id, offset_ms  # folded in this one
        w.append(missed)
        w.compact()
        tables = w.projection.tables()
        assert {t["timer_id"]: t["state"] for t in tables["timers"]}[timer.timer_id] == "FIRED", offset_ms
        assert tables["rejected_events"] == [] and tables["runs"][0]["state"] == "CANCELLED", offset_ms


def test_a_missed_sla_only_alerts_unless_cancel_was_asked(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    w = sla_world(spec, rules, catalog, on_miss="alert")
    w.append(w.reconcile(at(0)))
    w.compact()
    (timer,) = [t for t in w.view().timers.values() if t.timer_type == "SLA_CHECK"]
    assert types(w.fire(timer.timer_id, now=timer.fire_at, watermark=timer.fire_at)) == ["TimerFired"]


def test_an_sla_check_of_an_ended_run_is_moot_whatever_the_watermark(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    w = sla_world(spec, rules, catalog, on_miss="cancel")
    w.append(w.reconcile(at(0)))  # the dispatch of a and the SLA check
    w.compact()
    (timer,) = [t for t in w.view().timers.values() if t.timer_type == "SLA_CHECK"]
    w.append([w.fact("TaskStarted", "a", at(1)), w.fact("TaskFinished", "a", at(2), outcome="SUCCEEDED")])
    w.compact()
    assert w.projection.tables()["runs"][0]["state"] == "SUCCEEDED"
    assert types(w.fire(timer.timer_id, now=at(3), watermark=at(0))) == ["TimerFired"]


def test_repair_fires_an_overdue_sla_check_whose_queue_task_was_lost(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    w = sla_world(spec, rules, catalog, on_miss="cancel")
    w.append(w.reconcile(at(0)))
    w.compact()
    (timer,) = [t for t in w.view().timers.values() if t.timer_type == "SLA_CHECK"]
    late = timer.fire_at + timedelta(seconds=w.config.repair_grace_sec + 1)
    events = repair(w.view(), late, late, config=w.config, **SCOPE)
    assert "RunCancelRequested" in types(events) and "TimerFired" in types(events)
