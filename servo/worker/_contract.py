"""The worker contract (SPEC §6): what a worker receives and how it reports back.

A dispatched attempt is delivered as a `Delivery` (tenant, workspace, run_id,
task_key, attempt, attempt_id, traceparent, callback base, token). The worker
calls back `started`, `heartbeat` and `finished` with the attempt_id and the
per-attempt token, an HMAC of the attempt under the tenant's secret, so a callback
cannot be forged for another attempt. `CallbackService` checks the token and the
attempt against the projection and appends the worker fact to the ledger; the same
service backs the HTTP API (`servo serve`) and the embedded worker pool.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from hashlib import sha256
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, Protocol

from servo._errors import ServoError, StaleAttempt
from servo.obs import CALLBACK_SECONDS, log_context, observe, trace_id_of

__all__ = [
    "DISPATCH",
    "CallbackRejected",
    "CallbackService",
    "Delivery",
    "FactClock",
    "ForgedCallback",
    "StaleAttemptRejected",
    "attempt_token",
    "describe_error",
    "dispatch_target",
    "error_text",
    "progress_percent",
]

DISPATCH: Final = "dispatch"
_MS: Final = timedelta(milliseconds=1)


class FactClock:
    """Times for the facts of an attempt, each in a later millisecond than the last.

    The fold orders events by event_id, whose time part is a millisecond. On storage
    where an append takes microseconds (tmpfs, a fast SSD), a no-op task's
    TaskStarted, heartbeats and TaskFinished fall in one millisecond, and ids minted
    from the clock alone sorted in any order: a finish before its start refused the
    start as STALE_ATTEMPT. Each fact gets max(now, the previous fact's millisecond +
    1 ms); `occurred_at` moves at most a millisecond per fact ahead of the clock.
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._last: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def at(self, attempt_id: str, *, last: bool = False) -> datetime:
        """The time of the attempt's next fact; `last` (its finish) forgets the attempt."""
        with self._lock:
            now = self._clock()
            before = self._last.pop(attempt_id, None) if last else self._last.get(attempt_id)
            if before is not None:
                floor = before.replace(microsecond=before.microsecond // 1000 * 1000) + _MS
                now = max(now, floor)
            if not last:
                self._last[attempt_id] = now
            return now


def dispatch_target(pipeline: str | None) -> str:
    """The queue target of a dispatch: `dispatch/{pipeline}` for a run of a declared
    pipeline, so engines and workers sharing one queue lease only their own pipeline's
    attempts; plain `dispatch` for a run that names none."""
    return DISPATCH if pipeline is None else f"{DISPATCH}/{pipeline}"


def progress_percent(progress_pct: object) -> int | None:
    """`ctx.heartbeat`'s argument as the whole percentage a TaskHeartbeat carries:
    rounded and held to 0-100 (infinities too); None stays None. A non-number is the
    task's TypeError, NaN its ValueError, raised in the task, never sent."""
    if progress_pct is None:
        return None
    if isinstance(progress_pct, bool) or not isinstance(progress_pct, int | float):
        raise TypeError(f"ctx.heartbeat(progress_pct): expected a number from 0 to 100, not {progress_pct!r}")
    if math.isinf(progress_pct):
        return 100 if progress_pct > 0 else 0
    if math.isnan(progress_pct):
        raise ValueError(f"ctx.heartbeat(progress_pct): expected a number from 0 to 100, not {progress_pct!r}")
    return min(100, max(0, round(progress_pct)))


ERROR_MESSAGE_LIMIT = 4000
"""The most characters of a task's error a TaskFinished carries (and a log line shows)."""


def clip(text: str, limit: int = ERROR_MESSAGE_LIMIT) -> str:
    """`text` in at most `limit` characters: its start, a marker saying how much was
    cut, and its end (where an error says which line raised it)."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    marker = f" [... {len(text)} characters cut ...] "  # an upper bound on the count's digits
    head = max(0, limit - tail - len(marker))
    return f"{text[:head]} [... {len(text) - head - tail} characters cut ...] {text[len(text) - tail:]}"


def error_text(exc: BaseException) -> str:
    """`Type: message` of a task's exception, safe for any exception: one whose
    `str()` raises (anything, `KeyboardInterrupt` and `SystemExit` included) falls
    back to its repr, then to its type alone."""
    for render in (str, repr):
        try:
            text = render(exc)
        except BaseException:  # the task's own __str__ / __repr__
            continue
        # Room left for describe_error's "(at file:line)" within ERROR_MESSAGE_LIMIT.
        return clip(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, ERROR_MESSAGE_LIMIT - 300)
    return f"{type(exc).__name__}: <unprintable>"


def utf8_safe(text: str) -> str:
    """`text` as UTF-8 can carry it: a lone surrogate (`os.fsdecode` of a non-UTF-8 file
    name) is escaped (`\\udcff`) instead of making the event unwritable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_SERVO_DIR = str(Path(__file__).resolve().parents[1]) + os.sep


def describe_error(exc: BaseException) -> str:
    """`error_text` plus where the exception was raised: the error_message a failed
    attempt reports. That is the last traceback frame outside servo itself, so a
    misuse of servo's API (`ctx.heartbeat("half")`) names the task's line."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    theirs = [f for f in frames if not str(Path(f.filename).resolve()).startswith(_SERVO_DIR)]
    last = (theirs or frames)[-1:]
    return utf8_safe(error_text(exc) + (f" (at {last[0].filename}:{last[0].lineno})" if last else ""))

class CallbackRejected(ServoError):
    """A callback was refused; `status` is the HTTP status to answer with."""

    status = 400


class ForgedCallback(CallbackRejected):
    """The token does not match the attempt it claims."""

    status = 403


def same_token(expected: str, given: str) -> bool:
    """Constant-time comparison of a token with the expected one; a token that is not
    ASCII (a header of arbitrary bytes) is simply not it, never an error."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def attempt_token(secret: bytes, tenant: str, workspace: str, run_id: str, task_key: str, attempt_id: str) -> str:
    """HMAC-SHA256 of the attempt under the tenant secret (hex)."""
    message = f"{tenant}\x1f{workspace}\x1f{run_id}\x1f{task_key}\x1f{attempt_id}".encode()
    return hmac.new(secret, message, sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """The payload of a dispatched queue task."""

    tenant: str
    workspace: str
    run_id: str
    task_key: str
    attempt: int
    attempt_id: str
    token: str
    callback_base: str = ""
    traceparent: str | None = None
    pipeline: str | None = None
    """The run's pipeline (its `servo.pipeline` label): only that pipeline's code may run
    the attempt. None for a run that names none (and for deliveries made before it)."""

    def runs_on(self, pipeline: str) -> bool:
        """Whether a worker of `pipeline` may run this attempt."""
        return self.pipeline is None or self.pipeline == pipeline

    def to_json(self) -> bytes:
        """The queue payload bytes."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Delivery:
        """Parse a queue payload; ServoError on a malformed one."""
        try:
            body = json.loads(data)
            return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})
        except (ValueError, TypeError, KeyError) as exc:
            raise CallbackRejected(f"malformed delivery payload: {exc}") from None


class CurrentTask(Protocol):
    """What a callback is judged by: the task's row in the projection (a controller
    `TaskRecord` is one)."""

    @property
    def attempt_id(self) -> str | None: ...

    @property
    def attempt(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def asset_key(self) -> str | None: ...

    @property
    def partition_key(self) -> str | None: ...


TaskLookup = Callable[[str, str], CurrentTask | None]
"""(run_id, task_key) -> the task as the projection has it, or None."""
Append = Callable[[str, Mapping[str, Any], str | None], None]
"""(event_type, data, traceparent) -> append a worker fact to the ledger."""

_LIVE = frozenset({"DISPATCHED", "RUNNING"})
_log: Final = logging.getLogger("servo.worker")
P = ParamSpec("P")
Callback = Callable[Concatenate["CallbackService", "Delivery", P], None]


def _observed(kind: str) -> Callable[[Callback[P]], Callback[P]]:
    """Time a callback, log it with the attempt's ids, and log and count a refusal."""
    histogram = CALLBACK_SECONDS.labels(kind)

    def decorate(fn: Callback[P]) -> Callback[P]:
        @wraps(fn)
        def wrapper(self: CallbackService, d: Delivery, /, *args: P.args, **kwargs: P.kwargs) -> None:
            ids = {"tenant_id": d.tenant, "run_id": d.run_id, "task_key": d.task_key, "attempt": d.attempt}
            with log_context(**ids, attempt_id=d.attempt_id, trace_id=trace_id_of(d.traceparent)):
                try:
                    with observe(histogram, "callback"):
                        fn(self, d, *args, **kwargs)
                except CallbackRejected as error:
                    # A stale attempt is routine (its run was cancelled or it timed out while
                    # it ran); anything else refused (a forged token) is worth a warning.
                    level = logging.INFO if isinstance(error, StaleAttemptRejected) else logging.WARNING
                    extra = {"component": "callback", "error_type": type(error).__name__}
                    _log.log(level, "%s callback refused: %s", kind, error, extra=extra)
                    raise
                except Exception as error:
                    extra = {"component": "callback", "error_type": type(error).__name__}
                    _log.error("%s callback failed: %s", kind, error, extra=extra, exc_info=True)
                    raise

        return wrapper

    return decorate


class CallbackService:
    """Validates worker callbacks and appends the facts they report."""

    def __init__(
        self,
        secret: bytes,
        tenant: str,
        workspace: str,
        task: TaskLookup,
        append: Append,
    ) -> None:
        self._secret = secret
        self.tenant = tenant
        self.workspace = workspace
        self._task = task
        self._append = append

    def token_for(self, run_id: str, task_key: str, attempt_id: str) -> str:
        """The token a delivery for this attempt carries."""
        return attempt_token(self._secret, self.tenant, self.workspace, run_id, task_key, attempt_id)

    def _check(self, d: Delivery) -> CurrentTask:
        """The task whose current attempt `d` is; ForgedCallback or StaleAttemptRejected."""
        expected = self.token_for(d.run_id, d.task_key, d.attempt_id)
        if d.tenant != self.tenant or d.workspace != self.workspace or not same_token(expected, d.token):
            raise ForgedCallback(f"invalid token for attempt {d.attempt_id} of {d.run_id}/{d.task_key}")
        task = self._task(d.run_id, d.task_key)
        if task is None:
            raise StaleAttemptRejected(f"unknown task {d.run_id}/{d.task_key}")
        attempt_id, attempt, state = task.attempt_id, task.attempt, task.state
        if attempt_id == d.attempt_id and attempt == d.attempt and state not in _LIVE:
            raise StaleAttemptRejected(
                f"attempt {d.attempt} ({d.attempt_id}) of {d.run_id}/{d.task_key} has already ended "
                f"(task {state})"
            )
        if attempt_id != d.attempt_id or attempt != d.attempt:
            raise StaleAttemptRejected(
                f"attempt {d.attempt} ({d.attempt_id}) of {d.run_id}/{d.task_key} is not current "
                f"(current: attempt {attempt} ({attempt_id}), task {state})"
            )
        return task

    def _fact(self, d: Delivery, worker_id: str) -> dict[str, Any]:
        return {
            "run_id": d.run_id,
            "task_key": d.task_key,
            "attempt": d.attempt,
            "attempt_id": d.attempt_id,
            "worker_id": utf8_safe(worker_id),
        }

    @_observed("started")
    def started(self, d: Delivery, worker_id: str) -> None:
        """The worker began the attempt."""
        self._check(d)
        self._append("TaskStarted", self._fact(d, worker_id), d.traceparent)

    @_observed("heartbeat")
    def heartbeat(self, d: Delivery, worker_id: str, at: datetime, progress_pct: int | None = None) -> None:
        """The worker is alive."""
        from servo.core.events import format_timestamp

        self._check(d)
        data = self._fact(d, worker_id)
        data["heartbeat_at"] = format_timestamp(at)
        if progress_pct is not None:
            data["progress_pct"] = progress_pct
        self._append("TaskHeartbeat", data, d.traceparent)

    @_observed("finished")
    def finished(self, d: Delivery, worker_id: str, outcome: str, error_message: str | None = None) -> None:
        """The attempt ended (SUCCEEDED / FAILED / CANCELLED)."""
        if outcome not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise CallbackRejected(f"outcome must be SUCCEEDED, FAILED or CANCELLED, not {outcome!r}")
        task = self._check(d)
        data = self._fact(d, worker_id)
        data["outcome"] = outcome
        if error_message:
            data["error_message"] = clip(utf8_safe(error_message))
        # An asset task's finish names its partition (from the plan: SPEC §7 folds
        # partition status from these), and a success names its materialization.
        if task.asset_key is not None:
            data["asset_key"] = task.asset_key
            if task.partition_key is not None:
                data["partition_key"] = task.partition_key
            if outcome == "SUCCEEDED":
                data["materialization_id"] = d.attempt_id
        self._append("TaskFinished", data, d.traceparent)


class StaleAttemptRejected(CallbackRejected, StaleAttempt):
    """The callback names an attempt that is no longer current (answer 409)."""

    status = 409
