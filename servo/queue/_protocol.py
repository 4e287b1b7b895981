"""The task-queue seam: three operations every backend implements.

Servo hands side effects (dispatch a task to a worker, fire a timer) to a
queue. The protocol is small so that the embedded SQLite queue and Google
Cloud Tasks behave alike, and one contract suite can prove it:

* ``create_task`` is idempotent by name (INV-4): a name that already exists —
  pending, or ended within the backend's retention window — is *success*
  (``False``: "already there"), never an error. Correctness still comes from
  the outbox and attempt ids, not from queue dedup: Cloud Tasks forgets an
  ended task's name after about an hour.
* ``delete_task`` removes a pending task; ``get_task`` reads one.

Names are API-safe ids (``^[A-Za-z0-9_-]{1,500}$``, the Cloud Tasks task-id
charset); Servo derives them with ``servo.core.ids.dispatch_cloud_task_id`` and
``timer_cloud_task_id``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from servo._errors import InvalidId, ServoError

__all__ = [
    "MAX_TASK_NAME_LENGTH",
    "Lease",
    "LeasingQueue",
    "NewTask",
    "QueueError",
    "QueuedTask",
    "TaskQueue",
    "create_all",
    "validate_task_name",
]

MAX_TASK_NAME_LENGTH: Final = 500
_TASK_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,500}")


class QueueError(ServoError):
    """The task queue failed (unreachable, refused the request, or gave up retrying)."""


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A task as the queue holds it.

    ``target`` is where it is delivered (a URL for Cloud Tasks, any string the
    handler understands for the embedded queue). ``dispatch_count`` is how many
    deliveries have been attempted so far.
    """

    name: str
    target: str
    payload: bytes
    schedule_time: datetime
    dispatch_count: int = 0


class TaskQueue(Protocol):
    """A named, scheduled, at-least-once task queue with idempotent creates.

    Every method raises ``InvalidId`` for a malformed name and ``QueueError``
    when the queue fails; no backend leaks its own exceptions.
    """

    def create_task(self, name: str, target: str, payload: bytes, schedule_time: datetime) -> bool:
        """Enqueue ``payload`` for delivery to ``target`` at or after ``schedule_time``.

        Return True if this call created the task, False if the name already
        existed (pending, or ended within the retention window). Both are
        success (INV-4). ``schedule_time`` must be timezone-aware.
        """
        ...

    def delete_task(self, name: str) -> bool:
        """Remove a pending task; True if it was there. Its name stays reserved."""
        ...

    def get_task(self, name: str) -> QueuedTask | None:
        """Return the pending task ``name``, or None if there is none (never made, or ended)."""
        ...


@dataclass(frozen=True, slots=True)
class Lease:
    """One delivery of ``task``: the holder acks or nacks it before ``expires_at``.

    ``token`` identifies this delivery; once the lease expires the task may be
    leased again under a new token, and an ack with the old one is refused.
    """

    task: QueuedTask
    token: str
    expires_at: datetime


class LeasingQueue(Protocol):
    """The pull side of an embedded queue: lease due tasks, then ack or nack each.

    Delivery is at least once: a lease that is neither acked nor nacked before
    it expires (the holder crashed, or was too slow) makes the task due again.
    """

    def lease(self, now: datetime, max_tasks: int = 1, lease_seconds: float = 60.0) -> list[Lease]:
        """Lease up to ``max_tasks`` tasks due at ``now``, earliest first."""
        ...

    def ack(self, lease: Lease) -> bool:
        """The delivery succeeded: end the task. False if the lease was superseded."""
        ...

    def nack(self, lease: Lease, retry_at: datetime) -> bool:
        """The delivery failed: make the task due again at ``retry_at``. False if superseded."""
        ...

    def next_due(self) -> datetime | None:
        """When the earliest pending task becomes due (maybe in the past); None if none."""
        ...

    def depth(self) -> int:
        """How many tasks are pending (scheduled or leased): the queue-depth gauge."""
        ...


def validate_task_name(name: str) -> str:
    """Return ``name`` if it is an API-safe task id, else raise ``InvalidId``."""
    if not isinstance(name, str) or _TASK_NAME.fullmatch(name) is None:
        shown = repr(name) if len(str(name)) <= 40 else repr(str(name)[:37]) + "..."
        raise InvalidId(
            f"task name {shown} must be 1-{MAX_TASK_NAME_LENGTH} characters of [A-Za-z0-9_-]"
        )
    return name


def require_aware(when: datetime, what: str = "schedule_time") -> datetime:
    """Return ``when`` in UTC; a naive datetime is a caller bug (``ValueError``)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {when.isoformat()}")
    return when.astimezone(UTC)


NewTask = tuple[str, str, bytes, datetime]
"""(name, target, payload, schedule_time): one ``create_task`` call."""


def create_all(
    queue: TaskQueue, items: Sequence[NewTask], after: Callable[[int], None] | None = None
) -> list[bool]:
    """``create_task`` for each item; in one transaction where the queue can
    (``create_tasks``, the SQLite queue), else one call each. Per item: created?

    ``after(i)`` runs once item ``i`` exists: right after its own create, or after
    the one transaction that created them all (a crash hook in tests).
    """
    create_tasks = getattr(queue, "create_tasks", None)
    if create_tasks is not None:
        created = list(create_tasks(items))
        for index in range(len(items)):
            if after is not None:
                after(index)
        return created
    created = []
    for index, item in enumerate(items):
        created.append(queue.create_task(*item))
        if after is not None:
            after(index)
    return created
