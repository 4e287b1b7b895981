"""Layer 1 controllers: pure functions from a projection view to events (SPEC §6).

    view = ProjectionView.from_tables(published_tables)
    events = reconcile(view, now, watermark, tenant=..., workspace=..., config=...)

No I/O, no clock, no randomness: `now`, the watermark and the catalog are passed in,
and event ids are derived from `now` and each event's idempotency key (ADR 005). The
dispatcher and timer queue are I/O; their decisions are the pure helpers here.
"""

from __future__ import annotations

from servo.core.controllers._dispatch import (
    CreateStatus,
    attempt_id_for,
    dispatch_enqueued_event,
    dispatch_outcome_events,
    pending_dispatches,
    ready_intents,
)
from servo.core.controllers._emit import ControllerConfig, Emitter, deterministic_ulid
from servo.core.controllers._reconcile import overdue_timers, reconcile, repair
from servo.core.controllers._timers import (
    attempt_ended_at,
    derived_jitter,
    heartbeat_intents,
    last_sign_of_life,
    on_timer_fired,
    retry_delay,
    retry_intents,
    sla_intents,
    timer_is_moot,
)
from servo.core.controllers._view import (
    ON_SLA_MISS_LABEL,
    RETRY_LABEL,
    RUN_STATES,
    SLA_LABEL,
    TERMINAL_RUN_STATES,
    OutboxRecord,
    ProjectionView,
    RunRecord,
    TaskRecord,
    TimerRecord,
    run_sla,
)

__all__ = [
    "ON_SLA_MISS_LABEL",
    "RETRY_LABEL",
    "RUN_STATES",
    "SLA_LABEL",
    "TERMINAL_RUN_STATES",
    "ControllerConfig",
    "CreateStatus",
    "Emitter",
    "OutboxRecord",
    "ProjectionView",
    "RunRecord",
    "TaskRecord",
    "TimerRecord",
    "attempt_ended_at",
    "attempt_id_for",
    "derived_jitter",
    "deterministic_ulid",
    "dispatch_enqueued_event",
    "dispatch_outcome_events",
    "heartbeat_intents",
    "last_sign_of_life",
    "on_timer_fired",
    "overdue_timers",
    "pending_dispatches",
    "ready_intents",
    "reconcile",
    "repair",
    "retry_delay",
    "retry_intents",
    "run_sla",
    "sla_intents",
    "timer_is_moot",
]
