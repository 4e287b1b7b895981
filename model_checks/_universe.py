"""Everything the explorer computes once and shares between states.

States are small tuples of ints; the expensive parts (events, folds, views, controller
outputs) live here, memoised by what determines them:

- events are interned: a ledger is an int bitmask over event indices;
- a fold is a function of the folded event set (INV-1), so it is computed once per
  distinct folded mask, incrementally from the first parent that reached it (a
  clone of the parent's projection plus the new batch) and checked against a full
  refold of the set;
- controller outputs are functions of (folded mask, now, watermark) (INV-3).

The fold and the controllers are the runtime's own (`servo.core.fold`,
`servo.core.controllers`), looked up through their modules at call time so a mutant
monkeypatched in before the run is what gets explored.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import orjson

from model_checks._config import McConfig
from servo.core import controllers as C
from servo.core._registry import Registry
from servo.core.builders import TaskDef
from servo.core.controllers import OutboxRecord, ProjectionView, TimerRecord
from servo.core.events import Catalog, Event, format_timestamp
from servo.core.fold import Projection
from servo.core.fold._rows import Partition
from servo.core.ids import ulid_timestamp
from servo.spec import Spec

__all__ = ["RUN", "T0", "EventInfo", "FoldEntry", "Universe", "bits"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RUN = "run_mc"
TENANT = "acme"
WORKSPACE = "prod"
DERIVED = frozenset({"TaskBecameReady", "TaskSkipped", "RunCompleted"})
WORKER_FACTS = frozenset({"TaskStarted", "TaskHeartbeat", "TaskFinished"})

Violation = tuple[str, str]
PUBLISHED_SAMPLE = 16
PUBLISHED_FIRST = 200
PROJECTION_CACHE = 40_000  # projections kept per cache; an evicted one is rebuilt


_BITS: dict[int, tuple[int, ...]] = {}


def bits(mask: int) -> tuple[int, ...]:
    """Indices of the set bits of `mask`, lowest first (memoised: masks recur)."""
    hit = _BITS.get(mask)
    if hit is None:
        out = []
        rest = mask
        while rest:
            low = rest & -rest
            out.append(low.bit_length() - 1)
            rest ^= low
        hit = tuple(out)
        if len(_BITS) < 1 << 20:
            _BITS[mask] = hit
    return hit


@dataclass(frozen=True, slots=True)
class EventInfo:
    """An interned event and what the checks need from it."""

    index: int
    event: Event
    text: str
    valid: Violation | None  # why the ledger must not hold it (derived / not in the catalog), or None
    evidence_ms: int | None  # a worker's sign of life: TaskStarted time or heartbeat_at
    ms: int  # the instant of its event_id


@dataclass(slots=True)
class FoldEntry:
    """The projection of one folded event set and what controllers and checks read."""

    mask: int
    view: ProjectionView  # from the full refold's rows
    published: ProjectionView | None  # from the full refold's published (JSON) tables
    pending_rows: tuple[OutboxRecord, ...]
    scheduled: tuple[TimerRecord, ...]
    accepted: frozenset[int]
    max_event_id: str
    max_ms: int  # instant of the newest folded event
    all_terminal: bool
    run_state: str
    violation: Violation | None


def ms_of(at: datetime) -> int:
    """Milliseconds since the model's epoch T0."""
    return (at - T0) // timedelta(milliseconds=1)


class Universe:
    """Interned events, memoised folds and controller outputs for one config + code."""

    def __init__(self, cfg: McConfig, spec: Spec, registry: Registry) -> None:
        self.cfg = cfg
        self.spec = spec
        self.catalog = Catalog(spec)
        # One compiled engine (guards/effects resolved from the registry *now*, i.e.
        # after any mutant was patched in) shared by every projection of this run.
        self._template = Projection(spec, registry, keep_history=True)
        self.cconfig = C.ControllerConfig(self.catalog, repair_grace_sec=1, lag_recheck_sec=1)
        self.events: list[EventInfo] = []
        self._by_text: dict[str, int] = {}
        self.same_id: dict[str, int] = {}  # event_id -> mask of interned events with it
        self.key_mask: dict[str, int] = {}  # idempotency key -> mask of interned events
        self.evidence: dict[str, int] = {}  # attempt_id -> mask of evidence events
        self.folds: dict[int, FoldEntry] = {}
        self._incremental: dict[int, Projection] = {}  # as the compactor built it, batch by batch
        self._canonical: dict[int, Projection] = {}  # full refolds, by sorted prefix
        self.memo: dict[tuple[Any, ...], Any] = {}
        self._dt: dict[int, datetime] = {}
        self.deps = {t.task_key: tuple(sorted(set(t.depends_on))) for t in cfg.tasks}
        self.timeouts = {t.task_key: t.heartbeat_timeout_sec for t in cfg.tasks}
        self.stats = {"folds": 0, "events": 0}

    # ------------------------------------------------------------------ time --

    def dt(self, ms: int) -> datetime:
        """The instant `ms` milliseconds after T0 (cached)."""
        at = self._dt.get(ms)
        if at is None:
            at = self._dt[ms] = T0 + timedelta(milliseconds=ms)
        return at

    # ---------------------------------------------------------------- events --

    def intern(self, event: Event) -> int:
        """The index of `event` (same envelope -> same index)."""
        text = orjson.dumps(event.envelope(), option=orjson.OPT_SORT_KEYS).decode()
        index = self._by_text.get(text)
        if index is not None:
            return index
        index = len(self.events)
        valid: Violation | None = None
        if event.event_type in DERIVED:
            valid = ("DERIVED", f"derived event {event.event_type} written to the ledger (SPEC §3: never stored)")
        else:
            try:
                self.catalog.parse(event.envelope())
            except Exception as exc:  # a producer wrote what the catalog refuses
                valid = ("LEDGER", f"invalid event in the ledger: {exc}")
        evidence: int | None = None
        if event.event_type == "TaskStarted":
            evidence = ms_of(event.occurred_at)
        elif event.event_type == "TaskHeartbeat":
            evidence = ms_of(datetime.fromisoformat(event.data["heartbeat_at"]))
        self.events.append(EventInfo(index, event, text, valid, evidence, ms_of(ulid_timestamp(event.event_id))))
        self._by_text[text] = index
        bit = 1 << index
        self.same_id[event.event_id] = self.same_id.get(event.event_id, 0) | bit
        self.key_mask[event.idempotency_key] = self.key_mask.get(event.idempotency_key, 0) | bit
        if evidence is not None:
            aid = event.data["attempt_id"]
            self.evidence[aid] = self.evidence.get(aid, 0) | bit
        self.stats["events"] += 1
        return index

    def mask_of(self, events: list[Event]) -> tuple[int, ...]:
        """Interned indices of events, in order."""
        return tuple(self.intern(e) for e in events)

    def make(self, event_type: str, data: dict[str, Any], ms: int, source: str) -> Event:
        """A catalog event minted at `ms` with a deterministic id."""
        return C.Emitter(self.cconfig, TENANT, WORKSPACE, self.dt(ms), source).emit(event_type, data)

    def initial_events(self) -> tuple[int, ...]:
        """RunTriggered and PlanCreated of the model's run."""
        trigger = self.make(
            "RunTriggered",
            {"run_id": RUN, "plan_id": "plan_mc", "trigger": {"kind": "MANUAL"}, "root_assets": [], "labels": {}},
            0, "api",
        )
        plan = self.make(
            "PlanCreated",
            {"run_id": RUN, "plan_id": "plan_mc", "tasks": [t.payload() for t in self.cfg.tasks]},
            1, "api",
        )
        return self.mask_of([trigger, plan])

    # ------------------------------------------------------------------ fold --

    def _fresh(self) -> Projection:
        p = object.__new__(Projection)
        p.__dict__.update(self._template.__dict__)
        p.partitions = {}
        p.invalid = {}
        p._history = {}
        p.last_event_id = ""
        p._touched = {}
        p._refolded = {}
        p._new_invalid = set()
        return p

    def _clone(self, src: Projection) -> Projection:
        p = object.__new__(Projection)
        p.__dict__.update(src.__dict__)
        p.partitions = {k: _clone_partition(v) for k, v in src.partitions.items()}
        p.invalid = dict(src.invalid)
        p._history = {k: dict(v) for k, v in src._history.items()}
        p._touched = {}
        p._refolded = {}
        p._new_invalid = set()
        return p

    def _evict(self, cache: dict[int, Projection]) -> None:
        if len(cache) > PROJECTION_CACHE:
            for key in list(cache)[: len(cache) // 2]:  # oldest half (insertion order)
                del cache[key]

    def canonical(self, mask: int) -> Projection:
        """The full refold of `mask`: a left fold in event_id order from scratch.

        Memoised by sorted prefix (the fold of a prefix never depends on what follows),
        so a new set costs the fold of the events past its longest known prefix.
        """
        hit = self._canonical.get(mask)
        if hit is not None:
            return hit
        order = sorted(bits(mask), key=lambda i: self.events[i].event.event_id)
        prefix, k = mask, len(order)
        while k > 0:
            k -= 1
            prefix &= ~(1 << order[k])
            if prefix in self._canonical:
                break
        if k > 0:
            projection = self._clone(self._canonical[prefix])
        else:
            projection = self._fresh()
            projection.keep_history = False
        projection.apply([self.events[i].event for i in order[k:]])
        self._evict(self._canonical)
        self._canonical[mask] = projection
        return projection

    def fold(self, mask: int, parent: int | None) -> FoldEntry:
        """The fold of `mask`, computed from `parent`'s projection the first time."""
        entry = self.folds.get(mask)
        if entry is not None:
            return entry
        from model_checks import _checks

        self.stats["folds"] += 1
        base = self._incremental.get(parent) if parent is not None else None
        in_order = False
        if base is None or parent is None:
            incremental = self._fresh()
            incremental.apply([self.events[i].event for i in bits(mask)])
        else:
            incremental = self._clone(base)
            new = [self.events[i].event for i in bits(mask & ~parent)]
            # Re-deliver the newest folded event with the batch: a compactor that
            # re-reads events after a crash must not change anything (INV-2).
            newest = max(bits(parent), key=lambda i: self.events[i].event.event_id)
            incremental.apply([*new, self.events[newest].event])
            # Events that all sort after the parent's extend its canonical fold: the
            # full refold would repeat this very computation (the parent's incremental
            # and canonical folds were already checked equal), so it is shared. Late
            # events (some sort before the parent's newest) get a real full refold.
            in_order = parent in self._canonical and min(e.event_id for e in new) > self.folds[parent].max_event_id
        self._evict(self._incremental)
        self._incremental[mask] = incremental
        if in_order:
            self._evict(self._canonical)
            self._canonical[mask] = full = incremental
        else:
            full = self.canonical(mask)
        view = ProjectionView.from_projection(full)
        # The published form (JSON tables -> view) is rebuilt for the first folds and
        # then every PUBLISHED_SAMPLE-th one: it exercises the same code each time.
        published = None
        if self.stats["folds"] <= PUBLISHED_FIRST or self.stats["folds"] % PUBLISHED_SAMPLE == 0:
            published = ProjectionView.from_tables(full.tables())
        entry = FoldEntry(
            mask=mask,
            view=view,
            published=published,
            pending_rows=tuple(C.pending_dispatches(view)),
            scheduled=tuple(t for t in view.timers.values() if t.state == "SCHEDULED"),
            accepted=frozenset(),
            max_event_id=max(self.events[i].event.event_id for i in bits(mask)),
            max_ms=max(self.events[i].ms for i in bits(mask)),
            all_terminal=all(t.is_terminal for t in view.tasks.values()) and bool(view.tasks),
            run_state=view.runs[RUN].state if RUN in view.runs else "",
            violation=None,
        )
        entry.violation = _checks.check_fold(self, entry, incremental, full)
        self.folds[mask] = entry
        return entry

    def timer_settled(self, folded: int, timer_id: str) -> bool:
        """The folded view shows the timer fired, cancelled or moot: it can no longer
        change any task, so neither the clock nor quiescence has to wait for it."""
        key = ("settled", folded, timer_id)
        hit = self.memo.get(key)
        if hit is None:
            view = self.folds[folded].view
            timer = view.timers.get(timer_id)
            hit = self.memo[key] = timer is not None and (timer.state != "SCHEDULED" or C.timer_is_moot(view, timer))
        return hit  # type: ignore[no-any-return]

    def rejected_ids(self, projection: Projection) -> dict[str, str]:
        """event_id -> rejection reason, over every partition and invalid event."""
        out = {r.event_id: r.reason for r in projection.invalid.values()}
        for part in projection.partitions.values():
            for rejection in part.rejected.values():
                out[rejection.event_id] = rejection.reason
        return out

    # ----------------------------------------------------------- controllers --

    def reconcile(self, folded: int, now: int, watermark: int) -> tuple[tuple[int, ...], Violation | None]:
        """The controllers' output on the folded view at `now` (memoised), checked for
        determinism: a second call on the view rebuilt from the published tables must
        give the same events (INV-3, INV-7)."""
        key = ("reconcile", folded, now, watermark)
        hit = self.memo.get(key)
        if hit is None:
            entry = self.folds[folded]
            first = C.reconcile(entry.view, self.dt(now), self.dt(watermark), tenant=TENANT, workspace=WORKSPACE, config=self.cconfig)
            again = C.reconcile(entry.published or entry.view, self.dt(now), self.dt(watermark), tenant=TENANT, workspace=WORKSPACE, config=self.cconfig)
            violation = None
            if [e.to_json() for e in first] != [e.to_json() for e in again]:
                violation = ("INV-3", "reconcile gave different events for the same view and now")
            hit = self.memo[key] = (self.mask_of(first), violation)
        return hit  # type: ignore[no-any-return]

    def repair(self, folded: int, now: int, watermark: int) -> tuple[int, ...]:
        """Anti-entropy's output (memoised)."""
        key = ("repair", folded, now, watermark)
        hit = self.memo.get(key)
        if hit is None:
            entry = self.folds[folded]
            events = C.repair(entry.view, self.dt(now), self.dt(watermark), tenant=TENANT, workspace=WORKSPACE, config=self.cconfig)
            hit = self.memo[key] = self.mask_of(events)
        return hit  # type: ignore[no-any-return]

    def on_timer(self, folded: int, timer_id: str, now: int, watermark: int) -> tuple[tuple[int, ...], Violation | None]:
        """The timer handler's output (memoised), with the INV-9 guard check."""
        key = ("timer", folded, timer_id, now, watermark)
        hit = self.memo.get(key)
        if hit is None:
            entry = self.folds[folded]
            timer = entry.view.timers[timer_id]
            events = C.on_timer_fired(
                entry.view, timer, self.dt(now), self.dt(watermark), tenant=TENANT, workspace=WORKSPACE, config=self.cconfig
            )
            violation = None
            # Acting = deciding something: a timeout, or firing a timer that is not moot
            # (a moot one is retired early by design: nothing it guards can change).
            acting = [
                e for e in events
                if e.event_type == "AttemptTimedOut"
                or (e.event_type == "TimerFired" and not C.timer_is_moot(entry.view, timer))
            ]
            if acting and ms_of(timer.fire_at) > watermark:
                violation = (
                    "INV-9",
                    f"timer {timer_id} acted ({acting[0].event_type}) with the watermark "
                    f"{format_timestamp(self.dt(watermark))} before its fire_at {format_timestamp(timer.fire_at)}",
                )
            hit = self.memo[key] = (self.mask_of(events), violation)
        return hit  # type: ignore[no-any-return]

    def dispatch_outcome(self, row: OutboxRecord, status: C.CreateStatus, now: int) -> tuple[tuple[int, ...], Violation | None]:
        """The dispatcher's events after the queue answered `status` (memoised)."""
        key = ("dispatch", row, status, now)
        hit = self.memo.get(key)
        if hit is None:
            events = C.dispatch_outcome_events(row, status, self.dt(now), tenant=TENANT, workspace=WORKSPACE, config=self.cconfig)
            violation = None
            if status is not C.CreateStatus.REJECTED and [e.event_type for e in events] != ["DispatchEnqueued"]:
                violation = (
                    "INV-4",
                    f"queue task {row.cloud_task_id} exists (create answered {status.value}) "
                    f"but the dispatcher emitted {[e.event_type for e in events]} instead of DispatchEnqueued",
                )
            hit = self.memo[key] = (self.mask_of(events), violation)
        return hit  # type: ignore[no-any-return]

    def worker_event(self, kind: str, payload: tuple[str, int, str], now: int, outcome: str = "") -> int:
        """A worker callback for attempt `payload` = (task_key, attempt, attempt_id)."""
        key = ("worker", kind, payload, now, outcome)
        hit = self.memo.get(key)
        if hit is None:
            task_key, attempt, attempt_id = payload
            data: dict[str, Any] = {
                "run_id": RUN, "task_key": task_key, "attempt": attempt,
                "attempt_id": attempt_id, "worker_id": "w-1",
            }
            if kind == "TaskHeartbeat":
                data["heartbeat_at"] = format_timestamp(self.dt(now))
            if kind == "TaskFinished":
                data["outcome"] = outcome
                if outcome == "FAILED":
                    data["error_message"] = "boom"
            # Two workers holding one attempt (a duplicate delivery) may report different
            # outcomes at one instant: the id hashes the payload, not just the key, so
            # different facts never share an event_id (P1).
            seed = self.catalog.idempotency_key(kind, data) + "|" + json.dumps(data, sort_keys=True)
            event = self.catalog.make(
                kind, data, event_id=C.deterministic_ulid(self.dt(now), seed), tenant_id=TENANT,
                workspace_id=WORKSPACE, occurred_at=self.dt(now), source="worker:w-1",
            )
            hit = self.memo[key] = self.intern(event)
        return hit  # type: ignore[no-any-return]

    def cancel_event(self, now: int) -> int:
        """RunCancelRequested at `now`."""
        key = ("cancel", now)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self.intern(
                self.make("RunCancelRequested", {"run_id": RUN, "requested_by": "model"}, now, "api")
            )
        return hit  # type: ignore[no-any-return]

    def timer_ack(self, timer: TimerRecord, now: int) -> int:
        """TimerEnqueued for a timer whose queue task was created."""
        key = ("timer_ack", timer.timer_id, now)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self.intern(
                self.make("TimerEnqueued", {"timer_id": timer.timer_id, "cloud_task_id": timer.cloud_task_id}, now, "timer-dispatcher")
            )
        return hit  # type: ignore[no-any-return]

    def ledger_lines(self, ledger: int) -> list[str]:
        """The ledger as JSONL lines in event_id order (what `servo fold` replays)."""
        return [self.events[i].text for i in sorted(bits(ledger), key=lambda i: self.events[i].event.event_id)]


def _row(obj: Any) -> tuple[Any, ...]:
    if obj is None:
        return ()
    return tuple(
        tuple(sorted(v.items())) if isinstance(v, dict) else v for v in (getattr(obj, n) for n in type(obj).__slots__)
    )


def fingerprint(p: Projection) -> tuple[Any, ...]:
    """Every row of every table of `p`, canonically ordered (equal iff tables() equal,
    without the JSON formatting)."""
    parts = []
    for key in sorted(p.partitions):
        part = p.partitions[key]
        parts.append((
            key,
            _row(part.run),
            tuple(sorted((k, v) for k, v in part.task_counts.items() if v)),
            tuple(_row(part.tasks[k]) for k in sorted(part.tasks)),
            tuple(_row(part.edges[k]) for k in sorted(part.edges)),
            tuple(_row(part.outbox[k]) for k in sorted(part.outbox)),
            tuple(_row(part.timers[k]) for k in sorted(part.timers)),
            tuple(sorted(part.rejected.items())),
        ))
    return (tuple(parts), tuple(sorted(p.invalid.items())))


_GETTERS: dict[type, Any] = {}


def _copy_row(row: Any) -> Any:
    # A slots dataclass's __slots__ are its fields in __init__ order.
    cls = type(row)
    getter = _GETTERS.get(cls)
    if getter is None:
        getter = _GETTERS[cls] = attrgetter(*cls.__slots__)
    return cls(*getter(row))


def _clone_partition(src: Partition) -> Partition:
    return Partition(
        key=src.key,
        run=_copy_row(src.run) if src.run is not None else None,
        tasks={k: _copy_row(v) for k, v in src.tasks.items()},
        topo_order=list(src.topo_order),
        downstream=src.downstream,  # assigned once by the plan, never mutated
        edges={k: _copy_row(v) for k, v in src.edges.items()},
        outbox={k: _copy_row(v) for k, v in src.outbox.items()},
        timers={k: _copy_row(v) for k, v in src.timers.items()},
        rejected=dict(src.rejected),
        keys=dict(src.keys),
        task_counts=dict(src.task_counts),
        max_event_id=src.max_event_id,
        pending=deque(),
    )


def task_def(cfg: McConfig, key: str) -> TaskDef:
    """The plan entry of a task."""
    return next(t for t in cfg.tasks if t.task_key == key)
