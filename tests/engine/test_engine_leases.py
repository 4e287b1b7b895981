"""Workers keep the queue lease of an attempt they are still running."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from servo.api import Pipeline
from servo.engine import EmbeddedEngine, Home


def test_a_task_longer_than_its_lease_runs_once_and_is_acked(tmp_path: Path) -> None:
    """The engine leases for `lease_seconds`; a task that runs four times as long keeps
    its lease (extended while it runs), so the queue never hands it out again and the
    ack of the first lease counts: one lease, one run, one done row."""
    home = Home.open(tmp_path / "home")
    pipeline = Pipeline("long")
    runs: list[float] = []
    lock = threading.Lock()

    @pipeline.task()
    def long() -> None:
        with lock:
            runs.append(time.monotonic())
        time.sleep(1.2)

    outcome = EmbeddedEngine(home, pipeline, lease_seconds=0.3, poll_seconds=0.01).run(timeout=60)

    assert outcome.state == "SUCCEEDED"
    assert len(runs) == 1
    with sqlite3.connect(home.queue_path) as db:
        rows = db.execute("SELECT state, attempts FROM tasks WHERE target = 'dispatch/long'").fetchall()
    assert rows == [("done", 1)]
