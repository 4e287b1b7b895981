"""The public face of ``servo.queue`` is exactly what ``__all__`` promises."""

from __future__ import annotations

import subprocess
import sys

import servo.queue

EXPECTED = {
    "MAX_TASK_NAME_LENGTH",
    "Backoff",
    "NewTask",
    "create_all",
    "CloudTasksQueue",
    "CloudTasksServer",
    "HeldLeases",
    "Lease",
    "LeasingQueue",
    "PushDelivery",
    "QueueError",
    "QueueWorker",
    "QueuedTask",
    "RetryPolicy",
    "SqliteQueue",
    "TaskQueue",
    "local_cloudtasks_client",
    "validate_task_name",
}


def test_queue_exports_exactly_the_public_names() -> None:
    assert set(servo.queue.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(servo.queue, name) is not None


def test_every_public_queue_item_has_a_docstring() -> None:
    for name in EXPECTED - {"MAX_TASK_NAME_LENGTH"}:
        assert getattr(servo.queue, name).__doc__, name


def test_queue_errors_are_servo_errors() -> None:
    from servo._errors import ServoError

    assert issubclass(servo.queue.QueueError, ServoError)


def test_importing_the_queue_imports_neither_google_nor_the_web_stack() -> None:
    code = (
        "import sys, servo.queue\n"
        "loaded = {'google.api_core', 'google.cloud.tasks_v2', 'fastapi', 'uvicorn'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
