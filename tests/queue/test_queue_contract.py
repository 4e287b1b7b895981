"""One contract, two backends: the embedded SQLite queue and Cloud Tasks (the
official REST client against the local server).

Every test here runs against every backend through the ``harness`` fixture.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from queue_fixtures import Harness, wait_until

from servo._errors import InvalidId
from servo.core.ids import dispatch_cloud_task_id, dispatch_id
from servo.queue import QueuedTask

LATER = timedelta(hours=1)  # far enough that nothing is delivered during the test


def now() -> datetime:
    return datetime.now(UTC)


def test_create_twice_makes_one_task_and_the_second_create_returns_false(
    harness: Harness,
) -> None:
    when = now() + LATER
    assert harness.queue.create_task("t_once", harness.target, b"first", when) is True
    assert harness.queue.create_task("t_once", harness.target, b"second", when) is False
    task = harness.queue.get_task("t_once")
    assert task is not None
    assert task.payload == b"first"


def test_duplicate_outbox_no_duplicate_cloud_task(harness: Harness) -> None:
    """Two dispatcher replicas enqueue the same outbox row: one queue task, both succeed (INV-4)."""
    name = dispatch_cloud_task_id(dispatch_id("run_abc", "extract", 1))
    replica = harness.replica()
    when = now() + LATER
    results = [
        harness.queue.create_task(name, harness.target, b'{"attempt": 1}', when),
        replica.create_task(name, harness.target, b'{"attempt": 1}', when),
    ]
    assert sorted(results) == [False, True]
    for queue in (harness.queue, replica):
        task = queue.get_task(name)
        assert task is not None
        assert task.payload == b'{"attempt": 1}'


def test_get_task_returns_what_was_created(harness: Harness) -> None:
    when = datetime(2100, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    payload = bytes(range(256))
    harness.queue.create_task("t_read", harness.target, payload, when)
    assert harness.queue.get_task("t_read") == QueuedTask(
        "t_read", harness.target, payload, when, dispatch_count=0
    )


def test_schedule_time_in_another_timezone_means_the_same_instant(harness: Harness) -> None:
    local = datetime(2100, 1, 2, 5, 4, 5, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    harness.queue.create_task("t_tz", harness.target, b"", local)
    task = harness.queue.get_task("t_tz")
    assert task is not None
    assert task.schedule_time == local
    assert task.schedule_time.tzinfo == UTC


def test_get_and_delete_of_an_unknown_name_are_none_and_false(harness: Harness) -> None:
    assert harness.queue.get_task("t_missing") is None
    assert harness.queue.delete_task("t_missing") is False


def test_delete_removes_the_task_and_keeps_its_name_reserved(harness: Harness) -> None:
    harness.queue.create_task("t_gone", harness.target, b"x", now() + LATER)
    assert harness.queue.delete_task("t_gone") is True
    assert harness.queue.get_task("t_gone") is None
    assert harness.queue.delete_task("t_gone") is False
    assert harness.queue.create_task("t_gone", harness.target, b"y", now() + LATER) is False
    assert harness.queue.get_task("t_gone") is None


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a:b", "a b", "caf\u00e9", "x" * 501, "tasks/../x", "t\n"],
    ids=["empty", "slash", "colon", "space", "non-ascii", "too-long", "dots", "newline"],
)
def test_malformed_names_are_rejected_with_invalid_id(harness: Harness, name: str) -> None:
    with pytest.raises(InvalidId, match="task name"):
        harness.queue.create_task(name, harness.target, b"", now())
    with pytest.raises(InvalidId):
        harness.queue.get_task(name)
    with pytest.raises(InvalidId):
        harness.queue.delete_task(name)


def test_longest_allowed_name_is_accepted(harness: Harness) -> None:
    name = "N" * 500
    assert harness.queue.create_task(name, harness.target, b"", now() + LATER) is True
    assert harness.queue.get_task(name) is not None


def test_naive_schedule_time_is_refused(harness: Harness) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        harness.queue.create_task("t_naive", harness.target, b"", datetime(2100, 1, 1))


def test_task_is_delivered_at_its_schedule_time_and_not_before(harness: Harness) -> None:
    scheduled = now() + timedelta(seconds=0.4)
    harness.queue.create_task("t_timed", harness.target, b"on time", scheduled)
    early = now() + timedelta(seconds=0.25)
    wait_until(lambda: now() >= early)
    seen_early = harness.attempts()
    if now() < scheduled:  # (a slow machine may have slept past it; then skip this probe)
        assert seen_early == []
    wait_until(lambda: len(harness.attempts()) == 1)
    (attempt,) = harness.attempts()
    assert (attempt.name, attempt.payload, attempt.ok) == ("t_timed", b"on time", True)
    assert attempt.at >= scheduled
    wait_until(lambda: harness.queue.get_task("t_timed") is None)


def test_failed_delivery_is_redelivered_until_it_succeeds(harness: Harness) -> None:
    harness.fail_next_deliveries(2)
    harness.queue.create_task("t_retry", harness.target, b"again", now())
    wait_until(lambda: any(a.ok for a in harness.attempts()))
    wait_until(lambda: harness.queue.get_task("t_retry") is None)
    attempts = harness.attempts()
    assert [a.ok for a in attempts] == [False, False, True]
    assert {(a.name, a.payload) for a in attempts} == {("t_retry", b"again")}
    assert attempts[0].at < attempts[1].at < attempts[2].at


def test_a_delivered_name_stays_reserved(harness: Harness) -> None:
    harness.queue.create_task("t_done", harness.target, b"1", now())
    wait_until(lambda: harness.queue.get_task("t_done") is None)
    assert harness.queue.create_task("t_done", harness.target, b"2", now()) is False
    assert [a.payload for a in harness.attempts()] == [b"1"]


def test_pending_task_reports_failed_deliveries_in_dispatch_count(harness: Harness) -> None:
    harness.fail_next_deliveries(1000)  # keeps failing until the test ends
    harness.queue.create_task("t_count", harness.target, b"", now())
    wait_until(lambda: len(harness.attempts()) >= 2)
    task = harness.queue.get_task("t_count")
    assert task is not None
    assert task.dispatch_count >= 2
    assert harness.queue.delete_task("t_count") is True


def test_concurrent_creates_of_one_name_from_threads_create_exactly_one(harness: Harness) -> None:
    count = 8
    queues = [harness.queue] + [harness.replica() for _ in range(count - 1)]
    barrier = threading.Barrier(count)
    when = now() + LATER

    def create(i: int) -> bool:
        barrier.wait()
        return queues[i].create_task("t_race", harness.target, f"{i}".encode(), when)

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(create, range(count)))
    assert results.count(True) == 1
    task = harness.queue.get_task("t_race")
    assert task is not None
    assert task.payload == str(results.index(True)).encode()


def test_concurrent_creates_of_distinct_names_all_succeed(harness: Harness) -> None:
    when = now() + LATER
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(
                lambda i: harness.queue.create_task(f"t_many_{i}", harness.target, b"", when),
                range(40),
            )
        )
    assert all(results)
    assert all(harness.queue.get_task(f"t_many_{i}") is not None for i in range(40))
