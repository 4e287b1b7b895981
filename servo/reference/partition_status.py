# GENERATED from spec/machines/partition_status.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `partition_status` machine.

The materialization status of one partition of an asset, folded from the TaskFinished
events that carry an asset_key (an unpartitioned asset is the partition ""); the task
machine decides whether the attempt is current, and only facts it accepts reach this
machine. Two groups of columns are kept apart (L2-INV-8): last_attempt_* changes on every
attempt (execution status), last_materialization_* only on a SUCCEEDED attempt (data
freshness: run, attempt, code_version, materialization_id). Concurrent materializations
resolve by event order: the fold applies facts in event_id order, so the later event_id
is the last materialization. The state follows the latest attempt that said something
about the data: a CANCELLED attempt is recorded but leaves the state as it was.
Staleness (FRESHNESS_POLICY, UPSTREAM_CHANGED, CODE_CHANGED) is computed at query time and
never stored.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["PartitionStatusMachine"]


class PartitionStatusMachine(ReferenceMachine):
    """The `partition_status` machine (table `partition_status`)."""

    MACHINE: ClassVar[str] = "partition_status"
    SOURCE: ClassVar[str] = "spec/machines/partition_status.toml"
    INITIAL: ClassVar[str] = "NEVER_MATERIALIZED"
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    EVENTS: ClassVar[tuple[str, ...]] = ("TaskFinished",)
    GUARDS: ClassVar[tuple[str, ...]] = (
        "partition_attempt_cancelled",
        "partition_attempt_failed",
        "partition_attempt_succeeded",
    )

    never_materialized = State("NEVER_MATERIALIZED", value="NEVER_MATERIALIZED", initial=True)
    materialized = State("MATERIALIZED", value="MATERIALIZED")
    failed = State("FAILED", value="FAILED")

    task_finished = Event(
        # transitions[0]: NEVER_MATERIALIZED -> MATERIALIZED; effects: record_attempt, record_materialization
        never_materialized.to(materialized, cond=["partition_attempt_succeeded"])
        # transitions[1]: NEVER_MATERIALIZED -> FAILED; effects: record_attempt
        | never_materialized.to(failed, cond=["partition_attempt_failed"])
        # transitions[2]: NEVER_MATERIALIZED -> NEVER_MATERIALIZED; effects: record_attempt
        | never_materialized.to(never_materialized, cond=["partition_attempt_cancelled"])
        # transitions[3]: MATERIALIZED -> MATERIALIZED; effects: record_attempt, record_materialization
        | materialized.to(materialized, cond=["partition_attempt_succeeded"])
        # transitions[4]: MATERIALIZED -> FAILED; effects: record_attempt
        | materialized.to(failed, cond=["partition_attempt_failed"])
        # transitions[5]: MATERIALIZED -> MATERIALIZED; effects: record_attempt
        | materialized.to(materialized, cond=["partition_attempt_cancelled"])
        # transitions[6]: FAILED -> MATERIALIZED; effects: record_attempt, record_materialization
        | failed.to(materialized, cond=["partition_attempt_succeeded"])
        # transitions[7]: FAILED -> FAILED; effects: record_attempt
        | failed.to(failed, cond=["partition_attempt_failed"])
        # transitions[8]: FAILED -> FAILED; effects: record_attempt
        | failed.to(failed, cond=["partition_attempt_cancelled"]),
        id="TaskFinished",
        name="TaskFinished",
    )

    def partition_attempt_cancelled(self) -> bool:
        """Guard `partition_attempt_cancelled`: holds when the facts of the event say so."""
        return self._fact("partition_attempt_cancelled")

    def partition_attempt_failed(self) -> bool:
        """Guard `partition_attempt_failed`: holds when the facts of the event say so."""
        return self._fact("partition_attempt_failed")

    def partition_attempt_succeeded(self) -> bool:
        """Guard `partition_attempt_succeeded`: holds when the facts of the event say so."""
        return self._fact("partition_attempt_succeeded")
