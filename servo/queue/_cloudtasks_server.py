"""A local stand-in for Google Cloud Tasks that speaks its v2 REST API.

**Not a production server.** It keeps everything in memory, accepts any
queue under any project without auth, and runs push deliveries one at a time.
It exists because the PyPI emulator does not reject duplicate task names
(DEPENDENCIES.md §3), and name dedup is exactly what Servo must test. Point
the official client's REST transport at it::

    with CloudTasksServer() as server:
        client = local_cloudtasks_client(server.url)
        queue = CloudTasksQueue(client, "projects/p/locations/l/queues/q")

What it implements, as ``google-cloud-tasks`` sends it (JSON, camelCase,
enums as ints, bytes base64, ``$alt=json;enum-encoding=int``):

* ``POST /v2/{parent}/tasks`` creates a task. A name that is pending, or
  ended (delivered, given up on, deleted) less than ``name_retention`` ago, is
  refused with HTTP 409 ``ALREADY_EXISTS``; an unnamed task gets a generated
  name. Only ``httpRequest`` tasks are supported.
* ``GET /v2/{name}`` reads a task (404 if there is none; the body only with
  ``responseView=FULL``); ``DELETE /v2/{name}`` deletes one.
* HTTP push: a dispatcher thread sends each task's request (body decoded)
  to its URL at or after ``scheduleTime``, with Cloud Tasks' ``X-CloudTasks-*``
  headers. A non-2xx answer or a connection error is retried after
  ``backoff`` until ``max_attempts`` deliveries were made. Every attempt is
  recorded in ``deliveries()``. No OIDC/OAuth token is minted: a task's
  ``oidcToken`` is accepted and stored but pushes carry no ``Authorization``.

Tests can make the API fail on purpose with ``inject_failures``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from servo.queue._worker import Backoff

__all__ = ["CloudTasksServer", "PushDelivery"]

_QUEUE: Final = r"projects/[^/]+/locations/[^/]+/queues/[^/]+"
_CREATE_PATH: Final = re.compile(rf"(?P<parent>{_QUEUE})/tasks")
_TASK_PATH: Final = re.compile(rf"(?P<parent>{_QUEUE})/tasks/(?P<id>[^/]+)")
_TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,500}")
_TIMESTAMP: Final = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.IGNORECASE
)
_METHODS: Final = {1: "POST", 2: "GET", 3: "HEAD", 4: "PUT", 5: "DELETE", 6: "PATCH", 7: "OPTIONS"}
_VIEW_FULL: Final = 2
_VIEWS: Final = {"VIEW_UNSPECIFIED": 0, "BASIC": 1, "FULL": 2}
_DEFAULT_BACKOFF: Final = Backoff()
_STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> datetime:
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise _ApiError(400, f"invalid RFC 3339 timestamp: {text!r}")
    seconds, fraction, zone = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]  # nanoseconds are truncated
    when = datetime.fromisoformat(f"{seconds}.{micros}{'+00:00' if zone in 'Zz' else zone}")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class PushDelivery:
    """One push attempt: what was sent where, and how it went (``status`` None: no answer)."""

    task_name: str
    url: str
    method: str
    body: bytes
    headers: dict[str, str]
    attempt: int
    status: int | None
    at: datetime


@dataclass(slots=True)
class _Task:
    name: str
    resource: dict[str, Any]  # the task as created, in REST JSON form
    schedule_time: datetime
    create_time: datetime
    due: datetime
    dispatch_count: int = 0
    response_count: int = 0
    in_flight: bool = False

    def to_json(self, view: int) -> dict[str, Any]:
        http_request = dict(self.resource["httpRequest"])
        if view != _VIEW_FULL:
            http_request.pop("body", None)  # as Cloud Tasks: BASIC view omits the body
        return {
            "name": self.name,
            "httpRequest": http_request,
            "scheduleTime": _rfc3339(self.schedule_time),
            "createTime": _rfc3339(self.create_time),
            "dispatchDeadline": self.resource.get("dispatchDeadline", "600s"),
            "dispatchCount": self.dispatch_count,
            "responseCount": self.response_count,
            "view": view or 1,
        }


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        status = _STATUS_NAMES.get(self.code, "UNKNOWN")
        body = {"error": {"code": self.code, "message": self.message, "status": status}}
        return JSONResponse(body, status_code=self.code)


@dataclass(slots=True)
class _Faults:
    remaining: int = 0
    status: int = 503
    after_apply: bool = False


@dataclass(slots=True)
class _State:
    tasks: dict[str, _Task] = field(default_factory=dict)
    reserved: dict[str, datetime] = field(default_factory=dict)  # ended name -> free again at
    deliveries: list[PushDelivery] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    faults: _Faults = field(default_factory=_Faults)


class CloudTasksServer:
    """The stand-in (see the module docs): ``start()``/``stop()`` or ``with``; ``url`` once started.

    ``port=0`` picks a free port on ``host``. ``name_retention`` is how long an
    ended task's name stays reserved (Cloud Tasks: about an hour).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name_retention: timedelta = timedelta(hours=1),
        max_attempts: int = 100,
        backoff: Backoff = _DEFAULT_BACKOFF,
        push_timeout: float = 10.0,
    ) -> None:
        if max_attempts < 1 or push_timeout <= 0:
            raise ValueError("CloudTasksServer needs max_attempts >= 1 and push_timeout > 0")
        self._host = host
        self._port = port
        self._retention = name_retention
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._push_timeout = push_timeout
        self._changed = threading.Condition()  # guards _state; notified on every change
        self._state = _State()
        self._stopping = False
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._socket is None:
            raise RuntimeError("CloudTasksServer is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> CloudTasksServer:
        """Bind, serve in a background thread and start the push dispatcher."""
        if self._socket is not None:
            raise RuntimeError("CloudTasksServer already started")
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted
        # sockets only when it sees that, and without it each answer waits ~40 ms.
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._stopping = False
        serve = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="cloudtasks-api", daemon=True
        )
        dispatch = threading.Thread(target=self._dispatch_loop, name="cloudtasks-push", daemon=True)
        self._threads = [serve, dispatch]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not serve.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local Cloud Tasks server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and dispatching; idempotent. Undelivered tasks are dropped."""
        if self._server is not None:
            self._server.should_exit = True
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=10.0)
        self._threads = []
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> CloudTasksServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- inspection and fault injection (tests) -------------------------------

    def deliveries(self) -> list[PushDelivery]:
        """Every push attempt so far, oldest first."""
        with self._changed:
            return list(self._state.deliveries)

    def requests(self) -> list[tuple[str, str, int]]:
        """Every API request so far as (method, resource path, HTTP status)."""
        with self._changed:
            return list(self._state.requests)

    def task_names(self, parent: str = "") -> list[str]:
        """Full names of the tasks not yet ended (in queue ``parent``, if given), sorted."""
        prefix = f"{parent}/tasks/" if parent else ""
        with self._changed:
            return sorted(name for name in self._state.tasks if name.startswith(prefix))

    def inject_failures(self, count: int, status: int = 503, *, after_apply: bool = False) -> None:
        """Answer the next ``count`` API requests with ``status``. With ``after_apply``
        the request takes effect first and only its response is lost."""
        with self._changed:
            self._state.faults = _Faults(count, status, after_apply)

    # --- the REST resource ----------------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/v2/{path:path}", methods=["GET", "POST", "DELETE"])
        async def v2(path: str, request: Request) -> JSONResponse:
            body = await request.body()
            view = request.query_params.get("responseView", "0")
            number = int(view) if view.isdigit() else _VIEWS.get(view, 0)
            return self._handle(request.method, path, body, number)

        return app

    def _handle(self, method: str, path: str, body: bytes, view: int) -> JSONResponse:
        with self._changed:
            faults = self._state.faults
            failing = faults.remaining > 0
            if failing:
                faults.remaining -= 1
            try:
                if failing and not faults.after_apply:
                    raise _ApiError(faults.status, "injected failure (local Cloud Tasks server)")
                result = self._route(method, path, body, view)
                if failing:
                    raise _ApiError(faults.status, "injected failure after apply (local server)")
            except _ApiError as error:
                self._state.requests.append((method, path, error.code))
                return error.response()
            finally:
                self._changed.notify_all()  # wake the dispatcher: a task may be due now
            self._state.requests.append((method, path, 200))
            return JSONResponse(result)

    def _route(self, method: str, path: str, body: bytes, view: int) -> dict[str, Any]:
        # Caller holds the lock.
        now = _utcnow()
        self._expire_reservations(now)
        if method == "POST" and (match := _CREATE_PATH.fullmatch(path)):
            return self._create(match["parent"], body, now)
        if method in ("GET", "DELETE") and _TASK_PATH.fullmatch(path):
            task = self._state.tasks.get(path)
            if task is None:
                raise _ApiError(404, f"Requested entity was not found: task {path}")
            if method == "GET":
                return task.to_json(view)
            self._end(task, now)
            return {}
        raise _ApiError(501, f"{method} /v2/{path} is not implemented by the local stand-in")

    def _create(self, parent: str, body: bytes, now: datetime) -> dict[str, Any]:
        try:
            request = _json_object(body)
            task = request.get("task")
            if not isinstance(task, dict):
                raise ValueError("'task' is required")
            http_request = task.get("httpRequest")
            if not isinstance(http_request, dict):
                raise ValueError("only httpRequest tasks are supported by the local stand-in")
            url = http_request.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"httpRequest.url must be an http(s) URL, not {url!r}")
            base64.b64decode(http_request.get("body", ""), validate=True)
            view = request.get("responseView", 0)
            view = _VIEWS.get(view, view) if isinstance(view, str) else view
        except (ValueError, TypeError) as error:
            raise _ApiError(400, f"invalid CreateTask request: {error}") from None
        name = task.get("name") or f"{parent}/tasks/{secrets.randbelow(10**19)}"
        match = _TASK_PATH.fullmatch(name)
        if match is None or match["parent"] != parent or not _TASK_ID.fullmatch(match["id"]):
            raise _ApiError(
                400, f"task name {name!r} must be {parent}/tasks/[A-Za-z0-9_-]{{1,500}}"
            )
        if name in self._state.tasks or name in self._state.reserved:
            raise _ApiError(409, f"Requested entity already exists: task {name}")
        schedule_time = _parse_time(task["scheduleTime"]) if "scheduleTime" in task else now
        stored = _Task(name, task, schedule_time, now, due=schedule_time)
        self._state.tasks[name] = stored
        return stored.to_json(view if isinstance(view, int) else 0)

    def _end(self, task: _Task, now: datetime) -> None:
        # Caller holds the lock. The name stays taken for the retention window.
        self._state.tasks.pop(task.name, None)
        self._state.reserved[task.name] = now + self._retention

    def _expire_reservations(self, now: datetime) -> None:
        # Reservations are inserted with one fixed retention, so the dict is in
        # expiry order: drop from the front until one is still running.
        reserved = self._state.reserved
        while reserved:
            name, until = next(iter(reserved.items()))
            if until > now:
                break
            del reserved[name]

    # --- push delivery --------------------------------------------------------

    def _dispatch_loop(self) -> None:
        with httpx.Client(timeout=self._push_timeout) as http:
            while True:
                with self._changed:
                    if self._stopping:
                        return
                    task = self._next_due()
                    if task is None:
                        continue
                    task.in_flight = True
                    task.dispatch_count += 1
                    attempt = task.dispatch_count
                    request = self._push_request(task)
                status = self._push(http, *request)
                with self._changed:
                    self._record(task, request, attempt, status)

    def _next_due(self) -> _Task | None:
        """The earliest due task, or None after waiting a while for one. Caller holds the lock."""
        now = _utcnow()
        waiting = [t for t in self._state.tasks.values() if not t.in_flight]
        if not waiting:
            self._changed.wait(0.5)
            return None
        task = min(waiting, key=lambda t: t.due)
        if task.due > now:
            self._changed.wait(min((task.due - now).total_seconds(), 0.5))
            return None
        return task

    def _push_request(self, task: _Task) -> tuple[str, str, bytes, dict[str, str]]:
        http_request = task.resource["httpRequest"]
        body = base64.b64decode(http_request.get("body", ""))
        queue_id = task.name.split("/")[5]
        headers = {str(k): str(v) for k, v in (http_request.get("headers") or {}).items()}
        if body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        headers.update({
            "User-Agent": "Google-Cloud-Tasks",
            "X-CloudTasks-QueueName": queue_id,
            "X-CloudTasks-TaskName": task.name.rsplit("/", 1)[1],
            "X-CloudTasks-TaskRetryCount": str(task.dispatch_count - 1),
            "X-CloudTasks-TaskExecutionCount": str(task.response_count),
            "X-CloudTasks-TaskETA": f"{task.schedule_time.timestamp():.6f}",
        })  # fmt: skip
        method = _METHODS.get(int(http_request.get("httpMethod", 1)), "POST")
        return str(http_request["url"]), method, body, headers

    def _push(
        self, http: httpx.Client, url: str, method: str, body: bytes, headers: dict[str, str]
    ) -> int | None:
        try:
            return http.request(method, url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            return None

    def _record(
        self,
        task: _Task,
        request: tuple[str, str, bytes, dict[str, str]],
        attempt: int,
        status: int | None,
    ) -> None:
        # Caller holds the lock.
        now = _utcnow()
        url, method, body, headers = request
        self._state.deliveries.append(
            PushDelivery(task.name, url, method, body, headers, attempt, status, now)
        )
        task.in_flight = False
        if status is not None:
            task.response_count += 1
        if self._state.tasks.get(task.name) is not task:
            return  # deleted while in flight
        if (status is not None and 200 <= status < 300) or attempt >= self._max_attempts:
            self._end(task, now)
        else:
            task.due = now + timedelta(seconds=self._backoff.delay(attempt))
        self._changed.notify_all()


def _json_object(body: bytes) -> dict[str, Any]:
    value = json.loads(body or b"{}")
    if not isinstance(value, dict):
        raise ValueError("the request body must be a JSON object")
    return value
