# GENERATED from spec/machines/schedule_tick.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `schedule_tick` machine.

The tick acceptor of one schedule. The instance is the schedule (schedule_id), not the
tick: a tick is a one-shot fact whose status (TRIGGERED, SKIPPED, FAILED) the controller
decides, and both tick acceptance (tick_id not seen, L2-INV-1) and definition versioning
need the schedule's row, so the schedule is what has a lifecycle. Each accepted
ScheduleTicked writes one schedule_ticks row (the tick history) holding the definition
snapshot it embeds (definition_version, asset_selection), which its run uses instead of
the current definition (L2-INV-11), and its run_key sched:{schedule_id}:{epoch}, which
run_keys maps to a run_id (L2-INV-10).
ScheduleDefinitionUpserted creates the schedule (DEFINED is left at once) and later
replaces the definition when its definition_version is newer; `enabled` decides ENABLED
or DISABLED. Ticks are accepted in both: the controller only evaluates ENABLED schedules,
but a tick it evaluated before a disable that sorts earlier is still a fact, and dropping
it would orphan the run it requested.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["ScheduleTickMachine"]


class ScheduleTickMachine(ReferenceMachine):
    """The `schedule_tick` machine (table `schedules`)."""

    MACHINE: ClassVar[str] = "schedule_tick"
    SOURCE: ClassVar[str] = "spec/machines/schedule_tick.toml"
    INITIAL: ClassVar[str] = "DEFINED"
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    EVENTS: ClassVar[tuple[str, ...]] = ("ScheduleDefinitionUpserted", "ScheduleTicked")
    GUARDS: ClassVar[tuple[str, ...]] = (
        "definition_enabled",
        "definition_version_is_newer",
        "tick_id_matches",
        "tick_is_new",
        "tick_run_key_matches",
        "tick_status_failed",
        "tick_status_skipped",
        "tick_status_triggered",
    )

    defined = State("DEFINED", value="DEFINED", initial=True)
    enabled = State("ENABLED", value="ENABLED")
    disabled = State("DISABLED", value="DISABLED")

    schedule_definition_upserted = Event(
        # transitions[0]: DEFINED -> ENABLED; effects: record_schedule_definition
        defined.to(enabled, cond=["definition_enabled"])
        # transitions[1]: DEFINED -> DISABLED; effects: record_schedule_definition
        | defined.to(disabled)
        # transitions[2]: ENABLED -> ENABLED; effects: record_schedule_definition
        | enabled.to(enabled, cond=["definition_version_is_newer", "definition_enabled"])
        # transitions[3]: ENABLED -> DISABLED; effects: record_schedule_definition
        | enabled.to(disabled, cond=["definition_version_is_newer"])
        # transitions[4]: DISABLED -> ENABLED; effects: record_schedule_definition
        | disabled.to(enabled, cond=["definition_version_is_newer", "definition_enabled"])
        # transitions[5]: DISABLED -> DISABLED; effects: record_schedule_definition
        | disabled.to(disabled, cond=["definition_version_is_newer"]),
        id="ScheduleDefinitionUpserted",
        name="ScheduleDefinitionUpserted",
    )

    schedule_ticked = Event(
        # transitions[6]: ENABLED -> ENABLED; effects: record_tick
        enabled.to(
            enabled,
            cond=[
                "tick_is_new",
                "tick_id_matches",
                "tick_status_triggered",
                "tick_run_key_matches",
            ],
        )
        # transitions[7]: ENABLED -> ENABLED; effects: record_tick
        | enabled.to(enabled, cond=["tick_is_new", "tick_id_matches", "tick_status_skipped"])
        # transitions[8]: ENABLED -> ENABLED; effects: record_tick
        | enabled.to(enabled, cond=["tick_is_new", "tick_id_matches", "tick_status_failed"])
        # transitions[9]: DISABLED -> DISABLED; effects: record_tick
        | disabled.to(
            disabled,
            cond=[
                "tick_is_new",
                "tick_id_matches",
                "tick_status_triggered",
                "tick_run_key_matches",
            ],
        )
        # transitions[10]: DISABLED -> DISABLED; effects: record_tick
        | disabled.to(disabled, cond=["tick_is_new", "tick_id_matches", "tick_status_skipped"])
        # transitions[11]: DISABLED -> DISABLED; effects: record_tick
        | disabled.to(disabled, cond=["tick_is_new", "tick_id_matches", "tick_status_failed"]),
        id="ScheduleTicked",
        name="ScheduleTicked",
    )

    def definition_enabled(self) -> bool:
        """Guard `definition_enabled`: holds when the facts of the event say so."""
        return self._fact("definition_enabled")

    def definition_version_is_newer(self) -> bool:
        """Guard `definition_version_is_newer`: holds when the facts of the event say so."""
        return self._fact("definition_version_is_newer")

    def tick_id_matches(self) -> bool:
        """Guard `tick_id_matches`: holds when the facts of the event say so."""
        return self._fact("tick_id_matches")

    def tick_is_new(self) -> bool:
        """Guard `tick_is_new`: holds when the facts of the event say so."""
        return self._fact("tick_is_new")

    def tick_run_key_matches(self) -> bool:
        """Guard `tick_run_key_matches`: holds when the facts of the event say so."""
        return self._fact("tick_run_key_matches")

    def tick_status_failed(self) -> bool:
        """Guard `tick_status_failed`: holds when the facts of the event say so."""
        return self._fact("tick_status_failed")

    def tick_status_skipped(self) -> bool:
        """Guard `tick_status_skipped`: holds when the facts of the event say so."""
        return self._fact("tick_status_skipped")

    def tick_status_triggered(self) -> bool:
        """Guard `tick_status_triggered`: holds when the facts of the event say so."""
        return self._fact("tick_status_triggered")
