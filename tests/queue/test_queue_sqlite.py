"""The embedded SQLite queue beyond the shared contract: leases, crashes, restarts,
processes, retention and durability settings."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from servo._errors import InvalidId
from servo.queue import Lease, QueuedTask, QueueError, SqliteQueue, create_all

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SOME_LEASE = Lease(QueuedTask("t_some", "target", b"", T0), "token", T0)


class Clock:
    """A settable clock for the queue's own timestamps."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_created_task_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        assert queue.create_task("t_kept", "target", b"payload", T0)
    with SqliteQueue(path) as reopened:
        task = reopened.get_task("t_kept")
        assert task is not None
        assert (task.target, task.payload, task.schedule_time) == ("target", b"payload", T0)
        assert reopened.create_task("t_kept", "target", b"payload", T0) is False
        assert reopened.depth() == 1


def test_lease_without_ack_is_redelivered_after_the_lease_expires_across_a_restart(
    tmp_path: Path,
) -> None:
    """A crash between lease and ack loses nothing: reopen, and after the lease the task is back."""
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        queue.create_task("t_crash", "target", b"work", T0)
        (lease,) = queue.lease(T0, lease_seconds=30)
        assert lease.task.dispatch_count == 1
        # "crash": close without ack or nack
    with SqliteQueue(path) as reopened:
        assert reopened.lease(T0 + timedelta(seconds=29)) == []
        (again,) = reopened.lease(T0 + timedelta(seconds=30))
        assert again.task.name == "t_crash"
        assert again.task.payload == b"work"
        assert again.task.dispatch_count == 2
        assert again.token != lease.token
        assert reopened.ack(again) is True
        assert reopened.depth() == 0


def _die_holding_a_lease(path: Path) -> None:
    """Lease one task (at T0, for 60 s) in another process that then dies: no ack, no close."""
    code = (
        "import os, sys\n"
        "from datetime import datetime, UTC\n"
        "from servo.queue import SqliteQueue\n"
        "queue = SqliteQueue(sys.argv[1])\n"
        "leases = queue.lease(datetime(2030, 1, 1, tzinfo=UTC), lease_seconds=60)\n"
        "print(len(leases), flush=True)\n"
        "os._exit(9)\n"
    )
    result = run_python(code, str(path))
    assert (result.returncode, result.stdout.strip()) == (9, "1"), result.stderr


def test_a_process_killed_between_lease_and_ack_has_its_task_redelivered(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        queue.create_task("t_killed", "target", b"work", T0)
    _die_holding_a_lease(path)
    with SqliteQueue(path) as queue:
        assert queue.lease(T0 + timedelta(seconds=59)) == []
        (lease,) = queue.lease(T0 + timedelta(seconds=60))
        assert (lease.task.name, lease.task.dispatch_count) == ("t_killed", 2)


def test_leases_of_a_dead_process_on_this_host_are_freed_at_once(tmp_path: Path) -> None:
    """`release_dead_leases` (run by an engine as it starts, then every few seconds)
    frees the leases a process on this machine held when it died, instead of leaving
    its tasks until their leases run out (an attempt with a short heartbeat timeout
    would time out meanwhile); a live holder's leases stay."""
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        queue.create_task("t_dead", "target", b"work", T0)
        queue.create_task("t_live", "target", b"work", T0)
    _die_holding_a_lease(path)
    with SqliteQueue(path) as queue:
        (mine,) = queue.lease(T0, lease_seconds=60)  # held by this live process
        assert mine.task.name == "t_live"
        assert queue.lease(T0 + timedelta(seconds=1)) == []
        assert queue.release_dead_leases(T0 + timedelta(seconds=1)) == 1
        (again,) = queue.lease(T0 + timedelta(seconds=1))
        assert (again.task.name, again.task.dispatch_count) == ("t_dead", 2)
        assert queue.release_dead_leases(T0 + timedelta(seconds=1)) == 0  # both holders alive
        assert queue.ack(mine) is True and queue.ack(again) is True


def test_concurrent_creates_of_one_name_from_processes_create_exactly_one(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SqliteQueue(path).close()  # create the schema once, as a deployment would
    code = (
        "import sys\n"
        "from datetime import datetime, UTC\n"
        "from servo.queue import SqliteQueue\n"
        "queue = SqliteQueue(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()  # the starting gun\n"
        "print(queue.create_task('t_proc_race', 'target', sys.argv[2].encode(),"
        " datetime(2030, 1, 1, tzinfo=UTC)), flush=True)\n"
        "queue.close()\n"
    )
    count = 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", code, str(path), str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert [p.returncode for p in processes] == [0] * count, [err for _, err in outputs]
    results = [out.strip() for out, _ in outputs]
    assert sorted(results) == ["False"] * (count - 1) + ["True"]
    with SqliteQueue(path) as queue:
        task = queue.get_task("t_proc_race")
        assert task is not None
        assert task.payload == str(results.index("True")).encode()
        assert queue.depth() == 1


def test_threads_leasing_together_never_get_the_same_task(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        for i in range(60):
            queue.create_task(f"t_{i:02d}", "target", b"", T0)
    queues = [SqliteQueue(path) for _ in range(6)]
    barrier = threading.Barrier(len(queues))

    def drain(queue: SqliteQueue) -> list[str]:
        barrier.wait()
        names: list[str] = []
        while leases := queue.lease(T0, max_tasks=3):
            names += [lease.task.name for lease in leases]
        return names

    try:
        with ThreadPoolExecutor(max_workers=len(queues)) as pool:
            leased = [name for names in pool.map(drain, queues) for name in names]
    finally:
        for queue in queues:
            queue.close()
    assert sorted(leased) == [f"t_{i:02d}" for i in range(60)]


def test_lease_hands_out_due_tasks_earliest_first_up_to_max_tasks(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.create_task("t_late", "target", b"", T0 + timedelta(seconds=2))
        queue.create_task("t_early", "target", b"", T0 + timedelta(seconds=1))
        queue.create_task("t_future", "target", b"", T0 + timedelta(hours=1))
        assert queue.lease(T0) == []
        assert queue.next_due() == T0 + timedelta(seconds=1)
        leases = queue.lease(T0 + timedelta(seconds=5), max_tasks=10)
        assert [lease.task.name for lease in leases] == ["t_early", "t_late"]
        assert all(lease.expires_at == T0 + timedelta(seconds=65) for lease in leases)
        assert queue.depth() == 3  # leased tasks are still pending


def test_nack_makes_the_task_due_again_at_retry_time(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.create_task("t_nack", "target", b"", T0)
        (lease,) = queue.lease(T0)
        assert queue.nack(lease, T0 + timedelta(seconds=3)) is True
        assert queue.next_due() == T0 + timedelta(seconds=3)
        assert queue.lease(T0 + timedelta(seconds=2)) == []
        (again,) = queue.lease(T0 + timedelta(seconds=3))
        assert again.task.dispatch_count == 2
        assert queue.nack(lease, T0) is False  # the old delivery is no longer current


def test_ack_with_a_superseded_lease_is_refused(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.create_task("t_slow", "target", b"", T0)
        (first,) = queue.lease(T0, lease_seconds=1)
        (second,) = queue.lease(T0 + timedelta(seconds=1), lease_seconds=60)
        assert queue.ack(first) is False
        assert queue.get_task("t_slow") is not None
        assert queue.ack(second) is True
        assert queue.ack(second) is False
        assert queue.get_task("t_slow") is None


def test_ack_after_expiry_still_counts_when_nobody_took_the_task_over(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.create_task("t_late_ack", "target", b"", T0)
        (lease,) = queue.lease(T0, lease_seconds=1)
        assert queue.ack(lease) is True
        assert queue.lease(T0 + timedelta(hours=1)) == []


def test_deleted_task_cannot_be_acked(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.create_task("t_del", "target", b"", T0)
        (lease,) = queue.lease(T0)
        assert queue.delete_task("t_del") is True
        assert queue.ack(lease) is False
        assert queue.depth() == 0


def test_an_ended_name_is_reserved_for_the_retention_window_then_free(tmp_path: Path) -> None:
    clock = Clock()
    with SqliteQueue(tmp_path / "q.db", name_retention=timedelta(hours=1), clock=clock) as queue:
        queue.create_task("t_reuse", "target", b"1", T0)
        (lease,) = queue.lease(T0)
        queue.ack(lease)
        clock.at = T0 + timedelta(minutes=59, seconds=59)
        assert queue.create_task("t_reuse", "target", b"2", T0) is False
        clock.at = T0 + timedelta(hours=1)
        assert queue.create_task("t_reuse", "target", b"3", T0) is True
        task = queue.get_task("t_reuse")
        assert task is not None
        assert (task.payload, task.dispatch_count) == (b"3", 0)


def test_purge_drops_only_tombstones_past_retention(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "q.db"
    with SqliteQueue(path, name_retention=timedelta(minutes=10), clock=clock) as queue:
        for name in ("t_a", "t_b", "t_pending"):
            queue.create_task(name, "target", b"x" * 1000, T0)
        queue.delete_task("t_a")
        clock.at = T0 + timedelta(minutes=5)
        queue.delete_task("t_b")
        clock.at = T0 + timedelta(minutes=12)
        assert queue.purge() == 1
        assert queue.purge() == 0
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, state, length(payload) FROM tasks ORDER BY name").fetchall()
    db.close()
    assert rows == [("t_b", "deleted", 0), ("t_pending", "pending", 1000)]


def test_the_file_uses_wal_journal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SqliteQueue(path) as queue:
        queue.create_task("t_wal", "target", b"", T0)
        with sqlite3.connect(path) as db:
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
        db.close()
        assert mode == "wal"
        with queue._connection() as own:  # synchronous is per connection
            assert own.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_memory_queue_needs_no_file(tmp_path: Path) -> None:
    with SqliteQueue(":memory:") as queue:
        assert queue.create_task("t_mem", "target", b"", T0) is True
        assert queue.create_task("t_mem", "target", b"", T0) is False
        assert [lease.task.name for lease in queue.lease(T0)] == ["t_mem"]
    assert list(tmp_path.iterdir()) == []


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SqliteQueue(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(QueueError, match="schema version 99"):
        SqliteQueue(path)


def test_a_closed_queue_raises_queue_error(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "q.db")
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(QueueError, match="closed"):
        queue.create_task("t_x", "target", b"", T0)


def test_a_locked_database_surfaces_as_queue_error(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SqliteQueue(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with (
            SqliteQueue(path, busy_timeout=0.05) as queue,
            pytest.raises(QueueError, match="locked"),
        ):
            queue.create_task("t_blocked", "target", b"", T0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.lease(T0, max_tasks=0),
        lambda q: q.lease(T0, lease_seconds=0),
        lambda q: q.lease(datetime(2030, 1, 1)),
        lambda q: q.nack(SOME_LEASE, datetime(2030, 1, 1)),
    ],
    ids=["max_tasks", "lease_seconds", "naive-now", "naive-retry"],
)
def test_bad_lease_arguments_raise_value_error(
    tmp_path: Path, call: Callable[[SqliteQueue], object]
) -> None:
    with SqliteQueue(tmp_path / "q.db") as queue, pytest.raises(ValueError):
        call(queue)


def test_create_tasks_makes_a_batch_in_one_transaction_with_name_dedup(tmp_path: Path) -> None:
    """One commit for many creates; an existing name (or one repeated in the batch) is
    False, as with create_task, and everything else is created."""
    path = tmp_path / "queue.db"
    with SqliteQueue(path) as queue:
        assert queue.create_task("t_old", "target", b"old", T0)
        created = queue.create_tasks(
            [
                ("t_a", "target", b"a", T0),
                ("t_old", "target", b"new bytes", T0),
                ("t_b", "other", b"b", T0 + timedelta(seconds=5)),
                ("t_a", "target", b"a again", T0),
            ]
        )
        assert created == [True, False, True, False]
        assert queue.create_tasks([]) == []
    with SqliteQueue(path) as reopened:
        assert reopened.depth() == 3
        old, b = reopened.get_task("t_old"), reopened.get_task("t_b")
        assert old is not None and old.payload == b"old"
        assert b is not None and (b.target, b.schedule_time) == ("other", T0 + timedelta(seconds=5))


def test_create_tasks_with_a_bad_item_creates_nothing(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "queue.db") as queue:
        with pytest.raises(InvalidId):
            queue.create_tasks([("t_fine", "target", b"", T0), ("bad/name", "target", b"", T0)])
        assert queue.depth() == 0


def test_create_all_calls_after_each_item_once_created(tmp_path: Path) -> None:
    """Batched (SQLite) or one call each (any other queue), `after(i)` runs once item i
    exists, and the answers match create_task's."""

    class OneCallEach(SqliteQueue):
        create_tasks = None  # type: ignore[assignment]

    seen: list[tuple[int, bool]] = []

    def check(queue: SqliteQueue) -> Callable[[int], None]:
        return lambda i: seen.append((i, queue.get_task(f"t_{i}") is not None))

    for queue in (SqliteQueue(tmp_path / "a.db"), OneCallEach(tmp_path / "b.db")):
        with queue:
            queue.create_task("t_0", "target", b"", T0)
            assert create_all(queue, [(f"t_{i}", "target", b"", T0) for i in range(3)], check(queue)) == [
                False,
                True,
                True,
            ]
            assert seen == [(0, True), (1, True), (2, True)]
            seen.clear()


def test_extend_keeps_a_lease_past_its_expiry_for_its_holder_only(tmp_path: Path) -> None:
    """A worker still running a task extends its lease: nobody else can lease the task
    meanwhile, its ack still counts, and a lease that was lost cannot be extended."""
    with SqliteQueue(tmp_path / "queue.db") as queue:
        queue.create_task("t_long", "target", b"", T0)
        (lease,) = queue.lease(T0, lease_seconds=10)
        kept = queue.extend(lease, T0 + timedelta(seconds=8), lease_seconds=10)
        assert kept is not None and kept.token == lease.token
        assert kept.expires_at == T0 + timedelta(seconds=18)
        assert queue.lease(T0 + timedelta(seconds=15), lease_seconds=10) == []  # still held
        assert queue.ack(lease)  # the same token acks
        queue.create_task("t_lost", "target", b"", T0)
        (first,) = queue.lease(T0, lease_seconds=1)
        (second,) = queue.lease(T0 + timedelta(seconds=2), lease_seconds=1)  # it expired and moved on
        assert second.token != first.token
        assert queue.extend(first, T0 + timedelta(seconds=2), lease_seconds=10) is None
        with pytest.raises(ValueError):
            queue.extend(second, T0, lease_seconds=0)


def test_held_leases_are_extended_until_released(tmp_path: Path) -> None:
    """HeldLeases extends a held lease once half of it is gone, not before, under the
    same token, and stops once the task is released or its lease was lost."""
    from servo.queue import HeldLeases

    path = tmp_path / "queue.db"

    def lease_ends(name: str) -> datetime:
        with sqlite3.connect(path) as db:
            (due,) = db.execute("SELECT due_at FROM tasks WHERE name = ?", (name,)).fetchone()
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=due)

    with SqliteQueue(path) as queue:
        queue.create_task("t_run", "target", b"", T0)
        queue.create_task("t_gone", "target", b"", T0)
        gone, run = sorted(queue.lease(T0, max_tasks=2, lease_seconds=10), key=lambda lease: lease.task.name)
        held = HeldLeases(queue, lease_seconds=10)
        held.hold(run)
        held.hold(gone)
        held.release("t_gone")
        held.keep(T0 + timedelta(seconds=4))  # 6 s of 10 left: nothing to do yet
        assert lease_ends("t_run") == T0 + timedelta(seconds=10)
        held.keep(T0 + timedelta(seconds=6))  # 4 s left: extended
        assert lease_ends("t_run") == T0 + timedelta(seconds=16)
        assert lease_ends("t_gone") == T0 + timedelta(seconds=10)  # released: left alone
        held.keep(T0 + timedelta(seconds=12))
        assert lease_ends("t_run") == T0 + timedelta(seconds=22)
        assert [lease.task.name for lease in queue.lease(T0 + timedelta(seconds=20), max_tasks=2)] == ["t_gone"]
        assert queue.ack(run)  # the first token still acks
        held.keep(T0 + timedelta(seconds=19))  # acked: the extend fails and the lease is let go
        assert queue.depth() == 1


def test_many_connections_opening_a_fresh_queue_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `servo run` starting together on a new home open one fresh queue file at
    once. Switching a new file to WAL can answer "database is locked" without waiting
    for the busy timeout; opening must wait and retry, not fail."""
    for round_ in range(25):
        path = tmp_path / f"q{round_}.db"
        barrier = threading.Barrier(6)

        def open_and_create(i: int, path: Path = path, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            with SqliteQueue(path) as queue:
                return queue.create_task(f"t_{i}", "target", b"", T0)

        with ThreadPoolExecutor(max_workers=6) as pool:
            assert list(pool.map(open_and_create, range(6))) == [True] * 6


def test_a_file_that_is_not_a_queue_is_a_clear_error_or_set_aside_when_asked(tmp_path: Path) -> None:
    """A queue file that is not a SQLite database (overwritten, truncated by a disk fault)
    is a QueueError naming it; an owner that can rebuild the queue (the engine, from
    the ledger) asks for it to be set aside and gets a new, empty queue."""
    path = tmp_path / "queue.db"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(QueueError, match="not a database"):
        SqliteQueue(path)
    assert path.read_bytes() == b"garbage" * 100
    with SqliteQueue(path, replace_damaged=True) as queue:
        assert queue.create_task("t", "x", b"p", T0)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("queue.db.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == b"garbage" * 100
