# GENERATED from spec/machines/task.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `task` machine.

A task of a run. It is created PLANNED by PlanCreated and leaves PLANNED at once:
READY when it has no upstream, BLOCKED otherwise. An attempt is live while the task
is DISPATCHED or RUNNING; worker facts for any other attempt are STALE_ATTEMPT.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["TaskMachine"]


class TaskMachine(ReferenceMachine):
    """The `task` machine (table `tasks`)."""

    MACHINE: ClassVar[str] = "task"
    SOURCE: ClassVar[str] = "spec/machines/task.toml"
    INITIAL: ClassVar[str] = "PLANNED"
    TERMINAL: ClassVar[tuple[str, ...]] = ("SKIPPED", "CANCELLED", "FAILED", "SUCCEEDED")
    EVENTS: ClassVar[tuple[str, ...]] = (
        "PlanCreated",
        "TaskBecameReady",
        "TaskSkipped",
        "DispatchRequested",
        "TaskStarted",
        "TaskHeartbeat",
        "TaskFinished",
        "AttemptTimedOut",
        "TimerFired",
        "RunCancelRequested",
    )
    GUARDS: ClassVar[tuple[str, ...]] = (
        "all_upstream_succeeded",
        "an_upstream_did_not_succeed",
        "attempt_is_current",
        "attempt_is_next",
        "attempts_remain",
        "has_no_upstream",
        "is_retry_timer_of_current_attempt",
        "outcome_cancelled",
        "outcome_failed",
        "outcome_succeeded",
    )

    planned = State("PLANNED", value="PLANNED", initial=True)
    blocked = State("BLOCKED", value="BLOCKED")
    ready = State("READY", value="READY")
    dispatched = State("DISPATCHED", value="DISPATCHED")
    running = State("RUNNING", value="RUNNING")
    retry_wait = State("RETRY_WAIT", value="RETRY_WAIT")
    skipped = State("SKIPPED", value="SKIPPED", final=True)
    cancelled = State("CANCELLED", value="CANCELLED", final=True)
    failed = State("FAILED", value="FAILED", final=True)
    succeeded = State("SUCCEEDED", value="SUCCEEDED", final=True)

    plan_created = Event(
        # transitions[0]: PLANNED -> READY; effects: mark_ready
        planned.to(ready, cond=["has_no_upstream"])
        # transitions[1]: PLANNED -> BLOCKED; effects: none
        | planned.to(blocked),
        id="PlanCreated",
        name="PlanCreated",
    )

    task_became_ready = Event(
        # transitions[2]: BLOCKED -> READY; effects: mark_ready
        blocked.to(ready, cond=["all_upstream_succeeded"]),
        id="TaskBecameReady",
        name="TaskBecameReady",
    )

    task_skipped = Event(
        # transitions[3]: BLOCKED -> SKIPPED; effects: mark_finished, resolve_downstream, complete_run_if_done
        blocked.to(skipped, cond=["an_upstream_did_not_succeed"]),
        id="TaskSkipped",
        name="TaskSkipped",
    )

    dispatch_requested = Event(
        # transitions[4]: READY -> DISPATCHED; effects: begin_attempt
        ready.to(dispatched, cond=["attempt_is_next"]),
        id="DispatchRequested",
        name="DispatchRequested",
    )

    task_started = Event(
        # transitions[5]: DISPATCHED -> RUNNING; effects: mark_started
        dispatched.to(running, cond=["attempt_is_current"])
        # transitions[7]: RUNNING -> RUNNING; effects: none
        | running.to(running, cond=["attempt_is_current"]),
        id="TaskStarted",
        name="TaskStarted",
    )

    task_heartbeat = Event(
        # transitions[6]: DISPATCHED -> RUNNING; effects: mark_started, record_heartbeat
        dispatched.to(running, cond=["attempt_is_current"])
        # transitions[8]: RUNNING -> RUNNING; effects: record_heartbeat
        | running.to(running, cond=["attempt_is_current"]),
        id="TaskHeartbeat",
        name="TaskHeartbeat",
    )

    task_finished = Event(
        # transitions[9]: DISPATCHED -> SUCCEEDED; effects: mark_finished, resolve_downstream, complete_run_if_done
        dispatched.to(succeeded, cond=["attempt_is_current", "outcome_succeeded"])
        # transitions[10]: DISPATCHED -> RETRY_WAIT; effects: record_failure
        | dispatched.to(
            retry_wait,
            cond=["attempt_is_current", "outcome_failed", "attempts_remain"],
        )
        # transitions[11]: DISPATCHED -> FAILED; effects: record_failure, mark_finished, resolve_downstream, complete_run_if_done
        | dispatched.to(failed, cond=["attempt_is_current", "outcome_failed"])
        # transitions[12]: DISPATCHED -> CANCELLED; effects: mark_finished, resolve_downstream, complete_run_if_done
        | dispatched.to(cancelled, cond=["attempt_is_current", "outcome_cancelled"])
        # transitions[13]: RUNNING -> SUCCEEDED; effects: mark_finished, resolve_downstream, complete_run_if_done
        | running.to(succeeded, cond=["attempt_is_current", "outcome_succeeded"])
        # transitions[14]: RUNNING -> RETRY_WAIT; effects: record_failure
        | running.to(retry_wait, cond=["attempt_is_current", "outcome_failed", "attempts_remain"])
        # transitions[15]: RUNNING -> FAILED; effects: record_failure, mark_finished, resolve_downstream, complete_run_if_done
        | running.to(failed, cond=["attempt_is_current", "outcome_failed"])
        # transitions[16]: RUNNING -> CANCELLED; effects: mark_finished, resolve_downstream, complete_run_if_done
        | running.to(cancelled, cond=["attempt_is_current", "outcome_cancelled"]),
        id="TaskFinished",
        name="TaskFinished",
    )

    attempt_timed_out = Event(
        # transitions[17]: DISPATCHED -> RETRY_WAIT; effects: record_timeout
        dispatched.to(retry_wait, cond=["attempt_is_current", "attempts_remain"])
        # transitions[18]: DISPATCHED -> FAILED; effects: record_timeout, mark_finished, resolve_downstream, complete_run_if_done
        | dispatched.to(failed, cond=["attempt_is_current"])
        # transitions[19]: RUNNING -> RETRY_WAIT; effects: record_timeout
        | running.to(retry_wait, cond=["attempt_is_current", "attempts_remain"])
        # transitions[20]: RUNNING -> FAILED; effects: record_timeout, mark_finished, resolve_downstream, complete_run_if_done
        | running.to(failed, cond=["attempt_is_current"]),
        id="AttemptTimedOut",
        name="AttemptTimedOut",
    )

    timer_fired = Event(
        # transitions[21]: RETRY_WAIT -> READY; effects: mark_ready
        retry_wait.to(ready, cond=["is_retry_timer_of_current_attempt"]),
        id="TimerFired",
        name="TimerFired",
    )

    run_cancel_requested = Event(
        # transitions[22]: BLOCKED -> CANCELLED; effects: mark_finished, resolve_downstream
        blocked.to(cancelled)
        # transitions[23]: READY -> CANCELLED; effects: mark_finished, resolve_downstream
        | ready.to(cancelled)
        # transitions[24]: DISPATCHED -> CANCELLED; effects: mark_finished, resolve_downstream
        | dispatched.to(cancelled)
        # transitions[25]: RUNNING -> CANCELLED; effects: mark_finished, resolve_downstream
        | running.to(cancelled)
        # transitions[26]: RETRY_WAIT -> CANCELLED; effects: mark_finished, resolve_downstream
        | retry_wait.to(cancelled),
        id="RunCancelRequested",
        name="RunCancelRequested",
    )

    def all_upstream_succeeded(self) -> bool:
        """Guard `all_upstream_succeeded`: holds when the facts of the event say so."""
        return self._fact("all_upstream_succeeded")

    def an_upstream_did_not_succeed(self) -> bool:
        """Guard `an_upstream_did_not_succeed`: holds when the facts of the event say so."""
        return self._fact("an_upstream_did_not_succeed")

    def attempt_is_current(self) -> bool:
        """Guard `attempt_is_current`: holds when the facts of the event say so."""
        return self._fact("attempt_is_current")

    def attempt_is_next(self) -> bool:
        """Guard `attempt_is_next`: holds when the facts of the event say so."""
        return self._fact("attempt_is_next")

    def attempts_remain(self) -> bool:
        """Guard `attempts_remain`: holds when the facts of the event say so."""
        return self._fact("attempts_remain")

    def has_no_upstream(self) -> bool:
        """Guard `has_no_upstream`: holds when the facts of the event say so."""
        return self._fact("has_no_upstream")

    def is_retry_timer_of_current_attempt(self) -> bool:
        """Guard `is_retry_timer_of_current_attempt`: holds when the facts of the event say so."""
        return self._fact("is_retry_timer_of_current_attempt")

    def outcome_cancelled(self) -> bool:
        """Guard `outcome_cancelled`: holds when the facts of the event say so."""
        return self._fact("outcome_cancelled")

    def outcome_failed(self) -> bool:
        """Guard `outcome_failed`: holds when the facts of the event say so."""
        return self._fact("outcome_failed")

    def outcome_succeeded(self) -> bool:
        """Guard `outcome_succeeded`: holds when the facts of the event say so."""
        return self._fact("outcome_succeeded")
