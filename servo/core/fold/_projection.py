"""The Layer 1 projection: a pure function of the *set* of events (INV-1, INV-2).

Fold order is event_id order. Events are routed to the partition of their run; a
batch whose events all sort after everything a partition has folded is applied in
place (the fast path, O(new events)); a late event makes its partition refold from
the partition's own history. Either way the tables equal a full refold of the set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servo._errors import InvalidEvent, ServoError
from servo.core._registry import Registry
from servo.core.events import Catalog, Event, UnknownEventType, format_timestamp
from servo.core.fold._engine import Ctx, Engine
from servo.core.fold._rows import Partition, Rejection
from servo.core.fold._validate import check_semantics, partition_key
from servo.spec import Spec, TableSpec

__all__ = ["LAYER1_TABLES", "Projection", "fold"]

LAYER1_TABLES = ("tasks", "runs", "dep_satisfaction", "dispatch_outbox", "timers", "rejected_events")


@dataclass(frozen=True, slots=True)
class _Stored:
    """An accepted-for-folding event kept for refolds: its canonical JSON."""

    event_id: str
    text: str


class Projection:
    """Incrementally folded Layer 1 tables; `apply` in any order, any split."""

    def __init__(self, spec: Spec, registry: Registry, *, keep_history: bool = True) -> None:
        self.spec = spec
        self.catalog = Catalog(spec)
        self.engine = Engine(spec, registry)
        self.keep_history = keep_history
        self.partitions: dict[str, Partition] = {}
        self.invalid: dict[str, Rejection] = {}
        self._history: dict[str, dict[str, str]] = {}
        self.last_event_id = ""
        self.dirty: set[str] = set()

    # ------------------------------------------------------------ ingest --

    def apply_lines(self, lines: Iterable[str | bytes]) -> None:
        """Parse JSON lines (blank lines ignored) and fold them; bad lines are rejected."""
        self._apply(self._parse_lines(lines))

    def _parse_lines(self, lines: Iterable[str | bytes]) -> Iterator[Event]:
        for raw in lines:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            text = text.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                self._reject_text(text, "INVALID", None, "not valid JSON")
                continue
            event = self.parse(obj, text)
            if event is not None:
                yield event

    def parse(self, obj: object, text: str | None = None) -> Event | None:
        """Validate one decoded envelope; record a rejection and return None if bad."""
        try:
            event = self.catalog.parse(obj)
            try:
                check_semantics(event)
            except InvalidEvent as exc:
                exc.event_id = event.event_id
                raise
            return event
        except UnknownEventType as exc:
            self._reject(exc, obj, text, "UNKNOWN_EVENT_TYPE")
        except InvalidEvent as exc:
            self._reject(exc, obj, text, "INVALID")
        return None

    def _reject(self, exc: InvalidEvent, obj: object, text: str | None, reason: str) -> None:
        event_type = obj.get("event_type") if isinstance(obj, dict) else None
        shown_type = event_type if isinstance(event_type, str) else None
        if exc.event_id is not None:
            self.invalid[exc.event_id] = Rejection(exc.event_id, reason, shown_type, str(exc))
        else:
            raw = text if text is not None else json.dumps(obj, sort_keys=True, default=str)
            self._reject_text(raw, reason, shown_type, str(exc))

    def _reject_text(self, text: str, reason: str, event_type: str | None, detail: str) -> None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:26]
        event_id = f"invalid:{digest}"
        self.invalid[event_id] = Rejection(event_id, reason, event_type, detail)

    def apply(self, events: Iterable[Event]) -> None:
        """Fold events (any order, duplicates allowed) into the tables."""
        self._apply(e for e in events if self._consistent(e))

    def _consistent(self, event: Event) -> bool:
        try:
            check_semantics(event)
        except InvalidEvent as exc:
            self.invalid[event.event_id] = Rejection(event.event_id, "INVALID", event.event_type, str(exc))
            return False
        return True

    def _apply(self, events: Iterable[Event]) -> None:
        batches: dict[str, list[Event]] = {}
        for event in events:
            if not self.engine.handles(event.event_type):
                self.invalid[event.event_id] = Rejection(
                    event.event_id, "UNKNOWN_EVENT_TYPE", event.event_type, "not a Layer 1 event"
                )
                continue
            batches.setdefault(partition_key(event), []).append(event)
        for key, batch in batches.items():
            self._apply_partition(key, batch)

    def _apply_partition(self, key: str, batch: list[Event]) -> None:
        part = self.partitions.get(key)
        if part is None:
            part = self.partitions[key] = Partition(key)
        history = self._history.setdefault(key, {}) if self.keep_history else None
        batch.sort(key=lambda e: e.event_id)
        fresh: list[Event] = []
        late = False
        for event in batch:
            if history is not None:
                text = event.to_json()
                known = history.get(event.event_id)
                if known is not None:
                    if text >= known:
                        continue  # the same event again (or a conflicting copy that loses)
                    late = True
                history[event.event_id] = text
            if event.event_id <= part.max_event_id:
                late = True
            fresh.append(event)
        if not fresh:
            return
        self.dirty.add(key)
        if late and history is not None:
            self.partitions[key] = part = Partition(key)
            fresh = sorted(
                (self.catalog.parse(json.loads(text)) for text in history.values()),
                key=lambda e: e.event_id,
            )
        elif late:
            raise ServoError(
                f"partition {key!r}: an event arrived before ones already folded, and this "
                "projection keeps no history to refold (use keep_history=True)"
            )
        for event in _one_copy_each(fresh):
            self._fold_one(part, event)

    def _fold_one(self, part: Partition, event: Event) -> None:
        if event.event_id > part.max_event_id:
            part.max_event_id = event.event_id
        if event.event_id > self.last_event_id:
            self.last_event_id = event.event_id
        key = event.idempotency_key
        winner = part.keys.get(key)
        if winner is not None and winner != event.event_id:
            part.rejected[event.event_id] = Rejection(
                event.event_id, "DUPLICATE", event.event_type, f"idempotency_key {key!r} first used by {winner}"
            )
            return
        part.keys[key] = event.event_id
        ctx = Ctx(part, event.event_type, event.event_id, event.occurred_at, event.data)
        rejection = self.engine.apply(ctx)
        if rejection is not None:
            part.rejected[event.event_id] = rejection

    # ------------------------------------------------------------ output --

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every Layer 1 table as JSON-ready rows sorted by primary key (SPEC §5)."""
        return {name: self.rows(name) for name in LAYER1_TABLES}

    def rows(self, table: str, partitions: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One table's rows (optionally only from some partitions), sorted by primary key."""
        spec = self.spec.tables[table]
        parts = (
            self.partitions.values()
            if partitions is None
            else (self.partitions[k] for k in partitions if k in self.partitions)
        )
        raw: list[dict[str, Any]] = []
        for part in parts:
            raw.extend(_partition_rows(table, part))
        if table == "rejected_events" and partitions is None:
            raw.extend(_row_dict(r) for r in self.invalid.values())
        out = [_json_row(spec, row) for row in raw]
        out.sort(key=lambda r: tuple(str(r[k]) for k in spec.primary_key))
        return out


def _one_copy_each(events: list[Event]) -> Iterator[Event]:
    """Sorted events with one copy per event_id (the smallest canonical text wins)."""
    i = 0
    while i < len(events):
        j = i + 1
        while j < len(events) and events[j].event_id == events[i].event_id:
            j += 1
        yield events[i] if j == i + 1 else min(events[i:j], key=Event.to_json)
        i = j


def _row_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _partition_rows(table: str, part: Partition) -> Iterator[dict[str, Any]]:
    if table == "tasks":
        for task in part.tasks.values():
            row = _row_dict(task)
            row["deps_total"] = task.deps_total
            yield row
    elif table == "runs" and part.run is not None:
        row = _row_dict(part.run)
        for state, count in part.task_counts.items():
            row[f"tasks_{state.lower()}"] = count
        yield row
    elif table == "dep_satisfaction":
        yield from (_row_dict(e) for e in part.edges.values())
    elif table == "dispatch_outbox":
        for outbox in part.outbox.values():
            row = _row_dict(outbox)
            row["status"] = outbox.state
            yield row
    elif table == "timers":
        yield from (_row_dict(t) for t in part.timers.values())
    elif table == "rejected_events":
        yield from (_row_dict(r) for r in part.rejected.values())


def _json_row(spec: TableSpec, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in spec.columns:
        value = row.get(column.name)
        if value is None and column.type == "int64" and not column.nullable:
            value = 0
        if isinstance(value, datetime):
            value = format_timestamp(value)
        out[column.name] = value
    return out


def fold(events: Iterable[Event], spec: Spec, registry: Registry) -> Projection:
    """Fold a set of events from scratch (no history kept: nothing can arrive late)."""
    projection = Projection(spec, registry, keep_history=False)
    projection.apply(events)
    return projection
