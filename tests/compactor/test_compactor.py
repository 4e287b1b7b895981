"""The compactor: micro-compactions, base merges, fencing, crash safety (P1-P6)."""

from __future__ import annotations

import ast
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from servo._errors import FencedOut
from servo.compactor import (
    EPOCH_OBJECT,
    POINTER,
    Compactor,
    ManifestStore,
    ProjectionReader,
    StateView,
    StateViewDenied,
)
from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.events import Catalog, Event
from servo.core.fold import fold
from servo.spec import Spec
from servo.storage import Ledger, ObjectStore, ScopedStore, StoredObject

RUNS = ("run_a", "run_b", "run_c")


def history(catalog: Catalog, seed: int = 1) -> list[Event]:
    """Three runs with retries, a failure and a late heartbeat, in event_id order."""
    b = EventBuilder(catalog)
    events: list[Event] = []
    for n, run in enumerate(RUNS):
        tasks = [TaskDef("a", max_attempts=2), TaskDef("b", ["a"]), TaskDef("c", ["a"]), TaskDef("d", ["b", "c"])]
        events += [b.run_triggered(run), b.plan_created(run, tasks)]
        for key in ("a", "b", "c", "d"):
            aid = f"{run}-{key}-1"
            events += [b.dispatch_requested(run, key, 1, aid), b.started(run, key, 1, aid)]
            outcome = "FAILED" if (n == 1 and key == "c") else "SUCCEEDED"
            events += [b.finished(run, key, 1, aid, outcome)]
            if outcome == "FAILED":
                break
    events.append(b.heartbeat("run_a", "a", 1, "run_a-a-1"))  # stale: STALE_ATTEMPT
    rng = random.Random(seed)
    return sorted(events, key=lambda e: (e.event_id, rng.random()))


def scoped(store: ObjectStore) -> ScopedStore:
    return ScopedStore(store, "acme", "prod")


def append(ledger: Ledger, events: list[Event]) -> None:
    ledger.append_many([(e.event_id, e.to_json().encode()) for e in events])


def expected_tables(events: list[Event], spec: Spec, rules: Registry) -> dict[str, list[dict[str, Any]]]:
    return fold(events, spec, rules).tables()


def read_tables(store: ScopedStore, spec: Spec) -> dict[str, list[dict[str, Any]]]:
    return ProjectionReader(StateView(store), spec).read().tables


def run_compactor(space: ScopedStore, spec: Spec, rules: Registry, batches: list[list[Event]], **kw: Any) -> Compactor:
    compactor = Compactor(space, spec, rules, **kw)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    for batch in batches:
        append(ledger, batch)
        compactor.compact()
    return compactor


def test_micro_compactions_publish_what_a_full_fold_gives(store: ObjectStore, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    events = history(catalog)
    shuffled = events[:]
    random.Random(5).shuffle(shuffled)  # late events across batches
    batches = [shuffled[i : i + 7] for i in range(0, len(shuffled), 7)] + [shuffled[:5]]
    space = scoped(store)
    compactor = run_compactor(space, spec, rules, batches, merge_every=4)
    assert compactor.manifest is not None
    assert read_tables(space, spec) == expected_tables(events, spec, rules)


def test_deltas_hold_only_changed_rows(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    from servo.storage import MemoryStore
    from servo.tables import read_parquet

    events = history(catalog)
    space = scoped(MemoryStore())
    compactor = run_compactor(space, spec, rules, [events])
    b = EventBuilder(catalog)
    b.now = events[-1].occurred_at
    extra = [b.run_triggered("run_z"), b.plan_created("run_z", [TaskDef("x")])]
    Ledger(space, on_append=compactor.notify).append_many([(e.event_id, e.to_json().encode()) for e in extra])
    manifest = compactor.compact()
    assert manifest is not None
    delta = manifest.deltas[-1]
    tasks = read_parquet(space.get(delta["tasks"]).data, spec.tables["tasks"])
    assert [(r["run_id"], r["task_key"]) for r in tasks] == [("run_z", "x")]
    assert "dispatch_outbox" not in delta


def test_compaction_is_idempotent_byte_for_byte(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """P3: the same events give byte-identical base Parquet, however they were batched."""
    from servo.storage import MemoryStore

    events = history(catalog)
    one, two = scoped(MemoryStore()), scoped(MemoryStore())
    first = run_compactor(one, spec, rules, [events])
    second = run_compactor(two, spec, rules, [events[::2], events[1::2], events[:3]])
    a, b = first.merge(), second.merge()
    for table in ("tasks", "runs", "dep_satisfaction", "dispatch_outbox", "timers", "rejected_events"):
        assert one.get(a.base[table]).data == two.get(b.base[table]).data, table


class Crash(Exception):
    pass


CRASH_POINTS = ("after_delta", "before_manifest", "after_manifest", "during_base_merge")


@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("at_call", [1, 2, 3])
def test_a_killed_compactor_restarts_to_the_same_tables(
    point: str, at_call: int, spec: Spec, rules: Registry, catalog: Catalog, tmp_path: Path
) -> None:
    """Killed at a step boundary, a restarted compactor loses and doubles nothing."""
    from servo.storage import LocalStore

    events = history(catalog)
    space = scoped(LocalStore(tmp_path / "bucket"))
    hits = {"n": 0}

    def crash(where: str) -> None:
        if where == point:
            hits["n"] += 1
            if hits["n"] == at_call:
                raise Crash(where)

    batches = [events[i : i + 5] for i in range(0, len(events), 5)]
    dying = Compactor(space, spec, rules, merge_every=2, crash=crash)
    ledger = Ledger(space, on_append=dying.notify)
    dying.start()
    crashed = False
    for batch in batches:
        append(ledger, batch)  # the ledger write is durable before compaction
        if crashed:
            continue
        try:
            dying.compact()
        except Crash:
            crashed = True
    assert crashed or (point == "during_base_merge" and at_call > 1)
    survivor = Compactor(space, spec, rules, merge_every=2)
    survivor.start()
    assert survivor.repair() >= 0  # notifications died with the process: sweep once
    survivor.compact()
    assert read_tables(space, spec) == expected_tables(events, spec, rules)
    survivor.merge()
    assert read_tables(space, spec) == expected_tables(events, spec, rules)


def test_cas_conflict_detected_and_retried(store: ObjectStore, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """Two compactors start at once: the epoch CAS conflict is retried, the loser is fenced."""
    space = scoped(store)
    events = history(catalog)
    append(Ledger(space), events[:10])
    barrier = threading.Barrier(2)
    original_get = space.get
    local = threading.local()

    def racing_get(name: str) -> StoredObject:
        result = original_get(name)
        if name == EPOCH_OBJECT and not getattr(local, "raced", False):
            local.raced = True
            barrier.wait(timeout=10)  # both read the same epoch before either writes
        return result

    space.get = racing_get  # type: ignore[method-assign]
    a, b = Compactor(space, spec, rules), Compactor(space, spec, rules)
    # Seed the epoch object so both racers read an existing generation.
    space.put_if_absent(EPOCH_OBJECT, b"0")
    errors: list[BaseException] = []

    def start(c: Compactor) -> None:
        try:
            c.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    space.get = original_get  # type: ignore[method-assign]
    assert all(isinstance(e, FencedOut) for e in errors), errors  # nothing but a lost race
    assert sorted((a.epoch, b.epoch)) == [1, 2]  # one CAS lost and was retried
    newer, older = (a, b) if a.epoch > b.epoch else (b, a)
    for c in (a, b):
        c.notify(e.event_id for e in events[:10])
    if not errors:  # the older one published its fence first: it is deposed now
        with pytest.raises(FencedOut):
            older.compact()
    newer.compact()
    assert read_tables(space, spec) == expected_tables(events[:10], spec, rules)


def test_a_deposed_compactor_can_never_publish(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """P4: once a newer epoch published its fence, every publish of the old one fails."""
    from servo.storage import MemoryStore

    space = scoped(MemoryStore())
    events = history(catalog)
    old = run_compactor(space, spec, rules, [events[:5]])
    new = Compactor(space, spec, rules)
    new.start()
    old.notify(e.event_id for e in events[5:10])
    append(Ledger(space), events[5:10])
    with pytest.raises(FencedOut):
        old.compact()
    with pytest.raises(FencedOut):
        old.merge()
    assert ManifestStore(space).latest().epoch == new.epoch  # type: ignore[union-attr]


class CountingStore:
    """Counts list_prefix calls (P6) and records names read."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.lists = 0
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, name: str) -> StoredObject:
        self.read.append(name)
        return self.inner.get(name)

    def list_prefix(self, prefix: str) -> list[str]:
        self.lists += 1
        return self.inner.list_prefix(prefix)


def test_no_listing_on_the_correctness_path(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """P6: compaction, restart and reads never list; the pointer is only a hint."""
    from servo.storage import MemoryStore

    counting = CountingStore(MemoryStore())
    space = ScopedStore(counting, "acme", "prod")  # type: ignore[arg-type]
    events = history(catalog)
    run_compactor(space, spec, rules, [events[:6], events[6:12]], pointer_interval=3600)
    restarted = Compactor(space, spec, rules)
    restarted.start()
    restarted.notify(e.event_id for e in events[12:])
    append(Ledger(space), events[12:])
    restarted.compact()
    assert int(space.get(POINTER).data) < ManifestStore(space).latest().seq  # type: ignore[union-attr]
    assert read_tables(space, spec) == expected_tables(events, spec, rules)
    assert counting.lists == 0


def test_controllers_cannot_reach_the_ledger(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """P5: a StateView refuses ledger names; the reader only gets a StateView."""
    from servo.storage import MemoryStore

    space = scoped(MemoryStore())
    events = history(catalog)
    run_compactor(space, spec, rules, [events])
    view = StateView(space)
    name = f"ledger/orchestration/2026-01-01/{events[0].event_id}.json"
    with pytest.raises(StateViewDenied):
        view.get(name)
    with pytest.raises(StateViewDenied):
        view.head("compactor/epoch")
    assert not hasattr(view, "put_if_absent") and not hasattr(view, "list_prefix")


def test_pure_core_never_imports_storage() -> None:
    """The fold and controllers are pure: no module under servo/core imports I/O layers."""
    core = Path(__file__).parents[2] / "servo" / "core"
    for path in core.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                assert not name.startswith(("servo.storage", "servo.compactor", "servo.tables")), (path, name)


def test_malformed_ledger_objects_are_quarantined_not_blocking(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    from servo.storage import MemoryStore

    space = scoped(MemoryStore())
    events = history(catalog)
    compactor = Compactor(space, spec, rules)
    compactor.start()
    bad = events[0].event_id[:-1] + "Z"
    space.put_if_absent(f"ledger/orchestration/2026-01-01/{bad}.json", b"{not json")
    append(Ledger(space), events)
    compactor.notify([bad, *(e.event_id for e in events)])
    compactor.compact()
    tables = read_tables(space, spec)
    assert {r["reason"] for r in tables["rejected_events"]} >= {"INVALID", "STALE_ATTEMPT"}
    assert [r["state"] for r in tables["runs"]] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]


def test_one_reader_follows_manifests_incrementally_and_across_base_merges(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    """A long-lived reader applies only new deltas, and starts over when the base changes."""
    from servo.storage import MemoryStore

    events = history(catalog)
    space = scoped(MemoryStore())
    compactor = Compactor(space, spec, rules, merge_every=3)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    reader = ProjectionReader(StateView(space), spec)
    for i in range(0, len(events), 4):
        append(ledger, events[i : i + 4])
        compactor.compact()
        assert reader.read().tables == expected_tables(events[: i + 4], spec, rules)


def test_a_long_lived_readers_tables_and_view_match_a_fresh_read_after_late_events(
    spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    """Kept per row (sorted keys, controller records), a reader's output equals a fresh
    reader's and `ProjectionView.from_tables` of it, through refolds and base merges."""
    from datetime import timedelta

    from servo.core.controllers import ProjectionView
    from servo.core.ids import heartbeat_timer_id
    from servo.storage import MemoryStore

    events = history(catalog)
    b = EventBuilder(catalog, now=events[-1].occurred_at)
    for n, run in enumerate(RUNS):  # heartbeat checks, some rescheduled, some fired: timers_of groups
        for key in ("a", "b"):
            first = heartbeat_timer_id(run, key, 1, 1_800_000_000 + n)
            events.append(b.timer_requested(first, "HEARTBEAT_CHECK", b.now + timedelta(minutes=5), run_id=run, task_key=key, attempt=1))
            if key == "a":
                events.append(b.timer_fired(first, "HEARTBEAT_CHECK", run_id=run, task_key=key, attempt=1))
                later = heartbeat_timer_id(run, key, 1, 1_800_000_100 + n)
                events.append(b.timer_requested(later, "HEARTBEAT_CHECK", b.now + timedelta(minutes=9), run_id=run, task_key=key, attempt=1))
    shuffled = events[:]
    random.Random(11).shuffle(shuffled)  # late events: whole runs refold
    space = scoped(MemoryStore())
    compactor = Compactor(space, spec, rules, merge_every=4)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    reader = ProjectionReader(StateView(space), spec)
    driver = ProjectionReader(StateView(space), spec, ProjectionView.TABLES)  # as the engine reads
    views: list[tuple[ProjectionView, ProjectionView]] = []
    grouped = 0
    for i in range(0, len(shuffled), 5):
        append(ledger, shuffled[i : i + 5])
        compactor.compact()
        tables = reader.read().tables
        assert tables == read_tables(space, spec)
        fresh = ProjectionView.from_tables(tables)
        assert reader.view() == fresh
        driver.refresh()
        patched = driver.view()  # the last view's mappings patched with the changed records
        assert patched == fresh
        for name in ("runs", "tasks", "outbox", "timers"):  # controllers iterate: same order
            assert list(getattr(patched, name)) == sorted(getattr(fresh, name)), name
        assert timer_groups(patched) == timer_groups(fresh)
        grouped = max(grouped, len(timer_groups(patched)))
        views.append((patched, ProjectionView.from_tables(tables)))
    assert reader.read().tables == expected_tables(events, spec, rules)
    for old, copy in views:  # a view handed out never changes afterwards
        assert old == copy and timer_groups(old) == timer_groups(copy)
    assert grouped == 6 and max(len(g) for g in timer_groups(views[-1][0]).values()) == 2


def timer_groups(view: Any) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What `timers_of` answers for every attempt that has timers."""
    keys = {(t.timer_type, t.run_id, t.task_key, t.attempt) for t in view.timers.values()}
    return {k: view.timers_of(*k) for k in keys}


def test_repair_of_some_days_lists_only_their_folders(catalog: Catalog, spec: Spec, rules: Registry) -> None:
    """Events are filed by the UTC day of their id; a sweep of the last days finds the
    unfolded events of those days only, and a full sweep finds the rest."""
    from datetime import UTC, date, datetime

    from servo.storage import MemoryStore

    space = scoped(MemoryStore())
    compactor = Compactor(space, spec, rules)
    compactor.start()
    silent = Ledger(space)  # appends without notifying: every notification was lost
    old = EventBuilder(catalog, now=datetime(2026, 3, 1, 12, tzinfo=UTC))
    new = EventBuilder(catalog, now=datetime(2026, 3, 9, 23, 59, 59, 990000, tzinfo=UTC))
    append(silent, [old.run_triggered("run_old"), old.plan_created("run_old", [TaskDef("a")])])
    append(silent, [new.run_triggered("run_new"), new.plan_created("run_new", [TaskDef("a")])])

    assert compactor.repair([date(2026, 3, 9), date(2026, 3, 10)]) == 2
    compactor.compact()
    assert [r["run_id"] for r in read_tables(space, spec)["runs"]] == ["run_new"]
    assert compactor.repair([date(2026, 3, 9)]) == 0  # folded already
    assert compactor.repair() == 2
    compactor.compact()
    assert sorted(r["run_id"] for r in read_tables(space, spec)["runs"]) == ["run_new", "run_old"]
