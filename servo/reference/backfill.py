# GENERATED from spec/machines/backfill.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementation of the `backfill` machine.

A backfill of an asset selection over a partition selector (RANGE, LIST of at most 1000
keys, or FILTER; never a giant key list). BackfillCreated creates it PENDING with
state_version 0. Every state change is a BackfillStateChanged whose state_version must be
exactly the current one + 1 and whose from_state must be the current state, so a command
computed from a stale read is rejected (L2-INV-6). Chunks are planned one event per chunk
(BackfillChunkPlanned, chunk_id {backfill_id}:{chunk_index}, run_key
backfill:{backfill_id}:chunk:{chunk_index}) and only while RUNNING: pausing stops planning,
and a chunk is refused while max_concurrent_runs chunk runs are in flight (L2-INV-9). The
fold keeps the in-flight chunk run keys on the row (at most max_concurrent_runs of them), so
planning stays O(max_concurrent_runs) however many partitions the backfill has.
Retry-failed creates a child backfill (parent_backfill_id) of only the failed partitions,
once the parent has finished.
"""

from __future__ import annotations

from typing import ClassVar

from statemachine import Event, State

from servo.reference._base import ReferenceMachine

__all__ = ["BackfillMachine"]


class BackfillMachine(ReferenceMachine):
    """The `backfill` machine (table `backfills`)."""

    MACHINE: ClassVar[str] = "backfill"
    SOURCE: ClassVar[str] = "spec/machines/backfill.toml"
    INITIAL: ClassVar[str] = "PENDING"
    TERMINAL: ClassVar[tuple[str, ...]] = ("CANCELLED", "FAILED", "SUCCEEDED")
    EVENTS: ClassVar[tuple[str, ...]] = (
        "BackfillCreated",
        "BackfillStateChanged",
        "BackfillChunkPlanned",
    )
    GUARDS: ClassVar[tuple[str, ...]] = (
        "all_chunks_planned",
        "backfill_is_new",
        "chunk_is_new",
        "chunk_within_selector",
        "from_state_matches",
        "parent_backfill_is_finished",
        "partition_selector_is_compact",
        "state_version_is_next",
        "to_cancelled",
        "to_failed",
        "to_paused",
        "to_running",
        "to_succeeded",
        "under_max_concurrent_runs",
    )

    pending = State("PENDING", value="PENDING", initial=True)
    running = State("RUNNING", value="RUNNING")
    paused = State("PAUSED", value="PAUSED")
    cancelled = State("CANCELLED", value="CANCELLED", final=True)
    failed = State("FAILED", value="FAILED", final=True)
    succeeded = State("SUCCEEDED", value="SUCCEEDED", final=True)

    backfill_created = Event(
        # transitions[0]: PENDING -> PENDING; effects: record_backfill
        pending.to(
            pending,
            cond=[
                "backfill_is_new",
                "partition_selector_is_compact",
                "parent_backfill_is_finished",
            ],
        ),
        id="BackfillCreated",
        name="BackfillCreated",
    )

    backfill_state_changed = Event(
        # transitions[1]: PENDING -> RUNNING; effects: record_backfill_state_change
        pending.to(running, cond=["state_version_is_next", "from_state_matches", "to_running"])
        # transitions[2]: PENDING -> CANCELLED; effects: record_backfill_state_change
        | pending.to(
            cancelled,
            cond=["state_version_is_next", "from_state_matches", "to_cancelled"],
        )
        # transitions[3]: RUNNING -> PAUSED; effects: record_backfill_state_change
        | running.to(paused, cond=["state_version_is_next", "from_state_matches", "to_paused"])
        # transitions[4]: RUNNING -> SUCCEEDED; effects: record_backfill_state_change
        | running.to(
            succeeded,
            cond=[
                "state_version_is_next",
                "from_state_matches",
                "to_succeeded",
                "all_chunks_planned",
            ],
        )
        # transitions[5]: RUNNING -> FAILED; effects: record_backfill_state_change
        | running.to(failed, cond=["state_version_is_next", "from_state_matches", "to_failed"])
        # transitions[6]: RUNNING -> CANCELLED; effects: record_backfill_state_change
        | running.to(
            cancelled,
            cond=["state_version_is_next", "from_state_matches", "to_cancelled"],
        )
        # transitions[7]: PAUSED -> RUNNING; effects: record_backfill_state_change
        | paused.to(running, cond=["state_version_is_next", "from_state_matches", "to_running"])
        # transitions[8]: PAUSED -> CANCELLED; effects: record_backfill_state_change
        | paused.to(
            cancelled,
            cond=["state_version_is_next", "from_state_matches", "to_cancelled"],
        ),
        id="BackfillStateChanged",
        name="BackfillStateChanged",
    )

    backfill_chunk_planned = Event(
        # transitions[9]: RUNNING -> RUNNING; effects: record_chunk
        running.to(
            running,
            cond=["chunk_is_new", "chunk_within_selector", "under_max_concurrent_runs"],
        ),
        id="BackfillChunkPlanned",
        name="BackfillChunkPlanned",
    )

    def all_chunks_planned(self) -> bool:
        """Guard `all_chunks_planned`: holds when the facts of the event say so."""
        return self._fact("all_chunks_planned")

    def backfill_is_new(self) -> bool:
        """Guard `backfill_is_new`: holds when the facts of the event say so."""
        return self._fact("backfill_is_new")

    def chunk_is_new(self) -> bool:
        """Guard `chunk_is_new`: holds when the facts of the event say so."""
        return self._fact("chunk_is_new")

    def chunk_within_selector(self) -> bool:
        """Guard `chunk_within_selector`: holds when the facts of the event say so."""
        return self._fact("chunk_within_selector")

    def from_state_matches(self) -> bool:
        """Guard `from_state_matches`: holds when the facts of the event say so."""
        return self._fact("from_state_matches")

    def parent_backfill_is_finished(self) -> bool:
        """Guard `parent_backfill_is_finished`: holds when the facts of the event say so."""
        return self._fact("parent_backfill_is_finished")

    def partition_selector_is_compact(self) -> bool:
        """Guard `partition_selector_is_compact`: holds when the facts of the event say so."""
        return self._fact("partition_selector_is_compact")

    def state_version_is_next(self) -> bool:
        """Guard `state_version_is_next`: holds when the facts of the event say so."""
        return self._fact("state_version_is_next")

    def to_cancelled(self) -> bool:
        """Guard `to_cancelled`: holds when the facts of the event say so."""
        return self._fact("to_cancelled")

    def to_failed(self) -> bool:
        """Guard `to_failed`: holds when the facts of the event say so."""
        return self._fact("to_failed")

    def to_paused(self) -> bool:
        """Guard `to_paused`: holds when the facts of the event say so."""
        return self._fact("to_paused")

    def to_running(self) -> bool:
        """Guard `to_running`: holds when the facts of the event say so."""
        return self._fact("to_running")

    def to_succeeded(self) -> bool:
        """Guard `to_succeeded`: holds when the facts of the event say so."""
        return self._fact("to_succeeded")

    def under_max_concurrent_runs(self) -> bool:
        """Guard `under_max_concurrent_runs`: holds when the facts of the event say so."""
        return self._fact("under_max_concurrent_runs")
