"""A pipeline for crash tests: a task that heartbeats for about 1.5 s under a short
heartbeat timeout (3 s), then a task after it. $SERVO_TEST_MARK names a file the task
appends a line to as it starts, so a test knows when to kill the engine."""

from __future__ import annotations

import os
import time

from servo.api import Pipeline, TaskContext

pipeline = Pipeline("heartbeating")


@pipeline.task(heartbeat_timeout_sec=3)  # max_attempts=1: a timeout would fail the run
def work(ctx: TaskContext) -> None:
    with open(os.environ["SERVO_TEST_MARK"], "a") as mark:
        mark.write(f"{ctx.attempt_id}\n")
    for _ in range(8):
        time.sleep(0.2)
        ctx.heartbeat()


@pipeline.task(depends_on=[work])
def after() -> None: ...
