"""A pipeline for interrupt tests: one task that runs for a minute unless stopped."""

from __future__ import annotations

import time

from servo.api import Pipeline, TaskContext

pipeline = Pipeline("long_task")


@pipeline.task
def long(ctx: TaskContext) -> None:
    time.sleep(60)
