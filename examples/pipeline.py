"""The example pipeline of the README: a retried task and a skipped branch.

    servo run examples/pipeline.py

- extract succeeds;
- transform fails on its first attempt (a transient error) and succeeds on retry;
- load runs after transform;
- report fails for good (max_attempts=1), so notify is SKIPPED and the run FAILS.
"""

from __future__ import annotations

import time

from servo.api import Pipeline, RetryPolicy, TaskContext

pipeline = Pipeline("nightly")


@pipeline.task(max_attempts=2)
def extract(ctx: TaskContext) -> None:
    time.sleep(0.05)


@pipeline.task(depends_on=[extract], max_attempts=3, retry=RetryPolicy(base_sec=0.2, cap_sec=1.0))
def transform(ctx: TaskContext) -> None:
    ctx.heartbeat(progress_pct=50)
    if ctx.attempt == 1:
        raise ConnectionError("warehouse busy, try again")


@pipeline.task(depends_on=[transform])
def load(ctx: TaskContext) -> None:
    time.sleep(0.05)


@pipeline.task(depends_on=[extract])
def report(ctx: TaskContext) -> None:
    raise ValueError("empty partition 2026-01-01")


@pipeline.task(depends_on=[report])
def notify(ctx: TaskContext) -> None:
    print("never runs: report failed")
