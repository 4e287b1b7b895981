"""The append gate: worker facts never straddle a compaction's cut.

A worker fact's event id is a ULID of the moment it is made, but the append that
makes it durable (and notifies the compactor) ends a few fsyncs later. Two workers
appending at once can land out of order; if a compaction cuts between them, the
earlier event arrives after a later one was folded, and the fold must refold the
whole run from its history (O(run) per late event: quadratic on a 10,000-task run).

The gate lets any number of appends run together (each takes its clock reading
inside the gate) and makes a compaction wait for the ones in flight, holding new
ones back meanwhile, so every event stamped before a cut is notified before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

__all__ = ["AppendGate", "GroupCommit"]

T = TypeVar("T")


class AppendGate:
    """Shared for appends (stamp + write + notify), exclusive for a compaction's cut."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._cutting = False

    @contextmanager
    def append(self) -> Iterator[None]:
        """Hold while taking an event's timestamp and appending it."""
        with self._cond:
            while self._cutting:
                self._cond.wait()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                if not self._in_flight:
                    self._cond.notify_all()

    @contextmanager
    def cut(self) -> Iterator[None]:
        """Hold while compacting: no append is in flight or starts meanwhile."""
        with self._cond:
            self._cutting = True
            while self._in_flight:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._cutting = False
                self._cond.notify_all()


class _Batch(Generic[T]):
    __slots__ = ("done", "error", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Group commit: callers that arrive while a commit is under way are committed
    together by the next one, so concurrent worker threads share one round of
    fsyncs instead of queueing for one each.

    A caller alone commits its item at once (no added latency); `submit` returns only
    once the caller's own item is committed, and raises what its batch's commit
    raised. The first caller of a pending batch to find no commit under way commits
    it (leader/followers: no thread of its own).
    """

    def __init__(self, commit: Callable[[list[T]], None]) -> None:
        self._commit = commit
        self._cond = threading.Condition()
        self._pending: _Batch[T] = _Batch()
        self._busy = False

    def submit(self, item: T) -> None:
        """Commit `item`, with whatever else is pending; return once it is committed."""
        with self._cond:
            batch = self._pending
            batch.items.append(item)
            while self._busy and not batch.done:
                self._cond.wait()
            if batch.done:  # another caller committed it
                if batch.error is not None:
                    raise batch.error
                return
            self._busy = True  # lead: later callers wait for the next batch
            self._pending = _Batch()
        try:
            self._commit(batch.items)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            with self._cond:
                batch.done = True
                self._busy = False
                self._cond.notify_all()
