"""A wide fan-out with few workers: attempts queue behind each other, and an
attempt's heartbeat clock starts at dispatch. The engine dispatches no more than its
workers can start soon (`max_in_flight`), so no attempt times out before it runs."""

from __future__ import annotations

import time
from pathlib import Path

from engine_audit import Audit

from servo.api import Pipeline, TaskContext
from servo.core._registry import Registry
from servo.engine import EmbeddedEngine, Home
from servo.spec import Spec


def test_wide_fan_out_with_one_worker_times_out_no_queued_attempt(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    pipeline = Pipeline("wide")

    @pipeline.task(heartbeat_timeout_sec=2)
    def root(ctx: TaskContext) -> None:
        pass

    def leaf(ctx: TaskContext) -> None:
        time.sleep(0.25)

    for i in range(16):  # 16 x 0.25 s of work queued behind one worker: 4 s > the 2 s timeout
        pipeline.task(leaf, name=f"leaf{i:02d}", depends_on=["root"], heartbeat_timeout_sec=2)

    home = Home.open(tmp_path / "home")
    outcome = EmbeddedEngine(home, pipeline, workers=1).run(timeout=120)

    audit = Audit.of(home, spec, rules)
    assert [t["task_key"] for t in audit.tables["tasks"] if t["state"] != "SUCCEEDED"] == []
    assert outcome.state == "SUCCEEDED"
    assert audit.accepted("AttemptTimedOut") == []
