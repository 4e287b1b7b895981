"""INV-5 on the embedded engine: a run still finishes when queue work is lost or the
dispatcher dies between two steps. Faults enter through the driver's `faults` hook
(named points, like the compactor's crash hook), never by patching internals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from engine_audit import FAST_RETRY, Audit, Crash, fan_in, queue_task_names

from servo.api import Pipeline, TaskContext
from servo.core._registry import Registry
from servo.core.ids import dispatch_cloud_task_id, dispatch_id, timer_cloud_task_id
from servo.engine import EmbeddedEngine, Home
from servo.queue import SqliteQueue
from servo.spec import Spec

FAST = {"poll_seconds": 0.01, "repair_seconds": 0.3, "repair_grace_sec": 1}


def crash_at(point: str, nth: int = 1) -> tuple[Callable[[str, str], None], list[str]]:
    """A hook that raises `Crash` the `nth` time `point` is reached; and the ids it saw there."""
    seen: list[str] = []

    def hook(at: str, key: str) -> None:
        if at == point:
            seen.append(key)
            if len(seen) == nth:
                raise Crash(f"{point} #{nth} ({key})")

    return hook, seen


def test_lost_dispatch_task_is_retried_after_a_dispatch_timeout(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """The queue loses `join`'s first task before delivery; the stuck-dispatch check ends
    that attempt (DISPATCH_TIMEOUT) and attempt 2 runs."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("lost_dispatch", roots=1, max_attempts=2, heartbeat_timeout_sec=1)
    queue = SqliteQueue(home.queue_path)
    lost: list[str] = []

    def lose_join(point: str, key: str) -> None:
        if point == "after_dispatch_create" and ":join:" in key and not lost:
            assert queue.delete_task(dispatch_cloud_task_id(key))
            lost.append(key)

    outcome = EmbeddedEngine(home, pipeline, queue=queue, faults=lose_join, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED"
    audit = Audit.of(home, spec, rules)
    run_id = audit.tables["runs"][0]["run_id"]
    assert lost == [dispatch_id(run_id, "join", 1)]
    timeouts = [e["data"] for e in audit.accepted("AttemptTimedOut")]
    assert [(t["task_key"], t["attempt"], t["reason"]) for t in timeouts] == [("join", 1, "DISPATCH_TIMEOUT")]
    outbox = {r["dispatch_id"]: r["status"] for r in audit.tables["dispatch_outbox"]}
    assert outbox[lost[0]] == "FAILED"
    assert (audit.task("join")["state"], audit.task("join")["attempt"]) == ("SUCCEEDED", 2)
    assert audit.successes() == {"r0": 1, "join": 1}
    queue.close()


def test_lost_ack_is_recovered_by_the_next_driver(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """Crash between the queue create and the DispatchEnqueued append: the row stays
    PENDING, the next driver creates it again (already there: success) and acks it."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("lost_ack", roots=1)
    hook, seen = crash_at("after_dispatch_create")
    with pytest.raises(Crash):
        EmbeddedEngine(home, pipeline, faults=hook, **FAST).run(timeout=60)

    crashed = Audit.of(home, spec, rules)
    assert crashed.accepted("DispatchEnqueued") == []  # the ack never reached the ledger
    assert queue_task_names(home) == {dispatch_cloud_task_id(seen[0]): 1}  # but the task exists

    outcome = EmbeddedEngine(home, pipeline, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED" and outcome.resumed
    audit = Audit.of(home, spec, rules)
    acks = [e["data"]["dispatch_id"] for e in audit.accepted("DispatchEnqueued")]
    assert acks.count(seen[0]) == 1  # the resumed dispatcher acked it (dispatch precedes delivery)
    audit.assert_one_outbox_row_per_dispatch()
    assert queue_task_names(home) == {r["cloud_task_id"]: 1 for r in audit.tables["dispatch_outbox"]}
    assert audit.successes() == {"r0": 1, "join": 1}


class OneCallEach(SqliteQueue):
    """The SQLite queue without its batch create: one create_task call per task, as
    the Cloud Tasks backend does it, so a dispatcher can die between two creates."""

    create_tasks = None  # type: ignore[assignment]


@pytest.mark.parametrize("batched", [False, True], ids=["one_call_each", "one_transaction"])
def test_dispatcher_crash_mid_batch_loses_no_dispatch(
    tmp_path: Path, spec: Spec, rules: Registry, batched: bool
) -> None:
    """Three roots are dispatched in one batch; the dispatcher dies after creating the
    second queue task. A step's acks are one group commit after its creates, so none of
    them is in the ledger: the next driver re-creates (409 = success) and acks. With
    one call per create the third was never made and the next driver makes it; with
    the SQLite queue's one transaction all three exist already (the crash hook runs
    after the commit)."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("mid_batch", roots=3)
    hook, seen = crash_at("after_dispatch_create", nth=2)
    queue = SqliteQueue(home.queue_path) if batched else OneCallEach(home.queue_path)
    with pytest.raises(Crash):
        EmbeddedEngine(home, pipeline, queue=queue, faults=hook, **FAST).run(timeout=60)
    queue.close()

    crashed = Audit.of(home, spec, rules)
    assert len(crashed.accepted("DispatchRequested")) == 3
    assert crashed.accepted("DispatchEnqueued") == []
    made = set(queue_task_names(home))
    if batched:
        assert len(made) == 3 and {dispatch_cloud_task_id(k) for k in seen} < made
    else:
        assert made == {dispatch_cloud_task_id(k) for k in seen}  # the third never made

    outcome = EmbeddedEngine(home, pipeline, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED" and outcome.resumed
    audit = Audit.of(home, spec, rules)
    audit.assert_one_outbox_row_per_dispatch()
    assert queue_task_names(home) == {r["cloud_task_id"]: 1 for r in audit.tables["dispatch_outbox"]}
    assert {t["attempt"] for t in audit.tables["tasks"]} == {1}  # nothing had to be retried
    assert audit.successes() == {"r0": 1, "r1": 1, "r2": 1, "join": 1}


def test_lost_retry_timer_is_fired_by_anti_entropy(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """`flaky` fails once; its retry timer's queue task is lost. Anti-entropy finds the
    SCHEDULED timer overdue and fires it, and attempt 2 succeeds."""
    home = Home.open(tmp_path / "home")
    pipeline = Pipeline("lost_timer")
    failures: list[int] = []

    @pipeline.task(max_attempts=2, retry=FAST_RETRY)
    def flaky(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            failures.append(ctx.attempt)
            raise RuntimeError("first attempt fails")

    queue = SqliteQueue(home.queue_path)
    lost: list[str] = []

    def lose_retry_timer(point: str, key: str) -> None:
        if point == "after_timer_create" and key.startswith("timer:retry:"):
            assert queue.delete_task(timer_cloud_task_id(key))
            lost.append(key)

    outcome = EmbeddedEngine(home, pipeline, queue=queue, faults=lose_retry_timer, **FAST).run(timeout=60)

    assert outcome.state == "SUCCEEDED"
    assert failures == [1] and len(lost) == 1
    audit = Audit.of(home, spec, rules)
    fired = [e for e in audit.accepted("TimerFired") if e["data"]["timer_id"] == lost[0]]
    assert [e["source"] for e in fired] == ["repair"]  # fired by anti-entropy, not the queue
    assert (audit.task("flaky")["state"], audit.task("flaky")["attempt"]) == ("SUCCEEDED", 2)
    assert audit.successes() == {"flaky": 1}
    queue.close()
