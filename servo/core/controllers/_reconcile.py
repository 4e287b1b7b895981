"""`reconcile` and `repair`: the controllers a driver runs on every projection it reads.

Both are pure: a view, `now` and the watermark in, events out. The driver does the
I/O (read the published tables, append what these return). Running them twice, on
two replicas, or again after a crash is safe: every event carries its catalog
idempotency key and a deterministic id, and the fold keeps one event per key (INV-3).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from servo.core.controllers import _dispatch, _timers
from servo.core.controllers._emit import ControllerConfig, Emitter, dedupe
from servo.core.controllers._view import ProjectionView, TimerRecord
from servo.core.events import Event

__all__ = ["overdue_timers", "reconcile", "repair"]


def reconcile(
    view: ProjectionView,
    now: datetime,
    watermark: datetime,
    *,
    tenant: str,
    workspace: str,
    config: ControllerConfig,
) -> list[Event]:
    """Intents for the current projection: dispatches, retry, heartbeat and SLA timers.

    `watermark` is accepted for symmetry with the timer handler; the intents here
    only ever ask for work to happen later, so they need no freshness guard (a stale
    view repeats an intent under the same idempotency key, which the fold drops).
    """
    del watermark
    emit = Emitter(config, tenant, workspace, now, config.source)
    events = _dispatch.ready_intents(view, emit)
    events += _timers.retry_intents(view, emit)
    events += _timers.heartbeat_intents(view, emit)
    events += _timers.sla_intents(view, emit)
    return dedupe(events)


def overdue_timers(view: ProjectionView, watermark: datetime, config: ControllerConfig) -> list[TimerRecord]:
    """SCHEDULED timers of running runs whose fire_at is `repair_grace_sec` behind the
    watermark, skipping one that a later scheduled timer of the same kind superseded
    (the handler rescheduled it)."""
    grace = timedelta(seconds=config.repair_grace_sec)
    out: list[TimerRecord] = []
    for timer in view.timers.values():
        if timer.state != "SCHEDULED" or timer.run_id is None:
            continue
        if (timer.task_key is None or timer.attempt is None) and timer.timer_type != "SLA_CHECK":
            continue
        run = view.runs.get(timer.run_id)
        if run is None or run.state != "RUNNING" or timer.fire_at + grace > watermark:
            continue
        siblings = view.timers_of(timer.timer_type, timer.run_id, timer.task_key, timer.attempt)
        if any(t.state == "SCHEDULED" and t.fire_at > timer.fire_at for t in siblings):
            continue
        out.append(timer)
    return out


def repair(
    view: ProjectionView,
    now: datetime,
    watermark: datetime,
    *,
    tenant: str,
    workspace: str,
    config: ControllerConfig,
) -> list[Event]:
    """Anti-entropy: re-emit every intent for stuck work and handle overdue timers.

    READY tasks never dispatched, RETRY_WAIT tasks without a retry timer and live
    attempts without a heartbeat check get their intents again (as `reconcile`);
    a SCHEDULED timer long past its fire_at (its queue task lost) is handled here as
    if the queue had delivered it, behind the same watermark guard (INV-5, INV-9).
    """
    events = reconcile(view, now, watermark, tenant=tenant, workspace=workspace, config=config)
    for timer in overdue_timers(view, watermark, config):
        events += _timers.on_timer_fired(
            view, timer, now, watermark, tenant=tenant, workspace=workspace, config=config, source="repair"
        )
    return dedupe(events)
