"""Observability: Prometheus metrics, structured logs, W3C trace context (SPEC §6).

    servo.obs
    ├── metrics   REGISTRY and the servo_* families; `timed` / `observe` for I/O
    │             shells, `record_error`, `serve_metrics` (servo run --metrics-port)
    ├── logs      configure_logging("human" | "json", level), log_context(run_id=...)
    └── traces    new_run_traceparent, child_traceparent, task_span, trace_id_of

This package sits below every shell and imports nothing from Servo: the driver,
compactor, ledger, queue and callback service import it, never the pure core.
"""

from __future__ import annotations

from servo.obs._logging import (
    CONTEXT_FIELDS,
    HumanFormatter,
    JsonFormatter,
    bind,
    configure_logging,
    current_context,
    log_context,
    unbind,
)
from servo.obs._metrics import (
    CALLBACK_SECONDS,
    COMPACTION_SECONDS,
    ERRORS,
    EVENTS_APPENDED,
    EVENTS_REJECTED,
    FINISH_TO_DISPATCH_SECONDS,
    LEDGER_APPEND_SECONDS,
    MANIFEST_PUBLISH_SECONDS,
    QUEUE_DEPTH,
    QUEUE_OPERATION_SECONDS,
    RECONCILE_SECONDS,
    REGISTRY,
    RUN_SLA_MISSED,
    TASK_EXECUTION_SECONDS,
    count_appended,
    count_rejected,
    observe,
    observe_dispatch_latency,
    record_error,
    serve_metrics,
    set_queue_depth,
    timed,
)
from servo.obs._trace import (
    child_traceparent,
    mark_span_failed,
    new_run_traceparent,
    parse_traceparent,
    task_span,
    trace_id_of,
)

__all__ = [
    "CALLBACK_SECONDS",
    "COMPACTION_SECONDS",
    "CONTEXT_FIELDS",
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
    "HumanFormatter",
    "JsonFormatter",
    "bind",
    "child_traceparent",
    "configure_logging",
    "count_appended",
    "count_rejected",
    "current_context",
    "log_context",
    "mark_span_failed",
    "new_run_traceparent",
    "observe",
    "observe_dispatch_latency",
    "parse_traceparent",
    "record_error",
    "serve_metrics",
    "set_queue_depth",
    "task_span",
    "timed",
    "trace_id_of",
    "unbind",
]
