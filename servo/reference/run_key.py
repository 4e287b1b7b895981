# GENERATED from spec/machines/run_key.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `run_key` machine.

The binding of a run_key to one run. The first accepted RunRequested of a key binds it:
run_id = HMAC(tenant secret, tenant:workspace:run_key) (SPEC §3), the request fingerprint
and the source (schedule tick, sensor evaluation, backfill chunk or manual); the run
controller then emits RunTriggered with that run_id. A request is accepted only if its
source was itself accepted and backs it (a TRIGGERED tick or evaluation, or a planned
chunk, with the same run_key, fingerprint and selection), so a dropped evaluation, a
refused chunk of a paused backfill or a tick's non-snapshot selection starts nothing; the
controller emits the source event before its RunRequested (lower event_id).
Once BOUND, the same run_key with the same fingerprint is a no-op (the same run_id,
L2-INV-4), and with another fingerprint adds a run_key_conflicts row and starts nothing
(L2-INV-5).
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["RunKeyMachine"]


class RunKeyMachine(ReferenceMachine):
    """The `run_key` machine (table `run_keys`)."""

    MACHINE: ClassVar[str] = "run_key"
    SOURCE: ClassVar[str] = "spec/machines/run_key.toml"
    INITIAL: ClassVar[str] = "REQUESTED"
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    EVENTS: ClassVar[tuple[str, ...]] = ("RunRequested",)
    GUARDS: ClassVar[tuple[str, ...]] = (
        "fingerprint_differs",
        "fingerprint_matches",
        "request_matches_source",
    )

    requested = State("REQUESTED", value="REQUESTED", initial=True)
    bound = State("BOUND", value="BOUND")

    run_requested = Event(
        # transitions[0]: REQUESTED -> BOUND; effects: record_run_key
        requested.to(bound, cond=["request_matches_source"])
        # transitions[1]: BOUND -> BOUND; effects: none
        | bound.to(bound, cond=["fingerprint_matches"])
        # transitions[2]: BOUND -> BOUND; effects: record_run_key_conflict
        | bound.to(bound, cond=["fingerprint_differs"]),
        id="RunRequested",
        name="RunRequested",
    )

    def fingerprint_differs(self) -> bool:
        """Guard `fingerprint_differs`: holds when the facts of the event say so."""
        return self._fact("fingerprint_differs")

    def fingerprint_matches(self) -> bool:
        """Guard `fingerprint_matches`: holds when the facts of the event say so."""
        return self._fact("fingerprint_matches")

    def request_matches_source(self) -> bool:
        """Guard `request_matches_source`: holds when the facts of the event say so."""
        return self._fact("request_matches_source")
