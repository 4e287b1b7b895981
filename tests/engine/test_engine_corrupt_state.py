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
from pathlib import Path

import pytest
from engine_audit import Audit
from home_damage import DAMAGE

from servo.api import Pipeline
from servo.core._registry import Registry
from servo.engine import EmbeddedEngine, Home
from servo.spec import Spec


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
