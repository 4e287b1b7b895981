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
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["AppendGate"]


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
