# GENERATED from spec/machines/run.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `run` machine.

A run of a plan. RunTriggered creates it PENDING; PlanCreated (with the run's plan_id)
creates its tasks and makes it RUNNING. It completes (derived RunCompleted) when every
task is terminal: FAILED if any task failed, else CANCELLED if any was cancelled, else
SUCCEEDED. RunCancelRequested (when accepted) also moves every non-terminal task and
scheduled timer of the run: see the task and timer machines.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["RunMachine"]


class RunMachine(ReferenceMachine):
    """The `run` machine (table `runs`)."""

    MACHINE: ClassVar[str] = "run"
    SOURCE: ClassVar[str] = "spec/machines/run.toml"
    INITIAL: ClassVar[str] = "PENDING"
    TERMINAL: ClassVar[tuple[str, ...]] = ("CANCELLED", "FAILED", "SUCCEEDED")
    EVENTS: ClassVar[tuple[str, ...]] = ("PlanCreated", "RunCancelRequested", "RunCompleted")
    GUARDS: ClassVar[tuple[str, ...]] = (
        "all_tasks_succeeded",
        "all_tasks_terminal",
        "any_task_failed",
        "plan_matches_run",
    )

    pending = State("PENDING", value="PENDING", initial=True)
    running = State("RUNNING", value="RUNNING")
    cancelled = State("CANCELLED", value="CANCELLED", final=True)
    failed = State("FAILED", value="FAILED", final=True)
    succeeded = State("SUCCEEDED", value="SUCCEEDED", final=True)

    plan_created = Event(
        # transitions[0]: PENDING -> RUNNING; effects: record_plan, complete_run_if_done
        pending.to(running, cond=["plan_matches_run"]),
        id="PlanCreated",
        name="PlanCreated",
    )

    run_cancel_requested = Event(
        # transitions[1]: PENDING -> CANCELLED; effects: mark_run_completed
        pending.to(cancelled)
        # transitions[2]: RUNNING -> CANCELLED; effects: mark_run_completed
        | running.to(cancelled),
        id="RunCancelRequested",
        name="RunCancelRequested",
    )

    run_completed = Event(
        # transitions[3]: RUNNING -> SUCCEEDED; effects: mark_run_completed
        running.to(succeeded, cond=["all_tasks_succeeded"])
        # transitions[4]: RUNNING -> FAILED; effects: mark_run_completed
        | running.to(failed, cond=["any_task_failed"])
        # transitions[5]: RUNNING -> CANCELLED; effects: mark_run_completed
        | running.to(cancelled, cond=["all_tasks_terminal"]),
        id="RunCompleted",
        name="RunCompleted",
    )

    def all_tasks_succeeded(self) -> bool:
        """Guard `all_tasks_succeeded`: holds when the facts of the event say so."""
        return self._fact("all_tasks_succeeded")

    def all_tasks_terminal(self) -> bool:
        """Guard `all_tasks_terminal`: holds when the facts of the event say so."""
        return self._fact("all_tasks_terminal")

    def any_task_failed(self) -> bool:
        """Guard `any_task_failed`: holds when the facts of the event say so."""
        return self._fact("any_task_failed")

    def plan_matches_run(self) -> bool:
        """Guard `plan_matches_run`: holds when the facts of the event say so."""
        return self._fact("plan_matches_run")
