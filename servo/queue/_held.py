"""Leases of tasks still being worked on, kept alive until the work ends.

A lease ends `lease_seconds` after it was taken; a task that runs longer would be
leased again by someone else (and run twice). Whoever runs leased tasks (the
embedded engine, `servo worker`) holds their leases here and calls `keep` from its
loop: every lease with half of its time gone is extended under the same token, so
the holder's ack still counts. The lease length then only bounds how long a *dead*
holder's task stays taken.
"""

from __future__ import annotations

import threading
from datetime import datetime

from servo.queue._protocol import Lease
from servo.queue._sqlite import SqliteQueue

__all__ = ["HeldLeases"]


class HeldLeases:
    """The leases of running tasks, by task name; thread-safe."""

    def __init__(self, queue: SqliteQueue, lease_seconds: float) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def hold(self, lease: Lease) -> None:
        """Keep this lease alive until `release`."""
        with self._lock:
            self._held[lease.task.name] = lease

    def release(self, name: str) -> None:
        """The task's work ended (acked, nacked or abandoned): stop extending it."""
        with self._lock:
            self._held.pop(name, None)

    def keep(self, now: datetime) -> None:
        """Extend every held lease with half of its time or less left."""
        half = self.lease_seconds / 2
        with self._lock:
            due = [held for held in self._held.values() if (held.expires_at - now).total_seconds() <= half]
        for lease in due:
            kept = self.queue.extend(lease, now, self.lease_seconds)
            name = lease.task.name
            with self._lock:
                if kept is None:  # lost (or acked meanwhile): stop keeping it
                    self._held.pop(name, None)
                elif name in self._held:  # not released meanwhile
                    self._held[name] = kept
