"""The embedded durable queue: one SQLite file, at-least-once delivery at schedule time.

One table holds every task. A row is *pending* until it is acked (``done``) or
deleted (``deleted``); ended rows stay as tombstones for ``name_retention`` so
a re-create of the same name within that window still answers "already there"
(INV-4), as Cloud Tasks does for about an hour on API-created queues.

How delivery works: ``due_at`` is when a pending row may next be leased — its
schedule time at first. ``lease`` moves ``due_at`` to the lease's expiry and
stamps a fresh ``lease_token``, in one ``BEGIN IMMEDIATE`` transaction, so two
workers (threads or processes) never lease the same row at once. ``ack`` ends
the row and ``nack`` sets ``due_at`` to the retry time, both only if the token
still matches. A holder that crashes does nothing, and the row simply becomes
due again when the lease expires: that is the at-least-once guarantee, and it
survives process restarts because the lease is in the file, not in memory.

Durability: WAL journal with ``synchronous=FULL``, so a committed create, ack
or nack survives power loss. Each ``SqliteQueue`` owns one connection guarded
by a lock, so it may be shared by threads; several processes (or several
``SqliteQueue`` objects) on one file serialise their writes through SQLite's
own lock, waiting up to ``busy_timeout`` seconds. Use a local filesystem:
SQLite's WAL does not work over network filesystems.

``SqliteQueue(":memory:")`` is an in-process queue with the same behaviour and
no file, for tests and for users who want no disk.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from os import PathLike, fspath
from pathlib import Path
from typing import Final

from servo.obs import QUEUE_OPERATION_SECONDS, timed
from servo.queue._protocol import Lease, QueuedTask, QueueError, require_aware, validate_task_name

__all__ = ["SqliteQueue"]

_LOG = logging.getLogger("servo.queue")
_DAMAGED_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _damaged(error: QueueError) -> bool:
    """Whether opening failed because the file is not a (sound) SQLite database."""
    cause = error.__cause__
    return isinstance(cause, sqlite3.DatabaseError) and getattr(cause, "sqlite_errorcode", None) in _DAMAGED_CODES

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tasks (
    name        TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    schedule_at INTEGER NOT NULL,           -- µs since the epoch, UTC
    due_at      INTEGER NOT NULL,           -- next time the row may be leased
    attempts    INTEGER NOT NULL DEFAULT 0, -- leases handed out so far
    lease_token TEXT,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done', 'deleted')),
    ended_at    INTEGER                     -- when it stopped being pending
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (due_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (ended_at) WHERE state != 'pending';
"""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PURGE_BATCH: Final = 100  # tombstones dropped per create, so no one call pays for a backlog


_HOST: Final = socket.gethostname().replace("/", "_")


def _holder_died(token: str) -> bool:
    """Whether a lease token names a process of this machine that no longer runs."""
    parts = token.rsplit("/", 2)
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False  # another machine's, or an unnamed holder's: let it run out
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqliteQueue:
    """A ``TaskQueue`` and ``LeasingQueue`` in one SQLite file (see the module docs).

    ``name_retention`` is how long an ended task's name stays reserved.
    ``clock`` stamps creates, acks and deletes (tests inject one); ``lease``
    takes ``now`` explicitly so a worker decides what "due" means.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        name_retention: timedelta = timedelta(hours=1),
        busy_timeout: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
        replace_damaged: bool = False,
    ) -> None:
        """`replace_damaged`: if the file is not a SQLite database (overwritten, or torn
        by a disk fault), rename it `{path}.damaged-{time}` and start an empty queue,
        instead of raising QueueError. For an owner that can re-create what was queued
        (the engine: its anti-entropy re-creates dispatches and timers from the ledger)."""
        if name_retention < timedelta(0) or busy_timeout < 0:
            raise ValueError("name_retention and busy_timeout must not be negative")
        self.path: Final = fspath(path)
        self._retention_us = name_retention // timedelta(microseconds=1)
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        opened = _inode(self.path)
        try:
            # Autocommit mode: every transaction below is an explicit BEGIN.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise QueueError(f"cannot open queue {self.path}: {error}") from error
        try:
            self._setup()
        except QueueError as error:
            self.close()
            if not (replace_damaged and _damaged(error)):
                raise
            if _inode(self.path) == opened:  # not already replaced by another process doing this
                self._set_aside()
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._setup()
        except BaseException:
            self.close()
            raise

    def _set_aside(self) -> None:
        """Rename a damaged queue file (and its WAL files) out of the way."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                Path(self.path + suffix).rename(f"{self.path}.damaged-{stamp}{suffix}")
        _LOG.warning(
            "queue %s is not a SQLite database; kept it as %s.damaged-%s and started an empty queue "
            "(what it held is re-created from the ledger)", self.path, self.path, stamp
        )

    def __repr__(self) -> str:
        return f"SqliteQueue({self.path!r})"

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; idempotent. Pending tasks and leases stay in the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _setup(self) -> None:
        with self._connection() as db:
            # journal_mode cannot change inside a transaction; it persists in the file.
            # Switching a fresh file to WAL while other connections open it can answer
            # "database is locked" at once, without the busy handler: wait and retry.
            deadline = time.monotonic() + self._busy_timeout
            pause = 0.005
            while True:
                try:
                    db.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() >= deadline:
                        raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            db.execute("PRAGMA synchronous = FULL")
            version = self._schema_version(db)
        if version == _SCHEMA_VERSION:
            return  # the usual case: no write lock needed to open a queue
        with self._transaction() as db:
            if self._schema_version(db) < _SCHEMA_VERSION:
                # One statement at a time: executescript would COMMIT our transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _schema_version(self, db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise QueueError(
                f"queue {self.path} has schema version {version}; "
                f"this Servo understands up to {_SCHEMA_VERSION}"
            )
        return version

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively by this thread; sqlite errors become ``QueueError``."""
        with self._lock:
            if self._db is None:
                raise QueueError(f"queue {self.path} is closed")
            try:
                yield self._db
            except sqlite3.Error as error:
                raise QueueError(f"queue {self.path} failed: {error}") from error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so
        two writers never both read a row and then both act on it."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # also after a failed COMMIT: never leave one open
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    # --- TaskQueue ------------------------------------------------------------

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "create"), "queue")
    def create_task(self, name: str, target: str, payload: bytes, schedule_time: datetime) -> bool:
        """See ``TaskQueue.create_task``. A name pending or ended within retention → False."""
        return self._create([(name, target, payload, schedule_time)])[0]

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "create"), "queue")  # a batch is one create
    def create_tasks(self, items: Sequence[tuple[str, str, bytes, datetime]]) -> list[bool]:
        """``create_task`` for each (name, target, payload, schedule_time), in one
        transaction (one commit, one fsync): all are created or none. Per item, whether
        this call created it (a name repeated within `items` is created once)."""
        return self._create(items)

    def _create(self, items: Sequence[tuple[str, str, bytes, datetime]]) -> list[bool]:
        checked = [
            (validate_task_name(name), target, bytes(payload), _micros(require_aware(when)))
            for name, target, payload, when in items
        ]
        if not checked:
            return []
        now = _micros(require_aware(self._clock(), "clock()"))
        created: list[bool] = []
        with self._transaction() as db:
            for name, target, payload, schedule_at in checked:
                row = db.execute("SELECT state, ended_at FROM tasks WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    state, ended_at = row
                    if state == "pending" or ended_at > now - self._retention_us:
                        created.append(False)
                        continue
                    db.execute("DELETE FROM tasks WHERE name = ?", (name,))
                db.execute(
                    "INSERT INTO tasks (name, target, payload, schedule_at, due_at, state)"
                    " VALUES (?, ?, ?, ?, ?, 'pending')",
                    (name, target, payload, schedule_at, schedule_at),
                )
                created.append(True)
            self._purge(db, now, _PURGE_BATCH)
        return created

    def delete_task(self, name: str) -> bool:
        """See ``TaskQueue.delete_task``; the name stays reserved for ``name_retention``."""
        validate_task_name(name)
        now = _micros(require_aware(self._clock(), "clock()"))
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE tasks SET state = 'deleted', ended_at = ?, payload = x'', lease_token = NULL"
                " WHERE name = ? AND state = 'pending'",
                (now, name),
            )
            return cursor.rowcount == 1

    def get_task(self, name: str) -> QueuedTask | None:
        """See ``TaskQueue.get_task``."""
        validate_task_name(name)
        with self._connection() as db:
            row = db.execute(
                "SELECT target, payload, schedule_at, attempts FROM tasks"
                " WHERE name = ? AND state = 'pending'",
                (name,),
            ).fetchone()
        if row is None:
            return None
        target, payload, schedule_at, attempts = row
        return QueuedTask(name, target, bytes(payload), _from_micros(schedule_at), attempts)

    # --- LeasingQueue ---------------------------------------------------------

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "lease"), "queue")
    def lease(
        self,
        now: datetime,
        max_tasks: int = 1,
        lease_seconds: float = 60.0,
        *,
        target: str | Sequence[str] | None = None,
    ) -> list[Lease]:
        """See ``LeasingQueue.lease``: the earliest-due tasks, each under a fresh token.

        ``target`` (one, or any of several) leases only tasks for those targets, so
        processes sharing one queue file can split the work (the engine takes timers,
        ``servo worker`` dispatches; each only its own pipeline's).
        """
        if max_tasks < 1 or lease_seconds <= 0:
            raise ValueError("lease needs max_tasks >= 1 and lease_seconds > 0")
        now_us = _micros(require_aware(now, "now"))
        expires_at = require_aware(now, "now") + timedelta(seconds=lease_seconds)
        expires_us = _micros(expires_at)
        leases: list[Lease] = []
        targets = [] if target is None else [target] if isinstance(target, str) else list(target)
        if target is not None and not targets:
            return leases
        with self._transaction() as db:
            only = "" if target is None else f" AND target IN ({', '.join('?' * len(targets))})"
            rows = db.execute(
                "SELECT name, target, payload, schedule_at, attempts FROM tasks"
                f" WHERE state = 'pending' AND due_at <= ?{only} ORDER BY due_at, name LIMIT ?",
                (now_us, *targets, max_tasks),
            ).fetchall()
            for name, row_target, payload, schedule_at, attempts in rows:
                token = f"{_HOST}/{os.getpid()}/{uuid.uuid4().hex}"  # the holder, then a nonce
                db.execute(
                    "UPDATE tasks SET due_at = ?, attempts = attempts + 1, lease_token = ?"
                    " WHERE name = ?",
                    (expires_us, token, name),
                )
                task = QueuedTask(
                    name, row_target, bytes(payload), _from_micros(schedule_at), attempts + 1
                )
                leases.append(Lease(task, token, expires_at))
        return leases

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "release"), "queue")
    def release_dead_leases(self, now: datetime) -> int:
        """Make the tasks leased by processes of this machine that have died due at
        `now` (their leases end early); return how many. A lease names its holder
        (host and pid): a live holder's, another machine's, or one from before holders
        were named, runs its course."""
        now_us = _micros(require_aware(now, "now"))
        with self._connection() as db:
            held = db.execute(
                "SELECT name, lease_token FROM tasks WHERE state = 'pending' AND lease_token IS NOT NULL AND due_at > ?",
                (now_us,),
            ).fetchall()
        dead = [(name, token) for name, token in held if _holder_died(token)]
        if not dead:
            return 0
        with self._transaction() as db:
            return sum(
                db.execute(
                    "UPDATE tasks SET due_at = ?, lease_token = NULL WHERE name = ? AND lease_token = ? AND state = 'pending'",
                    (now_us, name, token),
                ).rowcount
                for name, token in dead
            )

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "extend"), "queue")
    def extend(self, lease: Lease, now: datetime, lease_seconds: float) -> Lease | None:
        """Keep holding a task still being worked on: its lease now ends `lease_seconds`
        after `now`, under the same token (so the holder's ack still counts). None if
        the lease was lost (it expired and someone leased the task, or it ended)."""
        if lease_seconds <= 0:
            raise ValueError("extend needs lease_seconds > 0")
        expires_at = require_aware(now, "now") + timedelta(seconds=lease_seconds)
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE tasks SET due_at = ? WHERE name = ? AND lease_token = ? AND state = 'pending'",
                (_micros(expires_at), lease.task.name, lease.token),
            )
            if cursor.rowcount != 1:
                return None
        return Lease(lease.task, lease.token, expires_at)

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "ack"), "queue")
    def ack(self, lease: Lease) -> bool:
        """See ``LeasingQueue.ack``. The row becomes a tombstone; its payload is dropped."""
        now = _micros(require_aware(self._clock(), "clock()"))
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE tasks SET state = 'done', ended_at = ?, payload = x'', lease_token = NULL"
                " WHERE name = ? AND lease_token = ? AND state = 'pending'",
                (now, lease.task.name, lease.token),
            )
            return cursor.rowcount == 1

    @timed(QUEUE_OPERATION_SECONDS.labels("sqlite", "nack"), "queue")
    def nack(self, lease: Lease, retry_at: datetime) -> bool:
        """See ``LeasingQueue.nack``."""
        retry_us = _micros(require_aware(retry_at, "retry_at"))
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE tasks SET due_at = ?, lease_token = NULL"
                " WHERE name = ? AND lease_token = ? AND state = 'pending'",
                (retry_us, lease.task.name, lease.token),
            )
            return cursor.rowcount == 1

    def next_due(self) -> datetime | None:
        """See ``LeasingQueue.next_due``."""
        with self._connection() as db:
            (due_at,) = db.execute(
                "SELECT min(due_at) FROM tasks WHERE state = 'pending'"
            ).fetchone()
        return None if due_at is None else _from_micros(due_at)

    def depth(self) -> int:
        """See ``LeasingQueue.depth``."""
        with self._connection() as db:
            (count,) = db.execute("SELECT count(*) FROM tasks WHERE state = 'pending'").fetchone()
        return int(count)

    def depth_by_state(self, now: datetime | None = None) -> dict[str, int]:
        """Pending tasks by state at ``now``: ``ready`` (due, or its lease expired),
        ``leased`` (held under a live lease), ``scheduled`` (due later): the depth gauge."""
        now_us = _micros(require_aware(now if now is not None else self._clock(), "now"))
        with self._connection() as db:
            ready, leased, scheduled = db.execute(
                "SELECT count(*) FILTER (WHERE due_at <= ?),"
                " count(*) FILTER (WHERE due_at > ? AND lease_token IS NOT NULL),"
                " count(*) FILTER (WHERE due_at > ? AND lease_token IS NULL)"
                " FROM tasks WHERE state = 'pending'",
                (now_us, now_us, now_us),
            ).fetchone()
        return {"ready": int(ready), "leased": int(leased), "scheduled": int(scheduled)}

    # --- housekeeping ---------------------------------------------------------

    def purge(self) -> int:
        """Drop every tombstone older than ``name_retention``; return how many.

        ``create_task`` already drops a few per call, so this is only needed to
        reclaim space on a queue that has stopped receiving creates.
        """
        now = _micros(require_aware(self._clock(), "clock()"))
        with self._transaction() as db:
            return self._purge(db, now, None)

    def _purge(self, db: sqlite3.Connection, now: int, limit: int | None) -> int:
        cursor = db.execute(
            "DELETE FROM tasks WHERE name IN (SELECT name FROM tasks"
            " WHERE state != 'pending' AND ended_at <= ? LIMIT ?)",
            (now - self._retention_us, -1 if limit is None else limit),
        )
        return cursor.rowcount
