# GENERATED from spec/machines/timer.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `timer` machine.

A durable timer (retry, heartbeat check, stuck-dispatch repair, cron, SLA). The timer
handler emits TimerFired only once the projection watermark is at or past fire_at
(INV-9); otherwise it reschedules itself with a new timer. Cancelling a run cancels its
scheduled timers.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["TimerMachine"]


class TimerMachine(ReferenceMachine):
    """The `timer` machine (table `timers`)."""

    MACHINE: ClassVar[str] = "timer"
    SOURCE: ClassVar[str] = "spec/machines/timer.toml"
    INITIAL: ClassVar[str] = "SCHEDULED"
    TERMINAL: ClassVar[tuple[str, ...]] = ("CANCELLED", "FIRED")
    EVENTS: ClassVar[tuple[str, ...]] = ("TimerEnqueued", "TimerFired", "RunCancelRequested")
    GUARDS: ClassVar[tuple[str, ...]] = ("cloud_task_id_matches", "timer_fields_match")

    scheduled = State("SCHEDULED", value="SCHEDULED", initial=True)
    cancelled = State("CANCELLED", value="CANCELLED", final=True)
    fired = State("FIRED", value="FIRED", final=True)

    timer_enqueued = Event(
        # transitions[0]: SCHEDULED -> SCHEDULED; effects: none
        scheduled.to(scheduled, cond=["cloud_task_id_matches"]),
        id="TimerEnqueued",
        name="TimerEnqueued",
    )

    timer_fired = Event(
        # transitions[1]: SCHEDULED -> FIRED; effects: none
        scheduled.to(fired, cond=["timer_fields_match"]),
        id="TimerFired",
        name="TimerFired",
    )

    run_cancel_requested = Event(
        # transitions[2]: SCHEDULED -> CANCELLED; effects: none
        scheduled.to(cancelled),
        id="RunCancelRequested",
        name="RunCancelRequested",
    )

    def cloud_task_id_matches(self) -> bool:
        """Guard `cloud_task_id_matches`: holds when the facts of the event say so."""
        return self._fact("cloud_task_id_matches")

    def timer_fields_match(self) -> bool:
        """Guard `timer_fields_match`: holds when the facts of the event say so."""
        return self._fact("timer_fields_match")
