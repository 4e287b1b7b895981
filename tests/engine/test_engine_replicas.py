"""Two driver replicas on one home (ADR 010): one compactor folds, both drive.

The replicas start together on the same run key. Starting a compactor fences the
older one, so exactly one replica leads (folds and publishes); the fenced one keeps
reconciling, dispatching and running tasks from the published projection and hands
its appended event ids to the leader as notices. INV-3: they converge on one outbox
row (and one queue task) per dispatch; each task's success is accepted once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from engine_audit import Audit, Crash, fan_in, queue_task_names

from servo.core._registry import Registry
from servo.engine import EmbeddedEngine, Home, RunOutcome
from servo.spec import Spec

FAST = {"poll_seconds": 0.01, "repair_seconds": 0.5, "repair_grace_sec": 1}


def run_together(engines: list[EmbeddedEngine], run_key: str) -> list[RunOutcome | BaseException]:
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


def test_two_replicas_converge_on_one_outbox_row_per_dispatch(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("replicas", roots=4, sleep=0.1)
    engines = [EmbeddedEngine(home, pipeline, replica=name, workers=2, **FAST) for name in ("a", "b")]

    results = run_together(engines, "replicas:1")

    for result in results:
        assert isinstance(result, RunOutcome), result
        assert result.state == "SUCCEEDED"
    assert len({r.run["run_id"] for r in results if isinstance(r, RunOutcome)}) == 1
    assert sorted(e.leading for e in engines) == [False, True]  # one folds, one was fenced
    audit = Audit.of(home, spec, rules)
    assert [r["state"] for r in audit.tables["runs"]] == ["SUCCEEDED"]
    audit.assert_one_outbox_row_per_dispatch()
    assert queue_task_names(home) == {r["cloud_task_id"]: 1 for r in audit.tables["dispatch_outbox"]}
    assert audit.successes() == {"r0": 1, "r1": 1, "r2": 1, "r3": 1, "join": 1}
    assert {t["attempt"] for t in audit.tables["tasks"]} == {1}


def test_fenced_replica_takes_over_when_the_leader_dies(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """The leader crashes mid-run; the fenced replica sees the manifest stop moving,
    takes the epoch itself and finishes the run."""
    home = Home.open(tmp_path / "home")
    pipeline = fan_in("takeover", roots=3, sleep=1.0)
    crashes: list[str] = []

    def die_once_leading(point: str, key: str) -> None:
        # Live attempts have heartbeat-check timers: the new leader's first step creates
        # their queue tasks, and dies there.
        if point == "after_timer_create" and leader.leading:
            crashes.append(key)
            raise Crash(key)

    follower = EmbeddedEngine(home, pipeline, replica="a", takeover_seconds=1.5, **FAST)
    leader = EmbeddedEngine(home, pipeline, replica="b", faults=die_once_leading, **FAST)
    outcome: list[RunOutcome] = []
    thread = threading.Thread(target=lambda: outcome.append(follower.run("takeover:1", timeout=60)))
    thread.start()
    # Whoever starts its compactor last leads: the follower first, the leader once the
    # roots are running.
    threading.Event().wait(0.4)
    with pytest.raises(Crash):
        leader.run("takeover:1", timeout=60)
    assert crashes
    thread.join(timeout=90)

    assert outcome and outcome[0].state == "SUCCEEDED"
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
