"""Durable timers: retry and heartbeat-check intents, and the timer handler.

Every timer acts only once the projection watermark is at or past its fire_at
(INV-9); before that the handler reschedules it with a new, later timer. So a
heartbeat that is in the ledger but not yet folded can never fail its task: by the
time the check acts, every event up to fire_at is in the projection it reads.

Times come from the view, never from a clock: an attempt ended at the instant of the
event that ended it (the task's row_version, a ULID), it was dispatched at the
instant in its attempt_id (a ULID minted at dispatch), and its last sign of life is
the newest of that, started_at and last_heartbeat_at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from servo.core.controllers._emit import ControllerConfig, Emitter
from servo.core.controllers._view import (
    LIVE_TASK_STATES,
    TERMINAL_RUN_STATES,
    ProjectionView,
    RunRecord,
    TaskRecord,
    TimerRecord,
)
from servo.core.events import Event, format_timestamp
from servo.core.ids import (
    heartbeat_timer_id,
    is_ulid,
    retry_backoff,
    retry_timer_id,
    sla_timer_id,
    ulid_timestamp,
)

__all__ = [
    "attempt_ended_at",
    "check_second",
    "derived_jitter",
    "heartbeat_intents",
    "last_sign_of_life",
    "on_timer_fired",
    "reschedule_second",
    "retry_delay",
    "retry_intents",
    "retry_second",
    "sla_intents",
    "timer_is_moot",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JITTER_BITS = 53  # a double holds 53 bits exactly: k / 2**53 < 1 for every k


def derived_jitter(run_id: str, task_key: str, attempt: int) -> float:
    """Jitter in [0, 1) that is a pure function of the attempt (no random source).

    Different tasks (and attempts) spread their retries; replicas agree on the value.

    post: 0.0 <= __return__ < 1.0
    """
    digest = hashlib.sha256(f"{run_id}\x00{task_key}\x00{attempt}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _JITTER_BITS)) / float(2**_JITTER_BITS)


def retry_delay(task: TaskRecord, config: ControllerConfig, run: RunRecord | None = None) -> timedelta:
    """Backoff after the task's current (failed) attempt, capped, jittered, in ms: by the
    task's own policy from its run's labels, else the config's."""
    own = None if run is None else run.retry_policy(task.task_key)
    base_sec, factor, cap_sec = own or (config.retry_base_sec, config.retry_factor, config.retry_cap_sec)
    seconds = retry_backoff(
        max(task.attempt, 1),
        base_sec=base_sec,
        factor=factor,
        cap_sec=cap_sec,
        jitter=derived_jitter(task.run_id, task.task_key, task.attempt),
    )
    return timedelta(milliseconds=round(seconds * 1000))


def attempt_ended_at(task: TaskRecord, now: datetime) -> datetime:
    """When the task's current attempt ended: the instant of its row_version event."""
    if is_ulid(task.row_version):
        return ulid_timestamp(task.row_version)
    return task.finished_at or now


def last_sign_of_life(task: TaskRecord, now: datetime) -> datetime:
    """The newest of dispatch time (from attempt_id), started_at and last_heartbeat_at."""
    signs = [t for t in (task.last_heartbeat_at, task.started_at) if t is not None]
    if task.attempt_id is not None and is_ulid(task.attempt_id):
        signs.append(ulid_timestamp(task.attempt_id))
    if not signs:
        signs.append(task.ready_at or now)
    return max(signs)


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


# Timer ids embed whole seconds. These three rules pick them; their contracts (PEP 316,
# checked by CrossHair) are what keeps the timer chains from livelocking: a new id is
# never one already used for the same attempt (a repeat would be a DUPLICATE and the
# intent would be re-emitted forever), and a reschedule is always strictly later.


def retry_second(fire_ms: int, used_seconds: list[int]) -> int:
    """The id second of a retry timer due at `fire_ms`: its own second, or the first
    one after every retry timer the attempt already had.

    post: __return__ >= fire_ms // 1000
    post: all(__return__ > s for s in used_seconds)
    """
    return max([fire_ms // 1000, *(s + 1 for s in used_seconds)])


def check_second(due_ms: int, used_seconds: list[int]) -> int:
    """The second of a heartbeat check due at `due_ms`: the first whole second at or
    after it that is later than every check the attempt already had.

    post: __return__ * 1000 >= due_ms
    post: all(__return__ > s for s in used_seconds)
    """
    return max([-(-due_ms // 1000), *(s + 1 for s in used_seconds)])


def reschedule_second(fire_ms: int, now_ms: int, lag_recheck_sec: int) -> int:
    """The second a timer the watermark has not reached is rescheduled to.

    post: __return__ * 1000 > fire_ms
    post: __return__ * 1000 > now_ms
    post: __return__ * 1000 >= max(fire_ms, now_ms) + 1000 * max(1, lag_recheck_sec)
    """
    return -(-max(fire_ms, now_ms) // 1000) + max(1, lag_recheck_sec)


def _at(epoch: int) -> datetime:
    return _EPOCH + timedelta(seconds=epoch)


def _run_is_running(view: ProjectionView, run_id: str) -> bool:
    run = view.runs.get(run_id)
    return run is not None and run.state == "RUNNING"


def _timer_request(emit: Emitter, timer_id: str, timer_type: str, task: TaskRecord | TimerRecord,
                   attempt: int | None, fire_at: datetime) -> Event:
    return emit.emit(
        "TimerRequested",
        {
            "timer_id": timer_id,
            "timer_type": timer_type,
            "run_id": task.run_id,
            "task_key": task.task_key,
            "attempt": attempt,
            "fire_at": format_timestamp(fire_at),
        },
    )


# ------------------------------------------------------------------ intents --


def retry_intents(view: ProjectionView, emit: Emitter) -> list[Event]:
    """A RETRY timer for every RETRY_WAIT task that has no scheduled one for its attempt."""
    out: list[Event] = []
    for task in view.tasks.values():
        if task.state != "RETRY_WAIT" or not _run_is_running(view, task.run_id):
            continue
        timers = view.timers_of("RETRY", task.run_id, task.task_key, task.attempt)
        if any(t.state == "SCHEDULED" for t in timers):
            continue
        fire_at = attempt_ended_at(task, emit.now) + retry_delay(task, emit.config, view.runs.get(task.run_id))
        epoch = retry_second(_ms(fire_at), [_ms(t.fire_at) // 1000 for t in timers])
        if epoch != _ms(fire_at) // 1000:
            fire_at = _at(epoch)
        timer_id = retry_timer_id(task.run_id, task.task_key, task.attempt, epoch)
        out.append(_timer_request(emit, timer_id, "RETRY", task, task.attempt, fire_at))
    return out


def _next_heartbeat_check(task: TaskRecord, after: datetime, timers: tuple[TimerRecord, ...]) -> tuple[int, datetime]:
    """The first whole second at or after `after` that no check of this attempt used."""
    epoch = check_second(_ms(after), [_ms(t.fire_at) // 1000 for t in timers])
    return epoch, _at(epoch)


def heartbeat_intents(view: ProjectionView, emit: Emitter) -> list[Event]:
    """A HEARTBEAT_CHECK timer for every live attempt without a scheduled one.

    It fires `heartbeat_timeout_sec` after the attempt's last sign of life; a task
    with a zero timeout is not watched.
    """
    out: list[Event] = []
    for task in view.tasks.values():
        if task.state not in LIVE_TASK_STATES:  # inline `is_live`: every task, every loop
            continue
        if task.heartbeat_timeout_sec <= 0 or not _run_is_running(view, task.run_id):
            continue
        timers = view.timers_of("HEARTBEAT_CHECK", task.run_id, task.task_key, task.attempt)
        if any(t.state == "SCHEDULED" for t in timers):
            continue
        due = last_sign_of_life(task, emit.now) + timedelta(seconds=task.heartbeat_timeout_sec)
        epoch, fire_at = _next_heartbeat_check(task, due, timers)
        timer_id = heartbeat_timer_id(task.run_id, task.task_key, task.attempt, epoch)
        out.append(_timer_request(emit, timer_id, "HEARTBEAT_CHECK", task, task.attempt, fire_at))
    return out


def _sla_request(emit: Emitter, run_id: str, epoch: int) -> Event:
    at = _at(epoch)
    data = {"timer_id": sla_timer_id(run_id, epoch), "timer_type": "SLA_CHECK", "run_id": run_id}
    return emit.emit("TimerRequested", {**data, "fire_at": format_timestamp(at)})


def sla_intents(view: ProjectionView, emit: Emitter) -> list[Event]:
    """One SLA_CHECK timer per running run that has an SLA (labels `servo.sla_sec`,
    `servo.on_sla_miss`), due `sla_sec` after the run was created (its first whole
    second at or after that). A run that already has one (scheduled, fired or
    rescheduled) gets no other from here."""
    out: list[Event] = []
    for run in view.runs.values():
        if run.state != "RUNNING" or run.sla_sec is None or run.created_at is None:
            continue
        if view.timers_of("SLA_CHECK", run.run_id, None, None):
            continue
        due = run.created_at + timedelta(seconds=run.sla_sec)
        out.append(_sla_request(emit, run.run_id, -(-_ms(due) // 1000)))
    return out


def _sla_verdict(view: ProjectionView, timer: TimerRecord, emit: Emitter) -> list[Event]:
    """The run missed its SLA (it is not over at fire_at, and the watermark says every
    event before fire_at is folded): RunCancelRequested if it asked for that; either
    way the driver reports the miss (a log line and a metric)."""
    run = view.runs.get(timer.run_id) if timer.run_id is not None else None
    if run is None or run.state in TERMINAL_RUN_STATES or not run.cancel_on_sla_miss:
        return []
    reason = f"the run missed its SLA of {run.sla_sec:g} s" if run.sla_sec is not None else "the run missed its SLA"
    return [emit.emit("RunCancelRequested", {"run_id": run.run_id, "reason": reason, "requested_by": "servo:sla"})]


# ------------------------------------------------------------------ handler --


def _reschedule(timer: TimerRecord, emit: Emitter) -> list[Event]:
    """A new timer of the same kind, later than both fire_at and now (INV-9)."""
    # At least a second past both fire_at and now: the new id differs from this one.
    epoch = reschedule_second(_ms(timer.fire_at), _ms(emit.now), emit.config.lag_recheck_sec)
    if timer.timer_type == "SLA_CHECK" and timer.run_id is not None:
        return [_sla_request(emit, timer.run_id, epoch)]
    if timer.run_id is None or timer.task_key is None or timer.attempt is None:
        return []  # run-less timers (cron) belong to Layer 2's handlers
    make_id = retry_timer_id if timer.timer_type == "RETRY" else heartbeat_timer_id
    timer_id = make_id(timer.run_id, timer.task_key, timer.attempt, epoch)
    return [_timer_request(emit, timer_id, timer.timer_type, timer, timer.attempt, _at(epoch))]


def _fired(timer: TimerRecord, emit: Emitter) -> Event:
    return emit.emit(
        "TimerFired",
        {
            "timer_id": timer.timer_id,
            "timer_type": timer.timer_type,
            "run_id": timer.run_id,
            "task_key": timer.task_key,
            "attempt": timer.attempt,
        },
    )


def _heartbeat_verdict(
    view: ProjectionView, timer: TimerRecord, emit: Emitter, waiting: Container[str] = frozenset()
) -> list[Event]:
    """AttemptTimedOut if the checked attempt showed no life since fire_at - timeout,
    else the next check; nothing if the attempt is no longer the live one. A dispatched
    attempt still `waiting` in its queue counts as alive now."""
    if timer.run_id is None or timer.task_key is None:
        return []
    task = view.task(timer.run_id, timer.task_key)
    if task is None or not task.is_live or task.attempt != timer.attempt or not _run_is_running(view, task.run_id):
        return []
    timeout = timedelta(seconds=task.heartbeat_timeout_sec)
    alive_at = last_sign_of_life(task, emit.now)
    if task.state == "DISPATCHED" and task.attempt_id in waiting:
        alive_at = max(alive_at, emit.now)
    if alive_at > timer.fire_at - timeout:
        timers = view.timers_of("HEARTBEAT_CHECK", task.run_id, task.task_key, task.attempt)
        epoch, fire_at = _next_heartbeat_check(task, alive_at + timeout, timers)
        timer_id = heartbeat_timer_id(task.run_id, task.task_key, task.attempt, epoch)
        return [_timer_request(emit, timer_id, "HEARTBEAT_CHECK", task, task.attempt, fire_at)]
    return [
        emit.emit(
            "AttemptTimedOut",
            {
                "run_id": task.run_id,
                "task_key": task.task_key,
                "attempt": task.attempt,
                "attempt_id": task.attempt_id,
                "reason": "HEARTBEAT_TIMEOUT" if task.state == "RUNNING" else "DISPATCH_TIMEOUT",
            },
        )
    ]


def timer_is_moot(view: ProjectionView, timer: TimerRecord) -> bool:
    """A retry or heartbeat timer whose task is terminal or has moved past its attempt;
    an SLA check of a run that has ended.

    Both are final in the fold (a terminal task never leaves its state; attempts only
    grow), so a moot timer stays moot however stale the view is.
    """
    if timer.timer_type == "SLA_CHECK" and timer.run_id is not None:
        run = view.runs.get(timer.run_id)
        return run is not None and run.state in TERMINAL_RUN_STATES  # a run that ended stays ended
    if timer.timer_type not in ("RETRY", "HEARTBEAT_CHECK") or timer.run_id is None or timer.task_key is None:
        return False
    task = view.task(timer.run_id, timer.task_key)
    if task is None:
        return False
    return task.is_terminal or (timer.attempt is not None and task.attempt > timer.attempt)


def on_timer_fired(
    view: ProjectionView,
    timer: TimerRecord,
    now: datetime,
    watermark: datetime,
    *,
    tenant: str,
    workspace: str,
    config: ControllerConfig,
    source: str = "timer-handler",
    waiting: Container[str] = frozenset(),
) -> list[Event]:
    """What the handler emits when the queue delivers `timer` (at `now`).

    `waiting`: attempt ids whose dispatch the caller's queue still holds, undelivered
    or leased by a live worker: they wait for a free worker and are not lost, so a
    heartbeat check of one that never started looks again later instead of ending it
    DISPATCH_TIMEOUT (the caller saw the queue; a lost queue task is not in it).

    - not SCHEDULED (already fired or cancelled): nothing; a duplicate delivery.
    - moot (`timer_is_moot`): TimerFired at once, whatever the watermark: the task
      is terminal or past that attempt, which no later event can undo, so there is
      nothing left for freshness to protect and no point rescheduling.
    - watermark < fire_at: a later timer of the same kind, nothing else (INV-9).
    - RETRY: TimerFired (the fold moves the task RETRY_WAIT -> READY).
    - HEARTBEAT_CHECK: the verdict (AttemptTimedOut or the next check), then TimerFired.
    - SLA_CHECK: the run missed its SLA: RunCancelRequested if it asked for a cancel,
      then TimerFired.

    TimerFired comes last so a crash part-way leaves the timer SCHEDULED and the
    redelivered handler decides again (its events repeat under the same keys). It is
    folded first, though: the verdict is stamped a millisecond after it, so its id
    sorts after TimerFired's (ids of one millisecond order by a hash of their keys).
    The fold then sees the check fire, then what it decided: an SLA cancel, folded
    first, would cancel the still SCHEDULED check and have its TimerFired refused.
    """
    if timer.state != "SCHEDULED":
        return []
    emit = Emitter(config, tenant, workspace, now, source)
    if timer_is_moot(view, timer):
        return [_fired(timer, emit)]
    if watermark < timer.fire_at:
        return _reschedule(timer, emit)
    out: list[Event] = []
    after = replace(emit, now=now + timedelta(milliseconds=1))  # folded after TimerFired
    if timer.timer_type == "HEARTBEAT_CHECK":
        out.extend(_heartbeat_verdict(view, timer, after, waiting))
    elif timer.timer_type == "SLA_CHECK":
        out.extend(_sla_verdict(view, timer, after))
    out.append(_fired(timer, emit))
    return out
