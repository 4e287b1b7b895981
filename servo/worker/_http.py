"""A standalone worker (`servo worker`): the worker contract over HTTP.

    SQLite queue --lease dispatch--> HttpWorker --POST started/heartbeat/finished--> servo serve
                 <------ack------------'   runs pipeline.call(task_key, ctx)

It leases only `dispatch` tasks (the engine keeps the timers), parses each payload as
a `Delivery`, and reports to the server named by `--server` or, failing that, the
delivery's `callback_base`. The queue task is acked once `finished` is accepted, or
as soon as the server refuses the attempt (401/403/409/422: there is nothing to run
or report). When the server cannot be reached the lease is released for a later
retry instead: the attempt then runs again, which the contract allows (at least
once), and the fold keeps one TaskFinished per attempt (INV-2).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from servo._errors import ServoError
from servo.api import Pipeline
from servo.queue import HeldLeases, Lease, SqliteQueue
from servo.worker._contract import (
    DISPATCH,
    CallbackRejected,
    Delivery,
    ForgedCallback,
    StaleAttemptRejected,
    describe_error,
    dispatch_target,
    progress_percent,
)

__all__ = ["HttpWorker", "ServerUnreachable"]

log = logging.getLogger("servo.worker")


class ServerUnreachable(ServoError):
    """`servo serve` did not answer (connection refused, timeout, 5xx)."""


class _Answer(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # a 4xx: the attempt is stale, forged or malformed
    UNREACHABLE = "unreachable"


class _RemoteContext:
    """What a task function sees (servo.api.TaskContext), reporting over HTTP."""

    def __init__(self, worker: HttpWorker, base: str, delivery: Delivery, worker_id: str) -> None:
        self._worker, self._base, self.delivery, self.worker_id = worker, base, delivery, worker_id
        self.run_id, self.task_key = delivery.run_id, delivery.task_key
        self.attempt, self.attempt_id = delivery.attempt, delivery.attempt_id

    def heartbeat(self, progress_pct: float | None = None) -> None:
        """Report the attempt alive; raises if the server says it is no longer current."""
        progress = progress_percent(progress_pct)
        extra = {} if progress is None else {"progress_pct": progress}
        answer, status, detail = self._worker.post(self._base, "heartbeat", self.delivery, self.worker_id, extra)
        if answer is _Answer.REFUSED:
            kind = {409: StaleAttemptRejected, 403: ForgedCallback}.get(status, CallbackRejected)
            raise kind(detail)


class HttpWorker:
    """Runs a pipeline's tasks for dispatches leased from a home's queue."""

    def __init__(
        self,
        queue_path: Path,
        pipeline: Pipeline,
        *,
        server: str | None = None,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.05,
        worker_id: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if concurrency < 1:
            raise ServoError("concurrency must be at least 1")
        self.queue = SqliteQueue(queue_path)
        self.pipeline = pipeline
        self.server = server.rstrip("/") if server else None
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0))
        self.handled = 0
        self._running: dict[str, Future[None]] = {}
        self._held = HeldLeases(self.queue, lease_seconds)  # extended while the attempts run
        self._lock = threading.Lock()

    # ------------------------------------------------------------- HTTP --

    def post(
        self, base: str, kind: str, delivery: Delivery, worker_id: str, extra: dict[str, Any], *, tries: int = 3
    ) -> tuple[_Answer, int, str]:
        """POST one callback; retry what may be transient (no answer, 5xx)."""
        body: dict[str, Any] = {
            "tenant": delivery.tenant,
            "workspace": delivery.workspace,
            "run_id": delivery.run_id,
            "task_key": delivery.task_key,
            "attempt": delivery.attempt,
            "attempt_id": delivery.attempt_id,
            "worker_id": worker_id,
            **extra,
        }
        if delivery.traceparent:
            body["traceparent"] = delivery.traceparent
        headers = {"Authorization": f"Bearer {delivery.token}"}
        url = f"{base.rstrip('/')}/v1/callbacks/{kind}"
        detail = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(min(2.0, 0.2 * 2**attempt))
            try:
                response = self.client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                return _Answer.ACCEPTED, 200, ""
            detail = _detail(response)
            if 400 <= response.status_code < 500:
                log.warning(
                    "%s refused (%s): run_id=%s task_key=%s attempt_id=%s: %s",
                    kind, response.status_code, delivery.run_id, delivery.task_key, delivery.attempt_id, detail,
                )
                return _Answer.REFUSED, response.status_code, detail
        log.error("%s not delivered to %s after %d tries: %s", kind, url, tries, detail)
        return _Answer.UNREACHABLE, 0, detail

    def check_server(self, wait_seconds: float = 5.0) -> None:
        """Raise ServerUnreachable unless `--server` answers /healthz within `wait_seconds`."""
        if self.server is None:
            return
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                if self.client.get(f"{self.server}/healthz").status_code == 200:
                    return
                problem = "no healthy answer from /healthz"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ServerUnreachable(f"cannot reach servo serve at {self.server}: {problem}")
            time.sleep(0.2)

    # -------------------------------------------------------------- run --

    def run(self, stop: threading.Event, *, idle_exit: float | None = None) -> int:
        """Lease and run dispatches until `stop` is set (or idle for `idle_exit` s); return how many."""
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="servo-worker")
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                with self._lock:
                    free = self.concurrency - len(self._running)
                now = datetime.now(UTC)
                self._held.keep(now)
                mine = (DISPATCH, dispatch_target(self.pipeline.name))  # not another pipeline's attempts
                leases = self.queue.lease(now, max_tasks=free, lease_seconds=self.lease_seconds, target=mine) if free else []
                for lease in leases:
                    with self._lock:
                        if lease.task.name in self._running:
                            continue  # our own lease expired while the task still runs
                        self._held.hold(lease)
                        self._running[lease.task.name] = pool.submit(self._handle, lease)
                with self._lock:
                    busy = bool(self._running)
                if leases or busy:
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    break
                if not leases:
                    stop.wait(self.poll_seconds)
        finally:
            pool.shutdown(wait=True)
            self.queue.close()
            if self._owns_client:
                self.client.close()
        return self.handled

    def _handle(self, lease: Lease) -> None:
        try:
            self._attempt(lease)
        except Exception:  # a bug here must not kill the worker; the lease expires and retries
            log.exception("worker failed on queue task %s", lease.task.name)
        finally:
            self._held.release(lease.task.name)
            with self._lock:
                self._running.pop(lease.task.name, None)

    def _attempt(self, lease: Lease) -> None:
        try:
            delivery = Delivery.from_json(lease.task.payload)
        except CallbackRejected as exc:
            log.error("dropping queue task %s: %s", lease.task.name, exc)
            self.queue.ack(lease)
            return
        if not delivery.runs_on(self.pipeline.name):  # an older queue row of another pipeline
            self.queue.nack(lease, datetime.now(UTC) + timedelta(seconds=5))
            return
        base = self.server or delivery.callback_base
        if not base:
            log.error("queue task %s has no callback_base and no --server was given", lease.task.name)
            self.queue.nack(lease, datetime.now(UTC) + timedelta(seconds=5))
            return
        worker_id = f"{self.worker_id}/{threading.current_thread().name.rsplit('_', 1)[-1]}"
        answer, _, _ = self.post(base, "started", delivery, worker_id, {})
        if answer is not _Answer.ACCEPTED:
            self._settle(lease, answer)
            return
        outcome, error = "SUCCEEDED", None
        try:
            if delivery.task_key not in self.pipeline.tasks:
                raise LookupError(f"task {delivery.task_key!r} is not in pipeline {self.pipeline.name!r}")
            self.pipeline.call(delivery.task_key, _RemoteContext(self, base, delivery, worker_id))
        except StaleAttemptRejected as exc:  # a heartbeat found the attempt ended (cancelled, timed out)
            log.info("attempt %s of task %s ended while running; result discarded: %s", delivery.attempt_id, delivery.task_key, exc)
            self.queue.ack(lease)
            self.handled += 1
            return
        except Exception as exc:
            outcome, error = "FAILED", describe_error(exc)
        extra: dict[str, Any] = {"outcome": outcome}
        if error:
            extra["error_message"] = error
        answer, _, _ = self.post(base, "finished", delivery, worker_id, extra, tries=6)
        self._settle(lease, answer)
        self.handled += 1

    def _settle(self, lease: Lease, answer: _Answer) -> None:
        if answer is _Answer.UNREACHABLE:
            self.queue.nack(lease, datetime.now(UTC) + timedelta(seconds=2))  # try the attempt again later
        else:
            self.queue.ack(lease)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error', response.status_code)}: {body.get('detail', '')}"
    except ValueError:
        return response.text[:200]


