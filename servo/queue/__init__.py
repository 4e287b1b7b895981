"""Servo's task-queue layer: the ``TaskQueue`` seam, its backends and a local Cloud Tasks.

    TaskQueue (protocol)            create_task (idempotent by name, INV-4) /
                                    delete_task / get_task
    LeasingQueue (protocol)         lease / ack / nack / next_due / depth
    ├── SqliteQueue                 embedded, durable, at least once (both protocols);
    │                               SqliteQueue(":memory:") for tests and users
    └── CloudTasksQueue             Google Cloud Tasks, HTTP push (needs ``servo[gcp]``)
    QueueWorker, Backoff            deliver a LeasingQueue's due tasks to a handler
    CloudTasksServer                a local stand-in speaking the Cloud Tasks REST API
                                    (tests and local runs; not a production server)

A task name that already exists is success, never an error: ``create_task``
returns False. Correctness never rests on that dedup (Cloud Tasks forgets a
name about an hour after the task ends); it rests on the outbox and attempt ids.

``CloudTasksQueue``, ``local_cloudtasks_client`` and ``RetryPolicy`` need the
Google client libraries, and ``CloudTasksServer`` needs FastAPI and uvicorn;
all are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servo.queue._held import HeldLeases
from servo.queue._protocol import (
    MAX_TASK_NAME_LENGTH,
    Lease,
    LeasingQueue,
    NewTask,
    QueuedTask,
    QueueError,
    TaskQueue,
    create_all,
    validate_task_name,
)
from servo.queue._sqlite import SqliteQueue
from servo.queue._worker import Backoff, QueueWorker

if TYPE_CHECKING:
    from servo.queue._cloudtasks import CloudTasksQueue, local_cloudtasks_client
    from servo.queue._cloudtasks_server import CloudTasksServer, PushDelivery
    from servo.storage import RetryPolicy

__all__ = [
    "MAX_TASK_NAME_LENGTH",
    "Backoff",
    "CloudTasksQueue",
    "CloudTasksServer",
    "HeldLeases",
    "Lease",
    "LeasingQueue",
    "NewTask",
    "PushDelivery",
    "QueueError",
    "QueueWorker",
    "QueuedTask",
    "RetryPolicy",
    "SqliteQueue",
    "TaskQueue",
    "create_all",
    "local_cloudtasks_client",
    "validate_task_name",
]

_LAZY = {
    "CloudTasksQueue": "servo.queue._cloudtasks",
    "local_cloudtasks_client": "servo.queue._cloudtasks",
    "CloudTasksServer": "servo.queue._cloudtasks_server",
    "PushDelivery": "servo.queue._cloudtasks_server",
    "RetryPolicy": "servo.storage._gcs",
}


def __getattr__(name: str) -> Any:
    """Import the Cloud Tasks pieces only when they are asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
