"""Prometheus metrics of the I/O shells (SPEC §6 Observability).

Every family lives in one servo-owned registry, `REGISTRY`, so importing Servo
registers nothing globally and tests read exact values. To expose it next to an
application's own metrics, register it into the default registry
(`prometheus_client.REGISTRY.register(servo.obs.REGISTRY)`) or serve it alone
(`serve_metrics(port)`, what `servo run --metrics-port` does).

Only shells are instrumented (driver, compactor, ledger, queue, callback service):
the fold and the controllers stay pure. An exception that leaves an instrumented
block is counted once in `servo_errors_total{component, error_type}`, by the
innermost component it passed through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import wraps
from typing import Any, Final, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "CALLBACK_SECONDS",
    "COMPACTION_SECONDS",
    "ERRORS",
    "EVENTS_APPENDED",
    "EVENTS_REJECTED",
    "FINISH_TO_DISPATCH_SECONDS",
    "LEDGER_APPEND_SECONDS",
    "MANIFEST_PUBLISH_SECONDS",
    "QUEUE_DEPTH",
    "QUEUE_OPERATION_SECONDS",
    "RECONCILE_SECONDS",
    "REGISTRY",
    "RUN_SLA_MISSED",
    "TASK_EXECUTION_SECONDS",
    "count_appended",
    "count_rejected",
    "observe",
    "observe_dispatch_latency",
    "record_error",
    "serve_metrics",
    "set_queue_depth",
    "timed",
]

P = ParamSpec("P")
R = TypeVar("R")

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""The registry holding every servo_* family."""

# Shell operations take from ~50 µs (a SQLite lease) to seconds (a base merge).
_FAST: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = _FAST) -> Histogram:
    return Histogram(name, doc, labels, registry=REGISTRY, buckets=buckets)


COMPACTION_SECONDS: Final = _histogram(
    "servo_compaction_seconds", "One micro-compaction: fold new events, write deltas, publish a manifest."
)
MANIFEST_PUBLISH_SECONDS: Final = _histogram(
    "servo_manifest_publish_seconds", "Create-only publish of one manifest object."
)
LEDGER_APPEND_SECONDS: Final = _histogram(
    "servo_ledger_append_seconds", "One ledger append call (one event, or a group commit of many)."
)
QUEUE_OPERATION_SECONDS: Final = _histogram(
    "servo_queue_operation_seconds", "One task-queue call.", ("backend", "operation")
)
RECONCILE_SECONDS: Final = _histogram(
    "servo_reconcile_seconds", "One controller pass (reconcile) over the published projection."
)
CALLBACK_SECONDS: Final = _histogram(
    "servo_callback_seconds", "Validating and appending one worker callback.", ("callback",)
)
TASK_EXECUTION_SECONDS: Final = _histogram(
    "servo_task_execution_seconds", "Wall time of one task attempt in a worker.", ("outcome",), _SLOW
)
FINISH_TO_DISPATCH_SECONDS: Final = _histogram(
    "servo_finish_to_dispatch_seconds",
    "From the upstream finish that made a task READY to its first attempt entering the queue.",
    (),
    _SLOW,
)
ERRORS: Final = Counter(
    "servo_errors", "Errors by the component that saw them and their type.", ("component", "error_type"), registry=REGISTRY
)
QUEUE_DEPTH: Final = Gauge(
    "servo_queue_depth", "Pending queue tasks: ready (due), leased (held by a worker), scheduled (due later).",
    ("state",), registry=REGISTRY,
)
EVENTS_APPENDED: Final = Counter(
    "servo_events_appended", "Events newly appended to the ledger, by type.", ("event_type",), registry=REGISTRY
)
RUN_SLA_MISSED: Final = Counter(
    "servo_run_sla_missed", "Runs whose SLA check found them still going, by what was done (alert, cancel).",
    ("action",), registry=REGISTRY,
)
EVENTS_REJECTED: Final = Counter(
    "servo_events_rejected", "Events the fold recorded in rejected_events, by reason.", ("reason",), registry=REGISTRY
)

for _state in ("ready", "leased", "scheduled"):
    QUEUE_DEPTH.labels(_state).set(0)

_COUNTED: Final = "_servo_error_counted"


def record_error(component: str, error: BaseException) -> bool:
    """Count `error` under `component` unless an inner component already did; True if counted now."""
    if getattr(error, _COUNTED, False):
        return False
    ERRORS.labels(component, type(error).__name__).inc()
    with suppress(AttributeError):  # exceptions with __slots__ only
        setattr(error, _COUNTED, True)
    return True


@contextmanager
def observe(histogram: Histogram, component: str) -> Iterator[None]:
    """Time the block into `histogram` (a histogram or one labelled child); count what escapes."""
    started = time.perf_counter()
    try:
        yield
    except BaseException as error:
        if isinstance(error, Exception):
            record_error(component, error)
        raise
    finally:
        histogram.observe(time.perf_counter() - started)


def timed(histogram: Histogram, component: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate an I/O method: its latency goes to `histogram`, its exceptions to `servo_errors_total`."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                record_error(component, error)
                raise
            finally:
                histogram.observe(time.perf_counter() - started)

        return wrapper

    return decorate


def count_appended(event_types: Iterable[str], created: Iterable[bool]) -> None:
    """Count the events an append call newly wrote (repeats of stored events are not counted)."""
    for event_type, new in zip(event_types, created, strict=False):
        if new:
            EVENTS_APPENDED.labels(event_type).inc()


def count_rejected(rows: Iterable[Mapping[str, Any]], folded: Iterable[str]) -> None:
    """Count the `rejected_events` rows of the events just folded (a refold repeats older rows)."""
    new = set(folded)
    for row in rows:
        if row.get("event_id") in new:
            EVENTS_REJECTED.labels(str(row.get("reason"))).inc()


def set_queue_depth(depths: Mapping[str, int]) -> None:
    """Set the queue-depth gauge from a `{state: count}` mapping."""
    for state, count in depths.items():
        QUEUE_DEPTH.labels(state).set(count)


def observe_dispatch_latency(ready_at: datetime | None, now: datetime) -> None:
    """Record finish → dispatch for a task made READY by its upstream's finish at `ready_at`."""
    if ready_at is not None:
        FINISH_TO_DISPATCH_SECONDS.observe(max((now - ready_at).total_seconds(), 0.0))


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Callable[[], None]:
    """Serve `REGISTRY` on http://addr:port/metrics in a daemon thread; return a stop function."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
