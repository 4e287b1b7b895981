"""Google Cloud Tasks as a ``TaskQueue``, through the official client (``servo[gcp]``).

Every task is an HTTP push task: Cloud Tasks POSTs the payload to ``target``
at ``schedule_time`` and retries on its own until the target answers 2xx.
The task name is ``{parent}/tasks/{name}``, so a second create of one name is
refused with 409: ``Conflict`` over REST, ``AlreadyExists`` (a ``Conflict``)
over gRPC. Either is success here (INV-4) and ``create_task`` returns False.

Retries are ours, not the library's (every call passes ``retry=None``): 408,
429 and 5xx answers and transport errors are retried with capped exponential
backoff and jitter, a bounded number of times. A create whose response was
lost may have landed; its retry then meets 409 and returns False — the task
exists exactly once either way, which is all INV-4 asks.

Cloud Tasks keeps an ended task's name reserved for only about an hour on
queues created through its API, so queue dedup is a convenience, never the
correctness mechanism: that is the outbox and the attempt id.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from servo.obs import QUEUE_OPERATION_SECONDS, timed
from servo.queue._protocol import QueuedTask, QueueError, require_aware, validate_task_name
from servo.storage import RetryPolicy

__all__ = ["CloudTasksQueue", "local_cloudtasks_client"]

_T = TypeVar("_T")
_PARENT: Final = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[^/]+")
_RETRYABLE_CODES: Final = frozenset({408, 429, 500, 502, 503, 504})
_DEFAULT_RETRY: Final = RetryPolicy()


def local_cloudtasks_client(endpoint: str) -> tasks_v2.CloudTasksClient:
    """A REST client with anonymous credentials for a local endpoint such as
    ``CloudTasksServer.url`` (``http://127.0.0.1:PORT``). The caller closes it
    (``client.transport.close()`` or ``with client:``)."""
    return tasks_v2.CloudTasksClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=endpoint),
        credentials=AnonymousCredentials(),
    )


def _is_retryable(error: BaseException) -> bool:
    """408, 429, 5xx and gRPC ABORTED answers, and transport failures."""
    if isinstance(error, api_exceptions.Aborted):  # a 409 that means "try again"
        return True
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in _RETRYABLE_CODES
    if isinstance(error, ValueError):  # e.g. requests' InvalidURL: a bug, not weather
        return False
    # requests' ConnectionError/Timeout are OSErrors; google-auth wraps others.
    return isinstance(error, OSError | auth_exceptions.TransportError)


def _plain_utc(when: datetime) -> datetime:
    """proto-plus hands back a ``DatetimeWithNanoseconds``; callers get a plain datetime."""
    when = when.astimezone(UTC)
    return datetime(
        when.year, when.month, when.day, when.hour, when.minute, when.second,
        when.microsecond, tzinfo=UTC,
    )  # fmt: skip


class CloudTasksQueue:
    """A ``TaskQueue`` on one Cloud Tasks queue, ``parent`` =
    ``projects/{project}/locations/{location}/queues/{queue}``.

    ``client`` is a ``google.cloud.tasks_v2.CloudTasksClient`` (REST or gRPC);
    the caller owns and closes it. With ``service_account_email`` each push
    carries an OIDC token for that account (``audience`` defaults to the URL).
    ``headers`` go on every push. ``sleep`` is injectable so tests can retry
    without waiting.
    """

    def __init__(
        self,
        client: tasks_v2.CloudTasksClient,
        parent: str,
        *,
        service_account_email: str | None = None,
        audience: str | None = None,
        headers: Mapping[str, str] | None = None,
        dispatch_deadline: timedelta | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if _PARENT.fullmatch(parent) is None:
            raise ValueError(
                f"parent must be projects/{{project}}/locations/{{location}}/queues/{{queue}}, "
                f"not {parent!r}"
            )
        self.parent: Final = parent
        self._client = client
        self._service_account_email = service_account_email
        self._audience = audience
        self._headers = dict(headers or {})
        self._dispatch_deadline = dispatch_deadline
        self._retry = retry
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"CloudTasksQueue({self.parent!r})"

    def _call(
        self,
        what: str,
        operation: Callable[[], _T],
        *,
        expect: tuple[type[Exception], ...] = (),
    ) -> _T:
        """Run ``operation`` with bounded retries. Errors in ``expect`` (unless
        retryable) propagate for the caller to interpret; any other becomes
        ``QueueError``."""
        attempt = 1
        while True:
            try:
                return operation()
            except Exception as error:
                retryable = _is_retryable(error)
                if isinstance(error, expect) and not retryable:
                    raise
                if not retryable:
                    raise QueueError(f"Cloud Tasks {what} failed: {error}") from error
                if attempt >= self._retry.max_attempts:
                    raise QueueError(
                        f"Cloud Tasks {what} failed after {attempt} attempts: {error}"
                    ) from error
                self._sleep(self._retry.delay(attempt))
                attempt += 1

    def _task(
        self, name: str, target: str, payload: bytes, schedule_time: datetime
    ) -> tasks_v2.Task:
        http_request = tasks_v2.HttpRequest(
            url=target,
            http_method=tasks_v2.HttpMethod.POST,
            headers=self._headers,
            body=bytes(payload),
        )
        if self._service_account_email is not None:
            http_request.oidc_token = tasks_v2.OidcToken(
                service_account_email=self._service_account_email,
                audience=self._audience or target,
            )
        task = tasks_v2.Task(
            name=f"{self.parent}/tasks/{name}",
            http_request=http_request,
            schedule_time=schedule_time,  # proto-plus marshals datetime -> Timestamp
        )
        if self._dispatch_deadline is not None:
            task.dispatch_deadline = self._dispatch_deadline  # and timedelta -> Duration
        return task

    @timed(QUEUE_OPERATION_SECONDS.labels("cloudtasks", "create"), "queue")
    def create_task(self, name: str, target: str, payload: bytes, schedule_time: datetime) -> bool:
        """See ``TaskQueue.create_task``: 409 (``Conflict``/``AlreadyExists``) → False."""
        validate_task_name(name)
        request = tasks_v2.CreateTaskRequest(
            parent=self.parent,
            task=self._task(name, target, payload, require_aware(schedule_time)),
            response_view=tasks_v2.Task.View.BASIC,
        )
        try:
            self._call(
                f"create of {self.parent}/tasks/{name}",
                lambda: self._client.create_task(
                    request=request, retry=None, timeout=self._retry.timeout
                ),
                expect=(api_exceptions.Conflict,),
            )
        except api_exceptions.Conflict:
            return False
        return True

    @timed(QUEUE_OPERATION_SECONDS.labels("cloudtasks", "delete"), "queue")
    def delete_task(self, name: str) -> bool:
        """See ``TaskQueue.delete_task``: NotFound → False."""
        validate_task_name(name)
        full_name = f"{self.parent}/tasks/{name}"
        try:
            self._call(
                f"delete of {full_name}",
                lambda: self._client.delete_task(
                    name=full_name, retry=None, timeout=self._retry.timeout
                ),
                expect=(api_exceptions.NotFound,),
            )
        except api_exceptions.NotFound:
            return False
        return True

    @timed(QUEUE_OPERATION_SECONDS.labels("cloudtasks", "get"), "queue")
    def get_task(self, name: str) -> QueuedTask | None:
        """See ``TaskQueue.get_task`` (FULL view, so the payload comes back)."""
        validate_task_name(name)
        request = tasks_v2.GetTaskRequest(
            name=f"{self.parent}/tasks/{name}", response_view=tasks_v2.Task.View.FULL
        )
        try:
            task = self._call(
                f"read of {request.name}",
                lambda: self._client.get_task(
                    request=request, retry=None, timeout=self._retry.timeout
                ),
                expect=(api_exceptions.NotFound,),
            )
        except api_exceptions.NotFound:
            return None
        return QueuedTask(
            name=name,
            target=task.http_request.url,
            payload=bytes(task.http_request.body),
            schedule_time=_plain_utc(task.schedule_time),
            dispatch_count=int(task.dispatch_count),
        )
