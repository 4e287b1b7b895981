"""Structured logs: a human format by default, one JSON object per line on demand.

Every record under the ``servo`` logger carries the ids of what it is about —
tenant_id, workspace_id, run_id, task_key, attempt, attempt_id, trace_id — taken
from a context variable that the shells set with `log_context(...)` around a run
and around each attempt (a worker thread sets its own). Fields passed with
``extra=`` (``component``, ``error_type``, ``outcome``, ...) are kept as well.

    {"ts": "2026-01-01T00:00:00.123Z", "level": "WARNING", "logger": "servo.worker",
     "msg": "task broken attempt 1 failed: ...", "run_id": "run_...", "task_key": "broken",
     "attempt": 1, "attempt_id": "01J...", "trace_id": "4bf9...", "component": "task",
     "error_type": "InjectedError"}

Logs go to stderr, looked up at each write, so a Rich live display that redirects
stderr prints them above itself; stdout (``--json``) is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, Final

__all__ = [
    "CONTEXT_FIELDS",
    "HumanFormatter",
    "JsonFormatter",
    "bind",
    "configure_logging",
    "current_context",
    "log_context",
    "unbind",
]

CONTEXT_FIELDS: Final = ("tenant_id", "workspace_id", "run_id", "task_key", "attempt", "attempt_id", "trace_id")
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("servo_log_context", default=_EMPTY)
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

logging.getLogger("servo").addHandler(logging.NullHandler())  # a library stays quiet unless configured


def bind(**ids: Any) -> Token[Mapping[str, Any]]:
    """Add ids to this thread's log context until `unbind(token)` (None values are skipped)."""
    return _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}}))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    """Restore the log context `bind` replaced."""
    _CONTEXT.reset(token)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Add ids to every servo log record written inside the block (None values are skipped)."""
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> Mapping[str, Any]:
    """The ids `log_context` has set in this thread/task."""
    return _CONTEXT.get()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = dict(_CONTEXT.get())
    out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_"))
    return out


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the context ids, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        body: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(_fields(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_CONTROL_BUT_NEWLINES = {c: text for c, text in _CONTROL.items() if c != 0x0A}


class HumanFormatter(logging.Formatter):
    """`time LEVEL logger: message [key=value ...]` for people at a terminal.

    A message is one line: its control characters (a task's error text may hold
    newlines or terminal escape codes) are escaped, so it cannot forge another line
    or drive the terminal. A traceback keeps its line breaks, nothing else.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        """The line, its message escaped (on a copy: other handlers see the record as is)."""
        shown = logging.makeLogRecord(record.__dict__)
        shown.message = record.message.translate(_CONTROL)
        return super().formatMessage(shown)

    def formatException(self, ei: Any) -> str:  # logging's name
        """The traceback, its lines kept and any other control character escaped."""
        return super().formatException(ei).translate(_CONTROL_BUT_NEWLINES)

    def format(self, record: logging.LogRecord) -> str:
        """The record with its ids appended."""
        text = super().format(record)
        fields = _fields(record)
        shown = " ".join(f"{k}={fields[k]}" for k in ("run_id", "task_key", "attempt") if k in fields)
        return f"{text} [{shown}]" if shown else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at each record (Rich's Live swaps it)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the current stderr (or the fixed stream)."""
        self.stream = self._fixed if self._fixed is not None else sys.stderr
        super().emit(record)


_installed: logging.Handler | None = None


def configure_logging(fmt: str | None = None, level: str | int | None = None, *, stream: IO[str] | None = None) -> logging.Handler:
    """Install the one servo log handler (replacing a previous one) and return it.

    `fmt` is "human" or "json" (default: $SERVO_LOG_FORMAT, else human); `level` a
    level name or number (default: $SERVO_LOG_LEVEL, else WARNING). `stream`
    defaults to the current stderr.
    """
    global _installed
    chosen = (fmt or os.environ.get("SERVO_LOG_FORMAT") or "human").lower()
    if chosen not in ("human", "json"):
        raise ValueError(f"log format must be human or json, not {chosen!r}")
    raw = level if level is not None else os.environ.get("SERVO_LOG_LEVEL", "WARNING")
    numeric = raw if isinstance(raw, int) else logging.getLevelName(str(raw).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {raw!r}")
    handler = _StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else HumanFormatter())
    logger = logging.getLogger("servo")
    if _installed is not None:
        logger.removeHandler(_installed)
    logger.addHandler(handler)
    logger.setLevel(numeric)
    _installed = handler
    return handler
