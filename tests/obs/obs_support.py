"""Helpers for the observability tests: a tiny pipeline and one observed embedded run."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servo.api import Pipeline, TaskContext
from servo.engine import EmbeddedEngine, Home, RunOutcome
from servo.obs import REGISTRY, configure_logging
from servo.queue import NewTask, SqliteQueue
from servo.storage import Ledger
from servo.worker import Delivery


class InjectedError(RuntimeError):
    """The error the `broken` task raises on purpose."""


def sample(name: str, **labels: str) -> float:
    """The current value of one sample of the servo registry (0 when absent)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@dataclass
class ObservedRun:
    """What one embedded run left behind."""

    outcome: RunOutcome
    home: Path
    log_lines: list[dict[str, Any]]
    deliveries: list[Delivery]
    ledger: list[dict[str, Any]]
    before: dict[str, float]
    leased_seen: list[float] = field(default_factory=list)


def tiny_pipeline(leased_seen: list[float]) -> Pipeline:
    """extract -> (load, broken); `broken` raises InjectedError once and for all."""
    pipeline = Pipeline("obs_tiny")

    @pipeline.task
    def extract(ctx: TaskContext) -> None:
        deadline = time.monotonic() + 5  # the engine refreshes the gauge while this runs
        while time.monotonic() < deadline and sample("servo_queue_depth", state="leased") < 1:
            time.sleep(0.01)
        leased_seen.append(sample("servo_queue_depth", state="leased"))
        ctx.heartbeat(progress_pct=50)

    @pipeline.task(depends_on=[extract])
    def load(ctx: TaskContext) -> None:
        return None

    @pipeline.task(depends_on=[extract], max_attempts=1)
    def broken(ctx: TaskContext) -> None:
        raise InjectedError("injected for the error counter")

    return pipeline


def run_observed(home: Path) -> ObservedRun:
    """Run `tiny_pipeline` in-process with JSON logs at INFO and a spy on the queue."""
    before = {"injected": sample("servo_errors_total", component="task", error_type="InjectedError")}
    stream = io.StringIO()
    handler = configure_logging("json", "INFO", stream=stream)
    leased_seen: list[float] = []
    engine = EmbeddedEngine(Home.open(home), tiny_pipeline(leased_seen), workers=2)
    deliveries: list[Delivery] = []
    assert isinstance(engine.queue, SqliteQueue)
    create = engine.queue.create_tasks

    def spy(items: Sequence[NewTask]) -> list[bool]:
        deliveries.extend(Delivery.from_json(payload) for _, target, payload, _ in items if target.startswith("dispatch"))
        return create(items)

    engine.queue.create_tasks = spy  # type: ignore[method-assign]
    try:
        outcome = engine.run(timeout=60)
    finally:
        logging.getLogger("servo").removeHandler(handler)
    ledger = Ledger(Home.open(home, create=False).store)
    events = [json.loads(ledger.read(i)) for i in ledger.list_event_ids().event_ids]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return ObservedRun(outcome, home, lines, deliveries, events, before, leased_seen)
