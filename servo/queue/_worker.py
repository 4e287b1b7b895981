"""Deliver an embedded queue's due tasks to a handler: ack on success, nack on failure.

``QueueWorker`` is the push half that Cloud Tasks provides as a service and the
embedded queue does not: it leases due tasks, calls ``handler(task)`` for each,
acks when the handler returns and nacks with ``Backoff`` when it raises. A
worker that dies mid-task loses nothing: the lease expires and the task is
delivered again (at least once), so handlers must be idempotent — Servo's are,
through attempt ids.

Run it in the background (``start``/``stop``, or as a context manager), or
drive it step by step with ``run_once`` (tests, single-threaded tools).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from servo.queue._protocol import LeasingQueue, QueuedTask, QueueError

__all__ = ["Backoff", "QueueWorker"]

_log: Final = logging.getLogger("servo.queue")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays the Cloud Tasks way: double from ``min_seconds`` ``max_doublings``
    times, then grow linearly, never past ``max_seconds``. No jitter: deterministic."""

    min_seconds: float = 0.1
    max_seconds: float = 3600.0
    max_doublings: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.min_seconds <= self.max_seconds or self.max_doublings < 0:
            raise ValueError("Backoff needs 0 <= min_seconds <= max_seconds and max_doublings >= 0")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1 → ``min_seconds``)."""
        retries = max(failed_attempts - 1, 0)
        doublings = min(retries, self.max_doublings)
        delay = self.min_seconds * 2.0**doublings
        delay += self.min_seconds * 2.0**self.max_doublings * (retries - doublings)
        return min(delay, self.max_seconds)


class QueueWorker:
    """Pulls due tasks from ``queue`` and hands each to ``handler`` (see the module docs).

    ``lease_seconds`` must cover handling a whole batch of ``batch_size``
    tasks, or some are delivered twice. Between empty polls the worker sleeps
    ``poll_interval`` seconds, or less if a task falls due sooner.
    """

    def __init__(
        self,
        queue: LeasingQueue,
        handler: Callable[[QueuedTask], None],
        *,
        backoff: Backoff = Backoff(),
        lease_seconds: float = 60.0,
        batch_size: int = 10,
        poll_interval: float = 0.5,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if lease_seconds <= 0 or batch_size < 1 or poll_interval <= 0:
            raise ValueError(
                "QueueWorker needs lease_seconds > 0, batch_size >= 1, poll_interval > 0"
            )
        self._queue = queue
        self._handler = handler
        self._backoff = backoff
        self._lease_seconds = lease_seconds
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Lease one batch of due tasks and handle them; return how many were handled."""
        leases = self._queue.lease(self._clock(), self._batch_size, self._lease_seconds)
        for lease in leases:
            task = lease.task
            try:
                self._handler(task)
            except Exception as error:
                delay = self._backoff.delay(task.dispatch_count)
                _log.warning(
                    "queue task %s failed (attempt %d), retrying in %.3fs: %r",
                    task.name,
                    task.dispatch_count,
                    delay,
                    error,
                    extra={"task_name": task.name, "attempt": task.dispatch_count},
                )
                self._queue.nack(lease, self._clock() + timedelta(seconds=delay))
            else:
                if not self._queue.ack(lease):
                    # The lease expired and someone else holds the task now: it
                    # will be delivered again. Harmless for idempotent handlers.
                    _log.warning(
                        "queue task %s finished after its lease was superseded",
                        task.name,
                        extra={"task_name": task.name, "attempt": task.dispatch_count},
                    )
        return len(leases)

    def _idle_seconds(self) -> float:
        next_due = self._queue.next_due()
        if next_due is None:
            return self._poll_interval
        until_due = (next_due - self._clock()).total_seconds()
        return min(self._poll_interval, max(until_due, 0.0))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once():
                    continue
                wait = self._idle_seconds()
            except QueueError as error:
                _log.error("queue worker cannot reach its queue: %s", error)
                wait = self._poll_interval
            self._stop.wait(wait)

    def start(self) -> None:
        """Start delivering in a background (daemon) thread."""
        if self._thread is not None:
            raise RuntimeError("QueueWorker already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="servo-queue-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current batch; wait up to ``timeout`` seconds for it to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> QueueWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
