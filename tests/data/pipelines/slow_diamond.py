"""A pipeline for kill tests: a diamond of slow tasks that all succeed."""

from __future__ import annotations

import time

from servo.api import Pipeline, TaskContext

pipeline = Pipeline("slow_diamond")


@pipeline.task
def start(ctx: TaskContext) -> None:
    time.sleep(0.3)


@pipeline.task(depends_on=[start])
def left(ctx: TaskContext) -> None:
    time.sleep(0.3)
    ctx.heartbeat()


@pipeline.task(depends_on=[start])
def right(ctx: TaskContext) -> None:
    time.sleep(0.3)


@pipeline.task(depends_on=[left, right])
def join(ctx: TaskContext) -> None:
    time.sleep(0.3)
