"""QueueWorker and Backoff: the push half of the embedded queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from queue_fixtures import wait_until

from servo.queue import Backoff, QueuedTask, QueueWorker, SqliteQueue

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


def test_backoff_doubles_then_grows_linearly_then_caps_like_cloud_tasks() -> None:
    # The example from the Cloud Tasks RetryConfig docs: 10 s, 300 s, 3 doublings.
    backoff = Backoff(min_seconds=10, max_seconds=300, max_doublings=3)
    assert [backoff.delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


@pytest.mark.parametrize(
    "kwargs", [{"min_seconds": -1}, {"min_seconds": 2, "max_seconds": 1}, {"max_doublings": -1}]
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_run_once_acks_successes_and_nacks_failures_after_backoff() -> None:
    clock = Clock()
    handled: list[tuple[str, int]] = []

    def handler(task: QueuedTask) -> None:
        handled.append((task.name, task.dispatch_count))
        if task.name == "t_bad" and task.dispatch_count < 3:
            raise RuntimeError("not yet")

    with SqliteQueue(":memory:", clock=clock) as queue:
        queue.create_task("t_good", "target", b"", T0)
        queue.create_task("t_bad", "target", b"", T0)
        worker = QueueWorker(
            queue, handler, backoff=Backoff(min_seconds=1, max_seconds=60), clock=clock
        )
        assert worker.run_once() == 2
        assert queue.get_task("t_good") is None
        assert queue.next_due() == T0 + timedelta(seconds=1)
        clock.at = T0 + timedelta(seconds=1)
        assert worker.run_once() == 1
        assert queue.next_due() == T0 + timedelta(seconds=3)  # 2 s after the 2nd failure
        clock.at = T0 + timedelta(seconds=3)
        assert worker.run_once() == 1
        assert worker.run_once() == 0
        assert queue.depth() == 0
    assert handled == [("t_bad", 1), ("t_good", 1), ("t_bad", 2), ("t_bad", 3)]


def test_a_handler_failure_is_logged_with_the_task_name_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(task: QueuedTask) -> None:
        raise ValueError("boom")

    with SqliteQueue(":memory:") as queue:
        queue.create_task("t_log", "target", b"", datetime.now(UTC))
        with caplog.at_level(logging.WARNING, logger="servo.queue"):
            QueueWorker(queue, handler).run_once()
    (record,) = caplog.records
    assert "t_log" in record.getMessage() and "boom" in record.getMessage()
    assert (record.__dict__["task_name"], record.__dict__["attempt"]) == ("t_log", 1)


def test_background_worker_delivers_and_stops_cleanly() -> None:
    seen: list[bytes] = []
    with SqliteQueue(":memory:") as queue:
        with QueueWorker(queue, lambda task: seen.append(task.payload), poll_interval=0.01):
            queue.create_task("t_bg", "target", b"hello", datetime.now(UTC))
            wait_until(lambda: seen == [b"hello"])
        assert queue.depth() == 0


def test_a_worker_cannot_be_started_twice() -> None:
    with SqliteQueue(":memory:") as queue:
        worker = QueueWorker(queue, lambda task: None, poll_interval=0.01)
        with worker, pytest.raises(RuntimeError, match="already started"):
            worker.start()


def test_a_worker_survives_its_queue_failing(caplog: pytest.LogCaptureFixture) -> None:
    queue = SqliteQueue(":memory:")
    worker = QueueWorker(queue, lambda task: None, poll_interval=0.01)
    queue.close()
    with caplog.at_level(logging.ERROR, logger="servo.queue"), worker:
        wait_until(lambda: len(caplog.records) >= 2)  # it logged, waited, and tried again
    assert all("cannot reach its queue" in r.getMessage() for r in caplog.records)
