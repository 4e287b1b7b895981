"""The worker contract: deliveries, per-attempt tokens, validated callbacks, and the
standalone HTTP worker behind `servo worker` (imported on first use: it needs httpx)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servo.worker._contract import (
    DISPATCH,
    CallbackRejected,
    CallbackService,
    Delivery,
    FactClock,
    ForgedCallback,
    StaleAttemptRejected,
    attempt_token,
    describe_error,
    dispatch_target,
    error_text,
    progress_percent,
)

if TYPE_CHECKING:
    from servo.worker._http import HttpWorker, ServerUnreachable

__all__ = [
    "DISPATCH",
    "CallbackRejected",
    "CallbackService",
    "Delivery",
    "FactClock",
    "ForgedCallback",
    "HttpWorker",
    "ServerUnreachable",
    "StaleAttemptRejected",
    "attempt_token",
    "describe_error",
    "dispatch_target",
    "error_text",
    "progress_percent",
]

_LAZY = frozenset({"HttpWorker", "ServerUnreachable"})


def __getattr__(name: str) -> Any:
    """Import the HTTP worker only when it is asked for."""
    if name in _LAZY:
        from servo.worker import _http

        return getattr(_http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
