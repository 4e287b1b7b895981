"""Derived state is not the record: a corrupt state file is named, never a traceback,
and the engine rebuilds the tables from the ledger instead of dying on it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_audit import FAST_RETRY, Audit, Crash
from home_damage import DAMAGE

import servo.engine._driver as driver
from servo.api import Pipeline, TaskContext
from servo.core._registry import Registry
from servo.engine import EmbeddedEngine, Home
from servo.spec import Spec
from servo.storage import Ledger, ledger_object_name


def pipeline(name: str) -> Pipeline:
    p = Pipeline(name)
    p.task(lambda: None, name="a")
    p.task(lambda: None, name="b", depends_on=["a"])
    return p


def corrupt_newest_tasks_delta(home: Home) -> str:
    names = [n for n in home.store.list_prefix("state/") if n.endswith("tasks.parquet")]
    newest = max(names, key=lambda n: int(n.split("/")[2][:12]))
    path = home.root / "store" / "objects" / home.store.full_name(newest)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # torn: header intact, Parquet footer gone
    return newest


def test_a_corrupt_state_file_is_a_clear_error_for_readers(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "home")
    assert EmbeddedEngine(home, pipeline("torn")).run(timeout=60).state == "SUCCEEDED"
    name = corrupt_newest_tasks_delta(home)
    result = subprocess.run(
        [sys.executable, "-m", "servo.cli", "runs", "list", "--home", str(home.root)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert name in result.stderr and "rebuild" in result.stderr


def test_the_engine_rebuilds_published_state_from_the_ledger(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    home = Home.open(tmp_path / "home")
    assert EmbeddedEngine(home, pipeline("heal")).run(timeout=60).state == "SUCCEEDED"
    corrupt_newest_tasks_delta(home)
    outcome = EmbeddedEngine(home, pipeline("heal")).run(timeout=60)  # a second run on the home
    assert outcome.state == "SUCCEEDED"
    audit = Audit.of(home, spec, rules)
    assert [r["state"] for r in audit.tables["runs"]] == ["SUCCEEDED", "SUCCEEDED"]
    result = subprocess.run(
        [sys.executable, "-m", "servo.cli", "runs", "list", "--home", str(home.root), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_derived_state_heals_from_the_ledger(
    tmp_path: Path, spec: Spec, rules: Registry, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever happened to the files derived from the ledger (state, manifests, the
    compactor's epoch) or beside it, the next engine leads, rebuilds what it cannot read
    from the ledger, and runs; readers name the problem instead of a traceback."""
    home = Home.open(tmp_path / "home")
    assert EmbeddedEngine(home, pipeline("first")).run(timeout=60).state == "SUCCEEDED"
    DAMAGE[damage](home)

    listed = subprocess.run(
        [sys.executable, "-m", "servo.cli", "runs", "list", "--home", str(home.root), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert listed.returncode in (0, 2) and "Traceback" not in listed.stderr, listed.stderr

    with caplog.at_level(logging.WARNING):
        outcome = EmbeddedEngine(home, pipeline("second")).run(timeout=15)
    assert outcome.state == "SUCCEEDED"
    audit = Audit.of(home, spec, rules)
    assert sorted(r["state"] for r in audit.tables["runs"]) == ["SUCCEEDED", "SUCCEEDED"]
    listed = subprocess.run(
        [sys.executable, "-m", "servo.cli", "runs", "list", "--home", str(home.root), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["state"] for r in json.loads(listed.stdout)) == ["SUCCEEDED", "SUCCEEDED"]
    if damage not in ("epoch unreadable", "manifest pointer unreadable", "every derived file deleted"):
        assert caplog.records, "the damage is reported"


def test_a_follower_that_finds_published_state_damaged_waits_for_a_leader_to_rebuild_it(
    tmp_path: Path, spec: Spec, rules: Registry
) -> None:
    """Only the leader rewrites published state. A follower (another `servo run` on the
    home) that reads a torn file keeps driving from what it read last instead of
    exiting, and leads, and so rebuilds it, once the leader lock is free."""
    home = Home.open(tmp_path / "home")
    assert EmbeddedEngine(home, pipeline("first")).run(timeout=60).state == "SUCCEEDED"
    corrupt_newest_tasks_delta(home)
    held = home.try_lead()  # another engine leads: this one follows
    assert held is not None
    outcome: list[object] = []
    engine = EmbeddedEngine(home, pipeline("second"), poll_seconds=0.01)
    thread = threading.Thread(target=lambda: outcome.append(_run_or_error(engine)))
    thread.start()
    time.sleep(1.0)
    assert not outcome, outcome  # still waiting, not stopped by the damage
    os.close(held)  # the leader ends: the follower takes over and rebuilds
    thread.join(timeout=60)
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    assert sorted(r["state"] for r in Audit.of(home, spec, rules).tables["runs"]) == ["SUCCEEDED", "SUCCEEDED"]


def _run_or_error(engine: EmbeddedEngine) -> object:
    try:
        return engine.run(timeout=30).state
    except BaseException as error:  # reported to the test thread
        return error


def _crash_then_tear(
    home: Home, pipeline: Pipeline, crash: Callable[[str, str], bool], tear: Callable[[bytes], bool]
) -> None:
    """Run `pipeline` until `crash(point, key)` picks a fault point (a crash there),
    then tear the first ledger event whose bytes `tear` picks, as a bad disk would."""

    def die(point: str, key: str) -> None:
        if crash(point, key):
            raise Crash(key)

    with pytest.raises(Crash):
        EmbeddedEngine(home, pipeline, faults=die).run(timeout=30)
    ledger = Ledger(home.store)
    event_id = next(i for i in ledger.list_event_ids().event_ids if tear(ledger.read(i)))
    path = home.root / "store" / "objects" / home.store.full_name(ledger_object_name(event_id))
    path.write_bytes(path.read_bytes()[:40])


def test_a_run_whose_plan_event_is_unreadable_is_planned_again_on_resume(
    tmp_path: Path, spec: Spec, rules: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger is the record, but a disk can still tear one of its files. If the
    PlanCreated of an unfinished run is unreadable, the run has no tasks and would
    wait forever: the engine resuming it (which has its plan) appends it again, once,
    under the same idempotency key, and the run finishes."""
    home = Home.open(tmp_path / "home")
    _crash_then_tear(
        home, pipeline("torn-plan"), lambda point, _: point == "before_intents", lambda e: b'"PlanCreated"' in e
    )

    with caplog.at_level(logging.WARNING):
        outcome = EmbeddedEngine(home, pipeline("torn-plan")).run(timeout=30)
    assert outcome.state == "SUCCEEDED" and outcome.resumed
    assert any("PlanCreated" in r.getMessage() for r in caplog.records)
    audit = Audit.of(home, spec, rules)
    assert [r["state"] for r in audit.tables["runs"]] == ["SUCCEEDED"]
    assert audit.successes() == {"a": 1, "b": 1}
    assert len(audit.accepted("PlanCreated")) == 1


def test_an_intent_the_fold_keeps_rejecting_is_not_appended_again_and_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If the ledger loses the plan of a run after its first dispatch, the dispatch
    intents the engine emits again are DUPLICATEs of the first (rejected) ones
    (SPEC §3: the lowest event_id holds the key), so the projection never moves. The
    engine must not append the same intent every loop (it did: thousands of events a
    second); it appends each once, and says the run is stuck and how to end it."""
    monkeypatch.setattr(driver, "STUCK_INTENT_SECONDS", 0.5)
    home = Home.open(tmp_path / "home")
    _crash_then_tear(
        home, pipeline("lost-plan"), lambda point, _: point == "after_dispatch_create", lambda e: b'"PlanCreated"' in e
    )
    ledger = Ledger(home.store)

    with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError):
        EmbeddedEngine(home, pipeline("lost-plan"), poll_seconds=0.01).run(timeout=3)
    requested = [i for i in ledger.list_event_ids().event_ids if b'"DispatchRequested"' in ledger.read(i)]
    assert len(requested) <= 3, len(requested)  # the first, and at most one more per engine
    stuck = [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()]
    assert stuck and "servo runs cancel" in stuck[0], [r.getMessage() for r in caplog.records]


def test_a_timer_the_fold_keeps_rejecting_is_reported_as_a_stuck_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn retry TimerRequested makes the TimerFired that followed it an
    INVALID_TRANSITION, and that rejected event keeps its idempotency key: the timer the
    engine asks for again can never fire in the fold. The engine appends each of its
    events once, and says the run is stuck instead of hanging in silence."""
    monkeypatch.setattr(driver, "STUCK_INTENT_SECONDS", 0.5)
    home = Home.open(tmp_path / "home")
    flaky = Pipeline("stuck-timer")

    def fails_first(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("once")

    flaky.task(fails_first, name="a", max_attempts=3, retry=FAST_RETRY)

    _crash_then_tear(
        home,
        flaky,
        lambda point, key: point == "after_dispatch_create" and key.endswith(":a:2"),
        lambda e: b"timer:retry:" in e and b'"TimerRequested"' in e,
    )
    ledger = Ledger(home.store)

    with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError):
        EmbeddedEngine(home, flaky, poll_seconds=0.01, repair_seconds=0.2, repair_grace_sec=0).run(timeout=4)
    fired = [i for i in ledger.list_event_ids().event_ids if b'"TimerFired"' in ledger.read(i)]
    assert len(fired) <= 3, len(fired)
    assert any("stuck" in r.getMessage() and "TimerFired" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
