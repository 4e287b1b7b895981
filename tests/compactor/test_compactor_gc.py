"""Garbage collection of superseded derived state (ADR 015).

A base makes every older state file and manifest unreachable from the newest
manifest; once that base has been published for `gc_grace_sec`, the compactor
deletes them. The ledger is never touched (P1), what is published reads the same,
and a restarted compactor rebuilds the same tables.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_compactor import append, expected_tables, history, read_tables, scoped

from servo._errors import StorageError
from servo.compactor import Compactor, ManifestReader, ManifestStore, ProjectionReader, StateView
from servo.core._registry import Registry
from servo.core.events import Catalog, Event
from servo.spec import Spec
from servo.storage import Ledger, MemoryStore, ObjectStore, ScopedStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def seq_of(name: str) -> int:
    """`state/l0/{seq}.e{epoch}...` or `state/base/{seq}.e{epoch}/...`."""
    return int(name.split("/")[2][:12])


def started(space: ScopedStore, spec: Spec, rules: Registry, **kw: Any) -> tuple[Compactor, Ledger]:
    """A started compactor and a ledger that notifies it."""
    compactor = Compactor(space, spec, rules, **kw)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    return compactor, ledger


def compact_in_steps(
    space: ScopedStore, spec: Spec, rules: Registry, events: list[Event], *, step: float, **kw: Any
) -> tuple[Compactor, datetime]:
    """One micro-compaction per 3 events, `step` seconds apart (merge every 4); it
    starts with a ledger sweep, as a restarted engine does."""
    compactor, ledger = started(space, spec, rules, merge_every=4, **kw)
    compactor.repair()
    now = T0
    for i in range(0, len(events), 3):
        append(ledger, events[i : i + 3])
        now += timedelta(seconds=step)
        compactor.compact(now)
    return compactor, now


def test_superseded_state_and_manifests_are_deleted_once_the_base_is_old_enough(
    store: ObjectStore, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    space = scoped(store)
    events = history(catalog)
    early = ManifestReader(StateView(space))
    compactor, ledger = started(space, spec, rules, merge_every=4, gc_grace_sec=60)
    append(ledger, events[:3])
    compactor.compact(T0)
    assert early.latest() is not None  # this reader now knows an early manifest
    compactor, _ = compact_in_steps(space, spec, rules, events[3:], step=30, gc_grace_sec=60)
    latest = ManifestStore(space).latest()
    assert latest is not None

    floor = compactor.gc_floor
    assert floor > 2
    state = space.list_prefix("state/")
    assert state and all(seq_of(n) >= floor for n in state)
    manifests = [int(n.split("/")[1][:12]) for n in space.list_prefix("manifests/0")]
    assert manifests == list(range(floor, latest.seq + 1))
    # What is published still reads as the fold of every event; the ledger is whole;
    assert read_tables(space, spec) == expected_tables(events, spec, rules)
    assert len(space.list_prefix("ledger/")) == len(events)
    # a reader whose last manifest was collected finds the latest one;
    assert early.latest() == latest
    # and a restarted compactor rebuilds the same tables from what is left.
    restarted = Compactor(space, spec, rules)
    restarted.start()
    assert restarted.projection.tables() == expected_tables(events, spec, rules)


def test_nothing_is_deleted_within_the_grace_period(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """A reader that fetched an older manifest a moment ago can still read its files."""
    space = scoped(MemoryStore())
    events = history(catalog)
    compactor, _ = compact_in_steps(space, spec, rules, events, step=1, gc_grace_sec=3600)
    assert compactor.gc_floor == 0
    state = space.list_prefix("state/")
    assert min(seq_of(n) for n in state) <= 2  # the first deltas are still there
    assert len(space.list_prefix("manifests/0")) == ManifestStore(space).latest().seq  # type: ignore[union-attr]


def test_gc_without_a_grace_keeps_reads_correct_after_every_compaction(
    spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    space = scoped(MemoryStore())
    events = history(catalog)
    compactor, ledger = started(space, spec, rules, merge_every=2, gc_grace_sec=0)
    reader = ProjectionReader(StateView(space), spec)
    for i, event in enumerate(events):
        append(ledger, [event])
        compactor.compact(T0 + timedelta(seconds=i))
        assert reader.read().tables == expected_tables(events[: i + 1], spec, rules)
    assert len(space.list_prefix("manifests/0")) <= 3


def test_a_reader_holding_a_collected_manifest_reads_the_latest_instead(
    spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    space = scoped(MemoryStore())
    events = history(catalog)
    compactor, ledger = started(space, spec, rules, merge_every=4, gc_grace_sec=0)
    append(ledger, events[:5])
    compactor.compact(T0)
    stale = ManifestStore(space).latest()
    reader = ProjectionReader(StateView(space), spec)
    for i in range(5, len(events)):
        append(ledger, [events[i]])
        compactor.compact(T0 + timedelta(seconds=i))
    assert stale is not None and space.head(stale.deltas[0]["tasks"]) is None  # collected
    answers = iter([stale])
    real_latest = reader._manifests.latest
    reader._manifests.latest = lambda: next(answers, None) or real_latest()  # type: ignore[method-assign]
    assert reader.read().tables == expected_tables(events, spec, rules)


def test_orphan_files_of_a_crashed_compaction_are_collected_by_the_full_sweep(
    spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    space = scoped(MemoryStore())
    events = history(catalog)

    def crash(point: str) -> None:
        if point == "before_manifest":
            raise RuntimeError("killed")

    doomed = Compactor(space, spec, rules, crash=crash)
    ledger = Ledger(space, on_append=doomed.notify)
    doomed.start()
    append(ledger, events[:4])
    with pytest.raises(RuntimeError, match="killed"):
        doomed.compact(T0)
    orphans = space.list_prefix("state/")
    assert orphans  # written, never published
    survivor, _ = compact_in_steps(space, spec, rules, events, step=30, gc_grace_sec=60)
    survivor.collect_orphans(T0 + timedelta(hours=1))
    assert not set(orphans) & set(space.list_prefix("state/"))
    assert read_tables(space, spec) == expected_tables(events, spec, rules)


class FailingDeletes:
    """A store whose deletes fail (a permission problem, an outage)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete(self, name: str) -> bool:
        raise StorageError(f"delete of {name!r} refused")


def test_a_failing_delete_never_stops_compaction(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    space = ScopedStore(FailingDeletes(MemoryStore()), "acme", "prod")  # type: ignore[arg-type]
    events = history(catalog)
    compactor, _ = compact_in_steps(space, spec, rules, events, step=30, gc_grace_sec=0)
    assert read_tables(space, spec) == expected_tables(events, spec, rules)
    assert compactor.gc_floor == 0  # nothing was collected, and nothing broke


def test_a_long_backlog_is_collected_in_bounded_rounds(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """A home that never collected (hundreds of manifests) is worked off a round per
    compaction, each reading at most GC_MANIFESTS_PER_ROUND manifests, not in one stall."""
    from servo.compactor._compactor import GC_MANIFESTS_PER_ROUND

    space = scoped(MemoryStore())
    events = history(catalog)
    keeper, ledger = started(space, spec, rules, merge_every=1000, gc_grace_sec=None)
    for i in range(3 * GC_MANIFESTS_PER_ROUND):
        append(ledger, [events[i % len(events)]])  # repeats are no-ops: idle publishes
        keeper.compact(T0 + timedelta(seconds=2 * i))
    keeper.merge()
    backlog = len(space.list_prefix("manifests/0"))
    assert backlog > 3 * GC_MANIFESTS_PER_ROUND

    collector, ledger = started(space, spec, rules, merge_every=1000, gc_grace_sec=0)
    later = datetime.now(UTC) + timedelta(seconds=1)  # the restart ages its base from now
    collector.compact(later)
    after_one = len(space.list_prefix("manifests/0"))
    assert backlog - GC_MANIFESTS_PER_ROUND - 2 <= after_one < backlog  # one bounded round
    for i in range(10):
        collector.compact(later + timedelta(seconds=2 * (i + 1)))
    floor = collector.gc_floor
    assert floor > 3 * GC_MANIFESTS_PER_ROUND
    assert all(int(n.split("/")[1][:12]) >= floor for n in space.list_prefix("manifests/0"))
    assert read_tables(space, spec) == expected_tables(events, spec, rules)
