"""Two driver replicas on one home (ADR 010): one compactor folds, both drive.

The replicas start together on the same run key. The home's leader lock lets one
lead at a time (fold, publish, emit intents); the other follows: it dispatches and
runs tasks from the published projection and hands its appended event ids to the
leader as notices, and leads once the lock is free. INV-3: they converge on one outbox
row (and one queue task) per dispatch; each task's success is accepted once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_audit import Audit, Crash, fan_in, queue_task_names

from servo.core._registry import Registry
from servo.engine import EmbeddedEngine, Home, RunOutcome
from servo.spec import Spec

FAST = {"poll_seconds": 0.01, "repair_seconds": 0.5, "repair_grace_sec": 1}


def run_together(engines: list[EmbeddedEngine], run_key: str | None) -> list[RunOutcome | BaseException]:
    """Run every engine in its own thread, all released at once; outcome or error each."""
    barrier = threading.Barrier(len(engines))
    results: list[RunOutcome | BaseException] = [RuntimeError("did not finish")] * len(engines)

    def drive(index: int) -> None:
        barrier.wait()
        try:
            results[index] = engines[index].run(run_key, timeout=60)
        except BaseException as error:  # reported to the test thread
            results[index] = error

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return results


def drive_into(results: list[RunOutcome | BaseException], engine: EmbeddedEngine, run_key: str | None) -> None:
    """Run `engine` to its end; append its outcome or error to `results`."""
    try:
        results.append(engine.run(run_key, timeout=60))
    except BaseException as error:  # reported to the test thread
        results.append(error)


def pause_once_at(point: str, paused: list[bool]) -> Callable[[str, str], None]:
    """A fault hook that sleeps a second the first time the engine reaches `point`,
    noting it in `paused` (what `second_starts_while_first_pauses` waits for)."""

    def pause(at: str, key: str) -> None:
        if at == point and not paused:
            paused.append(True)
            time.sleep(1.0)

    return pause


def second_starts_while_first_pauses(
    first: EmbeddedEngine, second: EmbeddedEngine, paused: list[bool], run_key: str | None, *, join_seconds: float = 90
) -> list[RunOutcome | BaseException]:
    """Run `first`; once its fault hook has paused (`paused` is not empty), start `second`."""
    results: list[RunOutcome | BaseException] = []
    threads = [threading.Thread(target=drive_into, args=(results, first, run_key))]
    threads[0].start()
    while not paused:
        time.sleep(0.01)
    threads.append(threading.Thread(target=drive_into, args=(results, second, run_key)))
    threads[1].start()
    for thread in threads:
        thread.join(join_seconds)
    return list(results)


def test_two_replicas_converge_on_one_outbox_row_per_dispatch(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("replicas", roots=4, sleep=0.1)
    engines = [EmbeddedEngine(home, pipeline, replica=name, workers=2, **FAST) for name in ("a", "b")]

    results = run_together(engines, "replicas:1")

    for result in results:
        assert isinstance(result, RunOutcome), result
        assert result.state == "SUCCEEDED"
    assert len({r.run["run_id"] for r in results if isinstance(r, RunOutcome)}) == 1
    assert any(e.leading for e in engines)  # one leads at a time (the leader lock); the other may take over at the end
    audit = Audit.of(home, spec, rules)
    assert [r["state"] for r in audit.tables["runs"]] == ["SUCCEEDED"]
    audit.assert_one_outbox_row_per_dispatch()
    assert queue_task_names(home) == {r["cloud_task_id"]: 1 for r in audit.tables["dispatch_outbox"]}
    assert audit.successes() == {"r0": 1, "r1": 1, "r2": 1, "r3": 1, "join": 1}
    assert {t["attempt"] for t in audit.tables["tasks"]} == {1}


def test_two_runs_of_a_pipeline_started_at_once_without_a_run_key_make_one_run(
    tmp_path: Path, spec: Spec, rules: Registry
) -> None:
    """Found by a black-box pass: two `servo run p.py` started in the same instant
    (overlapping cron or CI jobs) sometimes both found no unfinished run of the
    pipeline, and each triggered its own, so every task ran twice. Starting is now one
    at a time per home, and a starter holds that turn until its run is in the
    published tables, where the next one finds it and resumes it. Here the first
    starter pauses between appending its RunTriggered and publishing it, while the
    second one starts."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("together", roots=2, sleep=0.05)
    paused: list[bool] = []
    first = EmbeddedEngine(home, pipeline, replica="a", faults=pause_once_at("after_trigger", paused), workers=2, **FAST)
    second = EmbeddedEngine(home, pipeline, replica="b", workers=2, **FAST)
    results = second_starts_while_first_pauses(first, second, paused, None)

    assert all(isinstance(r, RunOutcome) and r.state == "SUCCEEDED" for r in results), results
    outcomes = [r for r in results if isinstance(r, RunOutcome)]
    assert len({r.run["run_id"] for r in outcomes}) == 1
    assert sorted(r.resumed for r in outcomes) == [False, True]
    audit = Audit.of(home, spec, rules)
    assert len(audit.tables["runs"]) == 1
    assert audit.successes() == {"r0": 1, "r1": 1, "join": 1}


def test_a_leader_waiting_to_start_keeps_folding_so_the_starter_ahead_of_it_is_published(
    tmp_path: Path, spec: Spec, rules: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a black-box pass of ADR 027's start lock: the engine holding the leader
    lock waited for the start lock without folding, while the follower holding the
    start lock waited for the leader to publish its run: a 10 s stall, after which a
    third starter found nothing published and made a second run. Here the leader
    pauses before its start until the follower has triggered its run; with the
    publish wait made long, a leader that stops folding would hang the test."""

    from servo.engine import _driver

    monkeypatch.setattr(_driver, "PUBLISH_WAIT_SECONDS", 120.0)
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("ahead", roots=2, sleep=0.05)
    triggered = threading.Event()
    paused: list[bool] = []

    def leader_waits(point: str, key: str) -> None:
        if point == "before_start" and not paused:
            paused.append(True)
            triggered.wait(30)

    def follower_triggers(point: str, key: str) -> None:
        if point == "after_trigger":
            triggered.set()

    leader = EmbeddedEngine(home, pipeline, replica="a", faults=leader_waits, workers=2, **FAST)
    follower = EmbeddedEngine(home, pipeline, replica="b", faults=follower_triggers, workers=2, **FAST)
    results = second_starts_while_first_pauses(leader, follower, paused, None, join_seconds=40)

    assert len(results) == 2 and all(isinstance(r, RunOutcome) and r.state == "SUCCEEDED" for r in results), results
    outcomes = [r for r in results if isinstance(r, RunOutcome)]
    assert len({r.run["run_id"] for r in outcomes}) == 1
    assert {r.resumed for r in outcomes} == {False, True}
    assert len(Audit.of(home, spec, rules).tables["runs"]) == 1


def test_fenced_replica_takes_over_when_the_leader_dies(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """The leader crashes mid-run; the follower finds the leader lock free (a dead
    engine's flock goes with it), takes the epoch itself and finishes the run."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("takeover", roots=3, sleep=1.0)
    crashes: list[str] = []

    def die_once_following_started(point: str, key: str) -> None:
        # The join's heartbeat-check timer is created once the roots are done, by which
        # time the follower is running: the leader dies there.
        if point == "after_timer_create" and leader.leading and follower.run_id is not None and not crashes:
            crashes.append(key)
            raise Crash(key)

    leader = EmbeddedEngine(home, pipeline, replica="b", faults=die_once_following_started, **FAST)
    follower = EmbeddedEngine(home, pipeline, replica="a", **FAST)
    errors: list[BaseException] = []

    def lead() -> None:
        try:
            leader.run("takeover:1", timeout=60)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=lead)
    thread.start()
    threading.Event().wait(0.4)  # the leader has the lock and runs the roots
    outcome = follower.run("takeover:1", timeout=60)
    thread.join(timeout=90)

    assert crashes and errors and isinstance(errors[0], Crash)
    assert outcome.state == "SUCCEEDED"
    assert follower.leading  # it took the epoch over
    audit = Audit.of(home, spec, rules)
    assert [r["state"] for r in audit.tables["runs"]] == ["SUCCEEDED"]
    audit.assert_one_outbox_row_per_dispatch()
    assert audit.successes() == {"r0": 1, "r1": 1, "r2": 1, "join": 1}


def test_an_intent_another_replica_appended_under_the_same_id_is_its_intent_not_an_error(
    tmp_path: Path, spec: Spec, rules: Registry
) -> None:
    """A controller event's id is ULID(now in ms, hash of its idempotency key): two
    replicas emitting one intent in the same millisecond mint the same id, and their
    envelopes differ (each names itself as `source`). Found by running two `servo run`
    at once: the second append raised EventConflict and stopped that engine (exit 2).
    The ledger's copy is the intent; the engine folds that one and goes on."""
    from datetime import UTC, datetime

    from servo.core.controllers import Emitter
    from servo.storage import Ledger

    home = Home.open(tmp_path / "home")
    engine = EmbeddedEngine(home, fan_in("same_ms", roots=1, sleep=0), replica="a", **FAST)
    outcome = engine.run("same-ms:1", timeout=60)
    assert outcome.state == "SUCCEEDED"
    now = datetime.now(UTC)
    ours = Emitter(engine.config, home.tenant, home.workspace, now, "a").emit(
        "RunCancelRequested", {"run_id": "run_elsewhere", "requested_by": "a"}
    )
    theirs = ours._replace(source="b")
    assert theirs.event_id == ours.event_id and theirs.to_json() != ours.to_json()
    other = Ledger(home.store)
    assert other.append(theirs.event_id, theirs.to_json().encode())
    unrelated = Emitter(engine.config, home.tenant, home.workspace, now, "a").emit(
        "RunCancelRequested", {"run_id": "run_other", "requested_by": "a"}
    )

    engine._append([ours, unrelated])  # no EventConflict escapes

    assert other.read(ours.event_id) == theirs.to_json().encode()  # the first copy stands
    assert other.contains(unrelated.event_id)  # and the rest of the batch landed


def test_a_replica_starting_while_another_leads_never_emits_intents(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """Found by the fuzz (two `servo run` started together): both took a compactor
    epoch and both emitted DispatchRequested before either saw the other, with
    attempt ids minted from their own clocks. The fold kept the lower event id while
    the queue task carried the other attempt id, so the attempt that ran was refused
    as stale and the task sat DISPATCHED until its heartbeat check failed it. Here the
    first leader pauses just before emitting, while the second one starts."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("two_starts", roots=3, sleep=0.05)
    paused: list[bool] = []
    first = EmbeddedEngine(home, pipeline, replica="a", faults=pause_once_at("before_intents", paused), **FAST)
    second = EmbeddedEngine(home, pipeline, replica="b", **FAST)
    results = second_starts_while_first_pauses(first, second, paused, "two-starts:1")

    assert all(isinstance(r, RunOutcome) and r.state == "SUCCEEDED" for r in results), results
    audit = Audit.of(home, spec, rules)
    proposed: dict[str, set[str]] = {}
    for event in audit.events:
        if event["event_type"] == "DispatchRequested":
            proposed.setdefault(event["data"]["dispatch_id"], set()).add(event["data"]["attempt_id"])
    assert proposed and all(len(ids) == 1 for ids in proposed.values()), proposed
    assert "STALE_ATTEMPT" not in audit.rejected.values()
    assert {t["attempt"] for t in audit.tables["tasks"]} == {1}


def test_only_the_leader_handles_timers_so_a_followers_retry_fires_on_time(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """Found by a black-box pass: with one `servo run` leading a home, a second one's
    retry timer took 2-18 s instead of 0.2 s. The follower leased the timer and judged
    it against its own watermark, the published manifest's, which lags: so it
    rescheduled the timer (a TimerRequested from the handler, 2 s later) again and
    again. The leader's watermark is its own compaction cut; it handles every timer."""
    from servo.api import Pipeline, RetryPolicy

    home = Home.open(tmp_path / "home")
    slow = Pipeline("slow")
    slow.task(lambda: time.sleep(4.0), name="wait")
    flaky = Pipeline("flaky")
    failed: list[bool] = []

    def once() -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("first attempt fails")

    flaky.task(once, name="t", max_attempts=2, retry=RetryPolicy(base_sec=0.2, factor=1.0, cap_sec=0.2))
    leader = EmbeddedEngine(home, slow, replica="a", **FAST)
    results: list[RunOutcome | BaseException] = []
    first = threading.Thread(target=drive_into, args=(results, leader, None))
    first.start()
    while not leader.leading:
        time.sleep(0.01)
    drive_into(results, EmbeddedEngine(home, flaky, replica="b", **FAST), None)
    first.join(90)

    assert all(isinstance(r, RunOutcome) and r.state == "SUCCEEDED" for r in results), results
    audit = Audit.of(home, spec, rules)
    retries = [e for e in audit.events if e["event_type"] == "TimerRequested" and e["data"]["timer_type"] == "RETRY"]
    assert len(retries) == 1, [(e["source"], e["data"]["fire_at"]) for e in retries]  # never rescheduled
