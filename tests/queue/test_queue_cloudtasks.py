"""The Cloud Tasks adapter and the local server beyond the shared contract: what the
official client really raises, retries, push delivery, and the REST resource itself."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import tasks_v2
from queue_fixtures import FAST_BACKOFF, FAST_RETRY, CloudTasksHarness, PushReceiver, wait_until

from servo.queue import (
    CloudTasksQueue,
    CloudTasksServer,
    QueueError,
    RetryPolicy,
    local_cloudtasks_client,
)

LATER = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(UTC)


class Sleeps:
    """Records the backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def raw_task(harness: CloudTasksHarness, name: str | None, body: bytes = b"") -> tasks_v2.Task:
    return tasks_v2.Task(
        name=None if name is None else f"{harness.parent}/tasks/{name}",
        http_request=tasks_v2.HttpRequest(url=harness.target, body=body),
        schedule_time=now() + LATER,  # stays pending while the test looks at it
    )


def test_duplicate_create_is_a_conflict_from_the_server_and_false_from_the_adapter(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    h.client.create_task(parent=h.parent, task=raw_task(h, "t_dup"), retry=None)
    with pytest.raises(api_exceptions.Conflict) as caught:
        h.client.create_task(parent=h.parent, task=raw_task(h, "t_dup"), retry=None)
    assert caught.value.code == 409
    assert h.queue.create_task("t_dup", h.target, b"", now()) is False
    assert [status for method, _, status in h.server.requests() if method == "POST"][-2:] == [
        409,
        409,
    ]


def test_service_unavailable_is_retried_with_backoff(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    sleeps = Sleeps()
    queue = CloudTasksQueue(h.client, h.parent, retry=FAST_RETRY, sleep=sleeps)
    h.server.inject_failures(2, status=503)
    assert queue.create_task("t_flaky", h.target, b"x", now() + LATER) is True
    posts = [status for method, path, status in h.server.requests() if path.endswith("/tasks")]
    assert posts[-3:] == [503, 503, 200]
    assert len(sleeps.delays) == 2
    assert 0 < sleeps.delays[0] <= FAST_RETRY.max_delay
    assert h.server.task_names(h.parent) == [f"{h.parent}/tasks/t_flaky"]


@pytest.mark.parametrize("status", [429, 500, 504])
def test_other_transient_answers_are_retried_too(
    cloudtasks_harness: CloudTasksHarness, status: int
) -> None:
    h = cloudtasks_harness
    queue = CloudTasksQueue(h.client, h.parent, retry=FAST_RETRY, sleep=Sleeps())
    h.server.inject_failures(1, status=status)
    assert queue.get_task("t_none") is None
    assert [s for _, _, s in h.server.requests()][-2:] == [status, 404]


def test_retries_are_bounded_and_end_in_queue_error(cloudtasks_harness: CloudTasksHarness) -> None:
    h = cloudtasks_harness
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02)
    queue = CloudTasksQueue(h.client, h.parent, retry=policy, sleep=sleeps)
    h.server.inject_failures(10, status=503)
    with pytest.raises(QueueError, match="after 3 attempts"):
        queue.create_task("t_down", h.target, b"", now())
    assert len(sleeps.delays) == 2
    assert h.server.task_names(h.parent) == []


def test_a_lost_create_response_is_retried_and_the_task_exists_once(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    queue = CloudTasksQueue(h.client, h.parent, retry=FAST_RETRY, sleep=Sleeps())
    h.server.inject_failures(1, status=503, after_apply=True)
    assert queue.create_task("t_lost", h.target, b"x", now() + LATER) is False
    assert h.server.task_names(h.parent) == [f"{h.parent}/tasks/t_lost"]


def test_a_client_error_is_not_retried(cloudtasks_harness: CloudTasksHarness) -> None:
    h = cloudtasks_harness
    sleeps = Sleeps()
    queue = CloudTasksQueue(h.client, h.parent, retry=FAST_RETRY, sleep=sleeps)
    with pytest.raises(QueueError, match=r"create of .*t_bad_url failed: 400"):
        queue.create_task("t_bad_url", "not-a-url", b"", now())
    assert sleeps.delays == []


def test_an_unreachable_endpoint_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with local_cloudtasks_client(f"http://127.0.0.1:{port}") as client:
        sleeps = Sleeps()
        policy = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01, timeout=2.0)
        queue = CloudTasksQueue(
            client, "projects/p/locations/l/queues/q", retry=policy, sleep=sleeps
        )
        with pytest.raises(QueueError, match="after 2 attempts"):
            queue.create_task("t_nowhere", "http://127.0.0.1:1/", b"", now())
        assert len(sleeps.delays) == 1


def test_push_delivery_posts_the_body_and_headers_to_the_receiver(
    cloudtasks_harness: CloudTasksHarness, push_receiver: PushReceiver
) -> None:
    h = cloudtasks_harness
    queue = CloudTasksQueue(
        h.client, h.parent, retry=FAST_RETRY, headers={"Content-Type": "application/json"}
    )
    assert queue.create_task("t_push", h.target, b'{"run": "123"}', now())
    wait_until(lambda: len(push_receiver.received(h.path)) == 1)
    (received,) = push_receiver.received(h.path)
    assert (received.method, received.body) == ("POST", b'{"run": "123"}')
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["X-CloudTasks-TaskName"] == "t_push"
    assert received.headers["X-CloudTasks-QueueName"] == h.queue_id
    assert received.headers["X-CloudTasks-TaskRetryCount"] == "0"
    wait_until(lambda: h.queue.get_task("t_push") is None)
    (delivery,) = [d for d in h.server.deliveries() if d.task_name.endswith("/t_push")]
    assert (delivery.status, delivery.attempt, delivery.url) == (200, 1, h.target)


def test_retried_pushes_count_their_retries_in_the_headers(
    cloudtasks_harness: CloudTasksHarness, push_receiver: PushReceiver
) -> None:
    h = cloudtasks_harness
    push_receiver.fail_next(h.path, 2, status=503)
    h.queue.create_task("t_push_retry", h.target, b"x", now())
    wait_until(lambda: len(push_receiver.received(h.path)) == 3)
    received = push_receiver.received(h.path)
    assert [r.status for r in received] == [503, 503, 200]
    assert [r.headers["X-CloudTasks-TaskRetryCount"] for r in received] == ["0", "1", "2"]
    assert [r.headers["X-CloudTasks-TaskExecutionCount"] for r in received] == ["0", "1", "2"]


@pytest.fixture
def strict_server() -> Iterator[CloudTasksServer]:
    """A server of its own: three push attempts at most, names reserved for 0.3 s."""
    with CloudTasksServer(
        max_attempts=3, backoff=FAST_BACKOFF, name_retention=timedelta(seconds=0.3)
    ) as server:
        yield server


def test_push_gives_up_after_max_attempts_and_keeps_the_name(
    strict_server: CloudTasksServer, push_receiver: PushReceiver
) -> None:
    path = "/push/strict-give-up"
    push_receiver.fail_next(path, 100)
    with local_cloudtasks_client(strict_server.url) as client:
        queue = CloudTasksQueue(client, "projects/p/locations/l/queues/strict", retry=FAST_RETRY)
        queue.create_task("t_hopeless", f"{push_receiver.url}{path}", b"", now())
        wait_until(lambda: queue.get_task("t_hopeless") is None)
        assert [d.attempt for d in strict_server.deliveries()] == [1, 2, 3]
        assert queue.create_task("t_hopeless", f"{push_receiver.url}{path}", b"", now()) is False
    assert len(push_receiver.received(path)) == 3


def test_a_name_is_free_again_after_the_retention_window(strict_server: CloudTasksServer) -> None:
    with local_cloudtasks_client(strict_server.url) as client:
        queue = CloudTasksQueue(client, "projects/p/locations/l/queues/strict", retry=FAST_RETRY)
        queue.create_task("t_recycled", "http://127.0.0.1:1/", b"", now() + LATER)
        assert queue.delete_task("t_recycled") is True
        assert queue.create_task("t_recycled", "http://127.0.0.1:1/", b"", now() + LATER) is False
        time.sleep(0.35)
        assert queue.create_task("t_recycled", "http://127.0.0.1:1/", b"", now() + LATER) is True


def test_an_unnamed_task_gets_a_generated_name(cloudtasks_harness: CloudTasksHarness) -> None:
    h = cloudtasks_harness
    created = h.client.create_task(parent=h.parent, task=raw_task(h, None, b"anon"), retry=None)
    assert created.name.startswith(f"{h.parent}/tasks/")
    assert created.name in h.server.task_names(h.parent)


def test_the_basic_view_omits_the_body_and_full_view_returns_it(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    h.queue.create_task("t_view", h.target, b"secret", now() + LATER)
    name = f"{h.parent}/tasks/t_view"
    basic = h.client.get_task(name=name, retry=None)
    assert basic.http_request.body == b""
    full = h.client.get_task(
        request=tasks_v2.GetTaskRequest(name=name, response_view=tasks_v2.Task.View.FULL),
        retry=None,
    )
    assert full.http_request.body == b"secret"


def test_service_account_and_deadline_reach_the_api(cloudtasks_harness: CloudTasksHarness) -> None:
    h = cloudtasks_harness
    queue = CloudTasksQueue(
        h.client,
        h.parent,
        service_account_email="servo@p.iam.gserviceaccount.com",
        dispatch_deadline=timedelta(minutes=5),
        retry=FAST_RETRY,
    )
    queue.create_task("t_oidc", h.target, b"", now() + LATER)
    task = h.client.get_task(name=f"{h.parent}/tasks/t_oidc", retry=None)
    token = task.http_request.oidc_token
    assert token.service_account_email == "servo@p.iam.gserviceaccount.com"
    assert token.audience == h.target
    assert task.dispatch_deadline == timedelta(minutes=5)


def test_the_server_refuses_a_task_named_under_another_queue(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    task = tasks_v2.Task(
        name="projects/p/locations/l/queues/other/tasks/t_x",
        http_request=tasks_v2.HttpRequest(url=h.target),
    )
    with pytest.raises(api_exceptions.BadRequest):
        h.client.create_task(parent=h.parent, task=task, retry=None)


def test_the_server_answers_unimplemented_methods_with_501(
    cloudtasks_harness: CloudTasksHarness,
) -> None:
    h = cloudtasks_harness
    with pytest.raises(api_exceptions.MethodNotImplemented):
        h.client.list_tasks(parent=h.parent, retry=None)


@pytest.mark.parametrize(
    "parent",
    ["", "projects/p", "projects/p/locations/l/queues/q/tasks/t", "projects//locations/l/queues/q"],
)
def test_a_malformed_parent_is_refused(cloudtasks_harness: CloudTasksHarness, parent: str) -> None:
    with pytest.raises(ValueError, match="parent must be"):
        CloudTasksQueue(cloudtasks_harness.client, parent)
