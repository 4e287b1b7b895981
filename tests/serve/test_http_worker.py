"""`HttpWorker` against a served home: what it acks, what it runs, what it retries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from serve_helpers import Stage, serving

from servo.api import Pipeline, TaskContext, create_app
from servo.core.builders import TaskDef
from servo.engine import Home
from servo.queue import SqliteQueue
from servo.worker import Delivery, HttpWorker


def _enqueue(
    home: Home, name: str, call: dict[str, object], base: str = "", pipeline: str | None = None, target: str = "dispatch"
) -> None:
    body = call["json"]
    assert isinstance(body, dict)
    token = str(call["headers"]["Authorization"]).removeprefix("Bearer ")  # type: ignore[index]
    fields = {k: body[k] for k in ("tenant", "workspace", "run_id", "task_key", "attempt", "attempt_id")}
    delivery = Delivery(**fields, token=token, callback_base=base, pipeline=pipeline)
    with SqliteQueue(home.queue_path) as queue:
        queue.create_task(name, target, delivery.to_json(), datetime.now(UTC))


def _pipeline(ran: list[str]) -> Pipeline:
    pipeline = Pipeline("p")

    @pipeline.task
    def a(ctx: TaskContext) -> None:
        ctx.heartbeat(progress_pct=10)
        ran.append(ctx.attempt_id)

    return pipeline


def test_the_worker_runs_live_attempts_and_acks_refused_ones_without_running_them(
    home: Home, stage: Stage, tmp_path: Path
) -> None:
    stage.start_run("run_1", TaskDef("a", max_attempts=2))
    live = stage.dispatch("run_1", "a", 1)
    forged = {**live, "headers": {"Authorization": "Bearer " + "f" * 64}}
    ran: list[str] = []
    with serving(create_app(home, lag_wait_seconds=0.5)) as url:
        _enqueue(home, "d_live", live, base=url)  # reported to the delivery's callback_base
        _enqueue(home, "d_forged", forged, base=url)
        worker = HttpWorker(home.queue_path, _pipeline(ran), concurrency=2)
        handled = worker.run(threading.Event(), idle_exit=0.5)
    assert handled == 1 and ran == [live["json"]["attempt_id"]]  # type: ignore[index]
    with SqliteQueue(home.queue_path) as queue:
        assert queue.depth() == 0  # both acked: one finished, one refused (nothing to run)
    stage.compact()
    assert stage.tasks()["a"]["state"] == "SUCCEEDED"


def test_an_unreachable_server_releases_the_lease_for_a_later_retry(home: Home, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("a"))
    _enqueue(home, "d_live", stage.dispatch("run_1", "a", 1))
    ran: list[str] = []
    worker = HttpWorker(home.queue_path, _pipeline(ran), server="http://127.0.0.1:9", concurrency=1)
    assert worker.run(threading.Event(), idle_exit=0.3) == 0
    assert ran == []
    with SqliteQueue(home.queue_path) as queue:
        assert queue.depth() == 1  # still pending: nacked, due again shortly


def test_two_workers_never_both_run_an_attempt_that_outlives_its_lease(home: Home, stage: Stage) -> None:
    """`servo worker` leases for `lease_seconds`; a task running three times as long
    keeps its lease, so a second worker process on the same queue does not run it too."""
    import time

    stage.start_run("run_1", TaskDef("a"))
    live = stage.dispatch("run_1", "a", 1)
    ran: list[str] = []
    pipeline = Pipeline("p")

    @pipeline.task
    def a(ctx: TaskContext) -> None:
        ran.append(ctx.attempt_id)
        time.sleep(1.0)

    with serving(create_app(home, lag_wait_seconds=0.5)) as url:
        _enqueue(home, "d_long", live, base=url)
        first = HttpWorker(home.queue_path, pipeline, concurrency=1, lease_seconds=0.3, poll_seconds=0.02)
        second = HttpWorker(home.queue_path, pipeline, concurrency=1, lease_seconds=0.3, poll_seconds=0.02)
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,), kwargs={"idle_exit": 1.5}) for w in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert ran == [live["json"]["attempt_id"]]  # type: ignore[index]
    with SqliteQueue(home.queue_path) as queue:
        assert queue.depth() == 0
    stage.compact()
    assert stage.tasks()["a"]["state"] == "SUCCEEDED"


def test_the_worker_runs_only_its_own_pipelines_attempts(home: Home, stage: Stage) -> None:
    """A home's queue holds every pipeline's dispatches: a worker of pipeline "p" leaves
    another pipeline's attempt alone (its own target is never leased; an older plain
    "dispatch" row naming the other pipeline is released, not run)."""
    stage.start_run("run_1", TaskDef("a"))
    call = stage.dispatch("run_1", "a", 1)
    ran: list[str] = []
    with serving(create_app(home, lag_wait_seconds=0.5)) as url:
        _enqueue(home, "d_other_target", call, base=url, pipeline="other", target="dispatch/other")
        _enqueue(home, "d_other_old", call, base=url, pipeline="other")
        worker = HttpWorker(home.queue_path, _pipeline(ran), concurrency=2)
        handled = worker.run(threading.Event(), idle_exit=0.5)
    assert handled == 0 and ran == []
    with SqliteQueue(home.queue_path) as queue:
        assert queue.depth() == 2  # both still there for pipeline "other"
    stage.compact()
    assert stage.tasks()["a"]["state"] == "DISPATCHED"
