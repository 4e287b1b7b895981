"""W3C trace context from trigger to callback, through the OpenTelemetry API.

    RunTriggered.traceparent       span "servo.run"      (a new trace, or the caller's)
      DispatchRequested, timers    the run's traceparent (every controller event of the run)
      Delivery.traceparent         span "servo.dispatch" (child of the run span)
        TaskStarted/Heartbeat/     span "servo.task"     (child of the dispatch span,
        Finished.traceparent                              current while the task runs)

Servo depends on `opentelemetry-api` only. With an SDK installed (a real
TracerProvider), these are real spans and exported. Without one the API's
no-op tracer yields invalid contexts, so Servo makes the ids itself: a random
trace id per run and span ids derived from (parent, seed) — deterministic, so an
event emitted twice for the same key still has byte-identical envelopes.
A traceparent never enters an idempotency key or an event id.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "child_traceparent",
    "mark_span_failed",
    "new_run_traceparent",
    "parse_traceparent",
    "task_span",
    "trace_id_of",
]

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.get_tracer("servo")
"""A proxy: it becomes the SDK's tracer once an application installs a provider."""


def parse_traceparent(traceparent: str | None) -> SpanContext | None:
    """The span context a traceparent names, or None when absent or malformed."""
    if not traceparent:
        return None
    ctx = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent})).get_span_context()
    return ctx if ctx.is_valid else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id of a traceparent (None when absent or malformed)."""
    ctx = parse_traceparent(traceparent)
    return None if ctx is None else f"{ctx.trace_id:032x}"


def _format(ctx: SpanContext) -> str:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(ctx)))
    return carrier["traceparent"]


def _derived_span_id(parent: str, seed: str) -> int:
    digest = hashlib.sha256(f"{parent}\x1f{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _start(name: str, parent: SpanContext | None, attributes: Mapping[str, Any] | None) -> trace.Span:
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
    return _tracer.start_span(name, context=context, attributes=attributes)


def _real(span: trace.Span, parent: SpanContext | None) -> bool:
    """Whether the tracer made a span of its own (an SDK), not the no-op echo of its parent."""
    ctx = span.get_span_context()
    return ctx.is_valid and (parent is None or ctx.span_id != parent.span_id)


def new_run_traceparent(attributes: Mapping[str, Any] | None = None) -> str:
    """The traceparent of a newly triggered run: span "servo.run" in the caller's trace, if any."""
    ambient = trace.get_current_span().get_span_context()
    span = _start("servo.run", None, attributes)  # None: the current context is the parent
    span.end()
    if _real(span, ambient if ambient.is_valid else None):
        return _format(span.get_span_context())
    trace_id = ambient.trace_id if ambient.is_valid else secrets.randbits(128) or 1
    return _format(SpanContext(trace_id, secrets.randbits(64) or 1, False, TraceFlags(TraceFlags.SAMPLED)))


def child_traceparent(parent: str | None, name: str, seed: str, attributes: Mapping[str, Any] | None = None) -> str | None:
    """A child span of `parent` (ended at once, for a point in time like an enqueue); None without a parent."""
    with task_span(parent, name, seed, attributes, current=False) as traceparent:
        return traceparent


@contextmanager
def task_span(
    parent: str | None,
    name: str,
    seed: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    current: bool = True,
) -> Iterator[str | None]:
    """A child span of `parent` for the block; yields its traceparent (None without a valid parent).

    With `current`, the span is the active one inside the block, so spans a task
    function opens nest under it. An exception is recorded on the span and re-raised.
    """
    ctx = parse_traceparent(parent)
    if ctx is None or parent is None:
        yield None
        return
    span = _start(name, ctx, attributes)
    if _real(span, ctx):
        traceparent = _format(span.get_span_context())
    else:
        derived = SpanContext(ctx.trace_id, _derived_span_id(parent, seed), False, ctx.trace_flags)
        span = NonRecordingSpan(derived)
        traceparent = _format(derived)
    token = otel_context.attach(trace.set_span_in_context(span)) if current else None
    try:
        yield traceparent
    except BaseException as error:
        if span.is_recording():
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        if token is not None:
            otel_context.detach(token)
        span.end()


def mark_span_failed(error: BaseException) -> None:
    """Record `error` on the current span (the task span inside `task_span`), if it records."""
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
