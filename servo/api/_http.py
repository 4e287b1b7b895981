"""The HTTP API behind `servo serve`: worker callbacks and run status (SPEC §6, §8).

    POST /v1/callbacks/started     {tenant, workspace, run_id, task_key, attempt,
    POST /v1/callbacks/heartbeat    attempt_id, worker_id, traceparent?}
    POST /v1/callbacks/finished     + progress_pct? (heartbeat) / outcome, error_message? (finished)
                                   Authorization: Bearer <the delivery's per-attempt token>
    GET  /healthz                  liveness + the projection's manifest seq and watermark
    GET  /v1/runs?state=S&limit=N&after=RUN  the run rows of the published projection, newest
                                   first, a page at a time (`next` starts the following page)
    GET  /v1/runs/{run_id}         one run and its task rows
    GET  /metrics                  Prometheus text (prometheus_client's default registry)

Answers: 200 `{"accepted": true, "event_id": ...}`; 401 `missing_token`; 403
`forged_callback` (token or tenant wrong); 409 `stale_attempt` (the attempt is not the
task's current live one); 413 `payload_too_large` (a body over MAX_BODY_BYTES, refused
before it is read whole); 422 `invalid_request` (malformed JSON, not UTF-8, or bad
fields). Every error body is `{"error": <code>, "detail": <one readable line>}`, never a traceback.

The serve process does not compact: it reads the published projection and appends
worker facts to the ledger, posting each new event id to the home's notify spool so
the engine's compactor folds it (ADR 009: one compactor per home). Its view can lag
the engine's by one compaction, so a callback whose attempt it does not recognise
makes it re-read the projection, and wait up to `lag_wait_seconds` while the
projection may simply be behind, before answering 409.
"""

from __future__ import annotations

import codecs
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servo._errors import InvalidEvent, ServoError
from servo.compactor import ProjectionReader, Snapshot, StateView
from servo.core.controllers import RUN_STATES, ControllerConfig, Emitter, ProjectionView, TaskRecord
from servo.core.events import Catalog
from servo.core.ids import new_ulid
from servo.core.rules import default_spec
from servo.engine._home import Home
from servo.engine._notify import NotifySpool
from servo.obs import ERRORS, record_error
from servo.storage import Ledger
from servo.worker import (
    CallbackRejected,
    CallbackService,
    Delivery,
    FactClock,
    ForgedCallback,
    StaleAttemptRejected,
    attempt_token,
)
from servo.worker._contract import same_token as _same_token

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 1 << 20
"""The largest request body served: a callback is a few hundred bytes (its error text
is cut at 4,000 characters), so anything bigger is refused before it fills memory."""

log = logging.getLogger("servo.serve")

_LIVE = frozenset({"DISPATCHED", "RUNNING"})
_FINISHING_KEPT = 100_000  # attempts whose accepted outcome a serve process remembers
_ERROR_CODES: Mapping[type[CallbackRejected], str] = {
    StaleAttemptRejected: "stale_attempt",
    ForgedCallback: "forged_callback",
    CallbackRejected: "callback_rejected",
}
_Id = Annotated[str, Field(min_length=1, max_length=256)]
Auth = Annotated[str | None, Header(description="Bearer <the per-attempt token of the delivery>")]


class AttemptCallback(BaseModel):
    """The body every callback carries: the delivery's attempt and who reports."""

    model_config = ConfigDict(strict=True, extra="ignore")

    tenant: _Id
    workspace: _Id
    run_id: _Id
    task_key: _Id
    attempt: int = Field(ge=1)
    attempt_id: _Id
    worker_id: _Id
    traceparent: str | None = Field(default=None, max_length=256)


class HeartbeatCallback(AttemptCallback):
    """`heartbeat`: optionally how far along the attempt is."""

    progress_pct: int | None = Field(default=None, ge=0, le=100)


class FinishedCallback(AttemptCallback):
    """`finished`: how the attempt ended."""

    outcome: Literal["SUCCEEDED", "FAILED", "CANCELLED"]
    error_message: str | None = None


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _refused(code: str) -> None:
    """Count a request refused before the callback service saw it (which counts its
    own refusals: forged, stale), by its error code: SPEC §6, every error a metric."""
    ERRORS.labels("http", code).inc()


def _invalid(detail: str, problems: list[dict[str, str]]) -> JSONResponse:
    """422 `invalid_request` (counted): `detail` in one line, `problems` field by field."""
    _refused("invalid_request")
    return JSONResponse({"error": "invalid_request", "detail": detail, "problems": problems}, status_code=422)


class _BodyLimit:
    """ASGI middleware: a body declared (Content-Length) or streamed (chunked) past
    `limit` bytes gets 413 without being read whole; one that is not UTF-8 text (JSON
    between systems must be, RFC 8259), or holds a NUL (which `json.loads` would take
    for UTF-16 or UTF-32), is malformed (422)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            _refused("payload_too_large")
            await _error(413, "payload_too_large", self._too_large())(scope, receive, send)
            return
        seen = 0
        text = codecs.getincrementaldecoder("utf-8")()

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            chunk = message.get("body", b"")
            seen += len(chunk)
            # Raised inside the body read: the app's handlers answer (413; 400 with a
            # ValueError cause becomes 422 invalid_request).
            if seen > self.limit:
                raise StarletteHTTPException(413, self._too_large())
            try:
                text.decode(chunk, final=not message.get("more_body", False))
                if b"\x00" in chunk:
                    raise ValueError("the body holds a NUL byte: JSON must be UTF-8 text")
            except ValueError as exc:
                raise StarletteHTTPException(400, "the body is not UTF-8 JSON") from exc
            return message

        await self.app(scope, counted, send)


class _Projection:
    """The serve process's copy of the published projection (thread-safe)."""

    def __init__(self, home: Home, lag_wait_seconds: float) -> None:
        self._reader = ProjectionReader(StateView(home.store), default_spec())
        self._lock = threading.Lock()
        self._view = ProjectionView.from_tables({})
        self._snapshot: Snapshot | None = None
        self.lag_wait_seconds = lag_wait_seconds

    def refresh(self) -> Snapshot:
        """The latest published snapshot; rebuilt only when a new manifest appeared."""
        with self._lock:
            manifest = self._reader.manifest()
            if self._snapshot is None or manifest is None or manifest.seq != self._snapshot.seq:
                self._snapshot = self._reader.read(manifest)
                self._view = ProjectionView.from_tables(self._snapshot.tables)
            return self._snapshot

    def task(self, run_id: str, task_key: str) -> TaskRecord | None:
        """CallbackService's lookup: the task as the view has it, or None."""
        return self._view.task(run_id, task_key)

    def settle(self, claim: AttemptCallback) -> None:
        """Make the view current enough to judge `claim`.

        Always look at the latest manifest first (a retry may have replaced the attempt
        we last saw live); then keep re-reading, briefly, while the projection may be
        *behind* the claim — the task or the claimed attempt not folded yet — and stop
        as soon as the attempt is either live or clearly past.
        """
        deadline = time.monotonic() + self.lag_wait_seconds
        self.refresh()
        while self._verdict(claim) == "behind" and time.monotonic() < deadline:
            time.sleep(0.05)
            self.refresh()

    def _verdict(self, claim: AttemptCallback) -> Literal["live", "stale", "behind"]:
        task = self.task(claim.run_id, claim.task_key)
        if task is None:
            return "behind"  # run or plan not folded yet
        attempt_id, attempt, state = task.attempt_id, task.attempt, task.state
        if attempt_id == claim.attempt_id and attempt == claim.attempt:
            return "live" if state in _LIVE else "stale"
        if attempt_id is None or attempt < claim.attempt:
            return "behind"  # the claimed dispatch is not folded yet
        return "stale"


class _Callbacks:
    """Turns accepted callbacks into ledger facts."""

    def __init__(self, home: Home, projection: _Projection) -> None:
        self.home = home
        self.projection = projection
        self.secret = home.secret
        self.config = ControllerConfig(catalog=Catalog(default_spec()), source="serve")
        self.ledger = Ledger(home.store, on_append=NotifySpool.for_home(home).post)
        self.clock = FactClock()  # an attempt's facts sort in the order they happened
        # attempt_id -> the outcome this process accepted first (bounded): another
        # outcome reported for the attempt gets 409 instead of "accepted" then DUPLICATE.
        self._finishing: OrderedDict[str, str] = OrderedDict()
        self._finishing_lock = threading.Lock()

    def _claim_finish(self, attempt_id: str, outcome: str) -> str | None:
        """Reserve `outcome` as the attempt's; the outcome claimed before, if another."""
        with self._finishing_lock:
            first = self._finishing.setdefault(attempt_id, outcome)
            self._finishing.move_to_end(attempt_id)
            while len(self._finishing) > _FINISHING_KEPT:
                self._finishing.popitem(last=False)
        return first if first != outcome else None

    def _unclaim_finish(self, attempt_id: str, outcome: str) -> None:
        with self._finishing_lock:
            if self._finishing.get(attempt_id) == outcome:
                del self._finishing[attempt_id]

    def service(self, appended: list[str]) -> CallbackService:
        """A CallbackService whose appends are recorded in `appended`."""

        def append(event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
            now = self.clock.at(str(data.get("attempt_id", "")), last=event_type == "TaskFinished")
            source = f"worker:{data['worker_id']}"
            event = Emitter(self.config, self.home.tenant, self.home.workspace, now, source).emit(event_type, data)
            # Random ids: two reports of one fact within a millisecond must not collide
            # on bytes; the fold keeps one per idempotency key (INV-2).
            event = event._replace(event_id=new_ulid(now, secrets.token_bytes(10)), traceparent=traceparent)
            self.ledger.append(event.event_id, event.to_json().encode())
            appended.append(event.event_id)

        h = self.home
        return CallbackService(self.secret, h.tenant, h.workspace, self.projection.task, append)

    def token_ok(self, body: AttemptCallback, token: str) -> bool:
        h = self.home
        expected = attempt_token(self.secret, h.tenant, h.workspace, body.run_id, body.task_key, body.attempt_id)
        return body.tenant == h.tenant and body.workspace == h.workspace and _same_token(expected, token)

    def handle(self, kind: str, body: AttemptCallback, authorization: str | None) -> JSONResponse:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            _refused("missing_token")
            return _error(401, "missing_token", "send the delivery's token as 'Authorization: Bearer <token>'")
        token = token.strip()
        genuine = self.token_ok(body, token)
        if genuine:  # never let a forged claim make us wait
            self.projection.settle(body)
        claim = body if genuine and isinstance(body, FinishedCallback) else None  # its outcome, reserved
        if claim is not None:
            other = self._claim_finish(claim.attempt_id, claim.outcome)
            if other is not None:
                late = StaleAttemptRejected(f"attempt {body.attempt_id} of task {body.task_key!r} already reported finished {other}")
                record_error("callback", late)
                return self._refusal(kind, body, late)
        delivery = Delivery(
            tenant=body.tenant,
            workspace=body.workspace,
            run_id=body.run_id,
            task_key=body.task_key,
            attempt=body.attempt,
            attempt_id=body.attempt_id,
            token=token,
            traceparent=body.traceparent,
        )
        appended: list[str] = []
        service = self.service(appended)
        try:
            if isinstance(body, FinishedCallback):
                service.finished(delivery, body.worker_id, body.outcome, body.error_message)
            elif isinstance(body, HeartbeatCallback):
                service.heartbeat(delivery, body.worker_id, datetime.now(UTC), body.progress_pct)
            else:
                service.started(delivery, body.worker_id)
        except BaseException as exc:
            if claim is not None:  # nothing accepted: the claim lapses
                self._unclaim_finish(claim.attempt_id, claim.outcome)
            if isinstance(exc, CallbackRejected | InvalidEvent):
                return self._refusal(kind, body, exc)
            raise
        return JSONResponse({"accepted": True, "event_id": appended[-1] if appended else None})

    def _refusal(self, kind: str, body: AttemptCallback, exc: CallbackRejected | InvalidEvent) -> JSONResponse:
        if isinstance(exc, CallbackRejected):
            code = next(c for t, c in _ERROR_CODES.items() if isinstance(exc, t))
            log.warning(
                "callback rejected: %s error=%s tenant_id=%s run_id=%s task_key=%s attempt_id=%s detail=%s",
                kind, code, body.tenant, body.run_id, body.task_key, body.attempt_id, exc,
            )
            return _error(exc.status, code, str(exc))
        return _error(422, "invalid_event", str(exc))


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            where, msg = "body", f"malformed JSON: {error.get('ctx', {}).get('error', msg)}"
        problems.append({"field": where, "message": msg})
    return "; ".join(f"{p['field']}: {p['message']}" for p in problems), problems


def create_app(home: Home, *, lag_wait_seconds: float = 2.0) -> FastAPI:
    """The FastAPI app of one embedded home (its tenant, workspace, ledger and projection)."""
    projection = _Projection(home, lag_wait_seconds)
    callbacks = _Callbacks(home, projection)
    app = FastAPI(title="Servo", version="0.1.0", summary="Worker callbacks and run status for a Servo home.")
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(*_validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):  # the body did not parse
            problem = {"field": "body", "message": f"malformed: {exc.__cause__}"}
            return _invalid(f"body: {problem['message']}", [problem])
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        _refused(code)
        return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(ServoError)
    async def servo_error(request: Request, exc: ServoError) -> JSONResponse:
        log.error("request failed: %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        record_error("http", exc)
        return _error(503, "unavailable", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        record_error("http", exc)
        return _error(500, "internal_error", f"{type(exc).__name__} (see the server log)")

    @app.post("/v1/callbacks/started")
    def started(body: AttemptCallback, authorization: Auth = None) -> JSONResponse:
        """The worker began the attempt."""
        return callbacks.handle("started", body, authorization)

    @app.post("/v1/callbacks/heartbeat")
    def heartbeat(body: HeartbeatCallback, authorization: Auth = None) -> JSONResponse:
        """The attempt is alive (optionally with progress)."""
        return callbacks.handle("heartbeat", body, authorization)

    @app.post("/v1/callbacks/finished")
    def finished(body: FinishedCallback, authorization: Auth = None) -> JSONResponse:
        """The attempt ended: SUCCEEDED, FAILED or CANCELLED."""
        return callbacks.handle("finished", body, authorization)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness, and how fresh the published projection is."""
        snapshot = projection.refresh()
        return {
            "ok": True,
            "tenant": home.tenant,
            "workspace": home.workspace,
            "manifest_seq": snapshot.seq,
            "watermark": snapshot.watermark,
        }

    @app.get("/v1/runs", response_model=None)
    def list_runs(
        state: Annotated[list[str] | None, Query(description="Only runs in these states (any case).")] = None,
        limit: Annotated[int | None, Query(ge=1, description="Only the newest N runs.")] = None,
        after: Annotated[str | None, Query(description="Start after this run (a page's `next`).")] = None,
    ) -> dict[str, Any] | JSONResponse:
        """The runs of the published projection, newest first, a page at a time: `next`
        is the last run of a page cut by `limit` (null on the last page); pass it as
        `after` for the following page."""
        wanted = {s.upper() for s in state or ()}
        if wanted - set(RUN_STATES):
            message = f"must be one of {', '.join(RUN_STATES)}, not {', '.join(sorted(wanted - set(RUN_STATES)))}"
            return _invalid(f"state: {message}", [{"field": "state", "message": message}])
        runs = sorted(projection.refresh().tables["runs"], key=lambda r: (str(r["created_at"]), str(r["run_id"])), reverse=True)
        if after is not None:
            at = next((i for i, r in enumerate(runs) if r["run_id"] == after), None)
            if at is None:
                message = f"no run {after!r} in this home to continue after"
                return _invalid(f"after: {message}", [{"field": "after", "message": message}])
            runs = runs[at + 1 :]
        runs = [r for r in runs if not wanted or r["state"] in wanted]
        page = runs[:limit]
        return {"runs": page, "next": page[-1]["run_id"] if len(runs) > len(page) else None}

    @app.get("/v1/runs/{run_id}", response_model=None)
    def show_run(run_id: str) -> dict[str, Any] | JSONResponse:
        """One run and its tasks."""
        tables = projection.refresh().tables
        run = next((r for r in tables["runs"] if r["run_id"] == run_id), None)
        if run is None:
            return _error(404, "unknown_run", f"no run {run_id!r} in this home")
        return {"run": run, "tasks": [t for t in tables["tasks"] if t["run_id"] == run_id]}

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition: Servo's registry (latencies, errors by type, queue
        depth) and the default one (process and Python runtime)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from servo.obs import REGISTRY

        return Response(generate_latest(REGISTRY) + generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
