# GENERATED from spec/machines/dispatch_outbox.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `dispatch_outbox` machine.

The outbox row of one attempt. DispatchRequested writes it PENDING; the dispatcher
creates the queue task (name = cloud_task_id, so a repeat is a no-op) and acknowledges
with DispatchEnqueued (CREATED). A worker fact for the attempt marks it ACKED; a
dispatch timeout marks it FAILED. Anti-entropy re-dispatches rows left PENDING.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["DispatchOutboxMachine"]


class DispatchOutboxMachine(ReferenceMachine):
    """The `dispatch_outbox` machine (table `dispatch_outbox`)."""

    MACHINE: ClassVar[str] = "dispatch_outbox"
    SOURCE: ClassVar[str] = "spec/machines/dispatch_outbox.toml"
    INITIAL: ClassVar[str] = "PENDING"
    TERMINAL: ClassVar[tuple[str, ...]] = ("FAILED",)
    EVENTS: ClassVar[tuple[str, ...]] = (
        "DispatchEnqueued",
        "TaskStarted",
        "TaskHeartbeat",
        "TaskFinished",
        "AttemptTimedOut",
    )
    GUARDS: ClassVar[tuple[str, ...]] = (
        "cloud_task_id_matches",
        "is_dispatch_timeout",
        "outbox_attempt_matches",
    )

    pending = State("PENDING", value="PENDING", initial=True)
    created = State("CREATED", value="CREATED")
    acked = State("ACKED", value="ACKED")
    failed = State("FAILED", value="FAILED", final=True)

    dispatch_enqueued = Event(
        # transitions[0]: PENDING -> CREATED; effects: none
        pending.to(created, cond=["cloud_task_id_matches"])
        # transitions[1]: ACKED -> ACKED; effects: none
        | acked.to(acked, cond=["cloud_task_id_matches"]),
        id="DispatchEnqueued",
        name="DispatchEnqueued",
    )

    task_started = Event(
        # transitions[2]: PENDING -> ACKED; effects: none
        pending.to(acked, cond=["outbox_attempt_matches"])
        # transitions[3]: CREATED -> ACKED; effects: none
        | created.to(acked, cond=["outbox_attempt_matches"]),
        id="TaskStarted",
        name="TaskStarted",
    )

    task_heartbeat = Event(
        # transitions[4]: PENDING -> ACKED; effects: none
        pending.to(acked, cond=["outbox_attempt_matches"])
        # transitions[5]: CREATED -> ACKED; effects: none
        | created.to(acked, cond=["outbox_attempt_matches"]),
        id="TaskHeartbeat",
        name="TaskHeartbeat",
    )

    task_finished = Event(
        # transitions[6]: PENDING -> ACKED; effects: none
        pending.to(acked, cond=["outbox_attempt_matches"])
        # transitions[7]: CREATED -> ACKED; effects: none
        | created.to(acked, cond=["outbox_attempt_matches"]),
        id="TaskFinished",
        name="TaskFinished",
    )

    attempt_timed_out = Event(
        # transitions[8]: PENDING -> FAILED; effects: none
        pending.to(failed, cond=["outbox_attempt_matches", "is_dispatch_timeout"])
        # transitions[9]: CREATED -> FAILED; effects: none
        | created.to(failed, cond=["outbox_attempt_matches", "is_dispatch_timeout"]),
        id="AttemptTimedOut",
        name="AttemptTimedOut",
    )

    def cloud_task_id_matches(self) -> bool:
        """Guard `cloud_task_id_matches`: holds when the facts of the event say so."""
        return self._fact("cloud_task_id_matches")

    def is_dispatch_timeout(self) -> bool:
        """Guard `is_dispatch_timeout`: holds when the facts of the event say so."""
        return self._fact("is_dispatch_timeout")

    def outbox_attempt_matches(self) -> bool:
        """Guard `outbox_attempt_matches`: holds when the facts of the event say so."""
        return self._fact("outbox_attempt_matches")
