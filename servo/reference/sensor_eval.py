# GENERATED from spec/machines/sensor_eval.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `sensor_eval` machine.

The evaluation acceptor of one sensor. The instance is the sensor (sensor_id), because the
poll compare-and-swap is on the sensor's cursor: the row holds `cursor` and
`state_version`, and a poll evaluation is accepted only if its expected_state_version
equals the row's state_version and its cursor_before is the row's cursor; accepting it moves the cursor to cursor_after and bumps
state_version, so a concurrent or replayed evaluation computed from the same state is
dropped (L2-INV-12, L2-INV-3). Push evaluations (one per message_id, L2-INV-2 by their
idempotency key) do not move the cursor and need no CAS. Each accepted SensorEvaluated
writes one sensor_evals row with its run requests (run_key + fingerprint), which run_keys
maps to run_ids (L2-INV-10).
SensorDefinitionUpserted creates the sensor (DEFINED is left at once) and later replaces the
definition when its definition_version is newer; `enabled` decides ENABLED or DISABLED.
Evaluations are accepted in both, for the same reason as schedule ticks: an evaluation
computed before a disable that sorts earlier is still a fact.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["SensorEvalMachine"]


class SensorEvalMachine(ReferenceMachine):
    """The `sensor_eval` machine (table `sensors`)."""

    MACHINE: ClassVar[str] = "sensor_eval"
    SOURCE: ClassVar[str] = "spec/machines/sensor_eval.toml"
    INITIAL: ClassVar[str] = "DEFINED"
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    EVENTS: ClassVar[tuple[str, ...]] = ("SensorDefinitionUpserted", "SensorEvaluated")
    GUARDS: ClassVar[tuple[str, ...]] = (
        "definition_enabled",
        "definition_version_is_newer",
        "eval_is_new",
        "expected_state_version_matches",
        "is_poll_evaluation",
        "is_push_evaluation",
        "run_requests_match_status",
    )

    defined = State("DEFINED", value="DEFINED", initial=True)
    enabled = State("ENABLED", value="ENABLED")
    disabled = State("DISABLED", value="DISABLED")

    sensor_definition_upserted = Event(
        # transitions[0]: DEFINED -> ENABLED; effects: record_sensor_definition
        defined.to(enabled, cond=["definition_enabled"])
        # transitions[1]: DEFINED -> DISABLED; effects: record_sensor_definition
        | defined.to(disabled)
        # transitions[2]: ENABLED -> ENABLED; effects: record_sensor_definition
        | enabled.to(enabled, cond=["definition_version_is_newer", "definition_enabled"])
        # transitions[3]: ENABLED -> DISABLED; effects: record_sensor_definition
        | enabled.to(disabled, cond=["definition_version_is_newer"])
        # transitions[4]: DISABLED -> ENABLED; effects: record_sensor_definition
        | disabled.to(enabled, cond=["definition_version_is_newer", "definition_enabled"])
        # transitions[5]: DISABLED -> DISABLED; effects: record_sensor_definition
        | disabled.to(disabled, cond=["definition_version_is_newer"]),
        id="SensorDefinitionUpserted",
        name="SensorDefinitionUpserted",
    )

    sensor_evaluated = Event(
        # transitions[6]: ENABLED -> ENABLED; effects: record_evaluation
        enabled.to(enabled, cond=["eval_is_new", "is_push_evaluation", "run_requests_match_status"])
        # transitions[7]: ENABLED -> ENABLED; effects: record_evaluation, advance_cursor
        | enabled.to(
            enabled,
            cond=[
                "eval_is_new",
                "is_poll_evaluation",
                "expected_state_version_matches",
                "run_requests_match_status",
            ],
        )
        # transitions[8]: DISABLED -> DISABLED; effects: record_evaluation
        | disabled.to(
            disabled,
            cond=["eval_is_new", "is_push_evaluation", "run_requests_match_status"],
        )
        # transitions[9]: DISABLED -> DISABLED; effects: record_evaluation, advance_cursor
        | disabled.to(
            disabled,
            cond=[
                "eval_is_new",
                "is_poll_evaluation",
                "expected_state_version_matches",
                "run_requests_match_status",
            ],
        ),
        id="SensorEvaluated",
        name="SensorEvaluated",
    )

    def definition_enabled(self) -> bool:
        """Guard `definition_enabled`: holds when the facts of the event say so."""
        return self._fact("definition_enabled")

    def definition_version_is_newer(self) -> bool:
        """Guard `definition_version_is_newer`: holds when the facts of the event say so."""
        return self._fact("definition_version_is_newer")

    def eval_is_new(self) -> bool:
        """Guard `eval_is_new`: holds when the facts of the event say so."""
        return self._fact("eval_is_new")

    def expected_state_version_matches(self) -> bool:
        """Guard `expected_state_version_matches`: holds when the facts of the event say so."""
        return self._fact("expected_state_version_matches")

    def is_poll_evaluation(self) -> bool:
        """Guard `is_poll_evaluation`: holds when the facts of the event say so."""
        return self._fact("is_poll_evaluation")

    def is_push_evaluation(self) -> bool:
        """Guard `is_push_evaluation`: holds when the facts of the event say so."""
        return self._fact("is_push_evaluation")

    def run_requests_match_status(self) -> bool:
        """Guard `run_requests_match_status`: holds when the facts of the event say so."""
        return self._fact("run_requests_match_status")
