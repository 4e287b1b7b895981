"""The Layer 1 projection: a pure function of the *set* of events (INV-1, INV-2).

Fold order is event_id order. Events are routed to the partition of their run; a
batch whose events all sort after everything a partition has folded is applied in
place (the fast path, O(new events)); a late event makes its partition refold from
the partition's own history. Either way the tables equal a full refold of the set.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from servo._errors import InvalidEvent, ServoError
from servo.core._registry import Registry
from servo.core.events import Catalog, Event, UnknownEventType, format_timestamp
from servo.core.fold._engine import Ctx, Engine
from servo.core.fold._rows import Partition, Rejection
from servo.core.fold._validate import check_semantics, partition_key
from servo.spec import Spec, TableSpec

__all__ = ["LAYER1_TABLES", "Projection", "fold", "fold_file", "fold_lines"]

_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,256}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAYER1_TABLES = ("tasks", "runs", "dep_satisfaction", "dispatch_outbox", "timers", "rejected_events")


class Projection:
    """Incrementally folded Layer 1 tables; `apply` in any order, any split."""

    def __init__(self, spec: Spec, registry: Registry, *, keep_history: bool = True) -> None:
        self.spec = spec
        self.catalog = Catalog.for_spec(spec)
        self.engine = Engine(spec, registry)
        # One context for every event folded (set field by field: cheaper than a new one).
        self._ctx = Ctx(Partition(""), "", "", _EPOCH, {}, None, self.engine)
        self.keep_history = keep_history
        self.partitions: dict[str, Partition] = {}
        self.invalid: dict[str, Rejection] = {}
        self._history: dict[str, dict[str, str]] = {}
        self.last_event_id = ""
        # Change tracking for L0 deltas: event ids folded in place per partition,
        # primary keys a partition had before it was refolded, new invalid events.
        self._touched: dict[str, set[str]] = {}
        self._refolded: dict[str, dict[str, set[tuple[Any, ...]]]] = {}
        self._new_invalid: set[str] = set()

    # ------------------------------------------------------------ ingest --

    def apply_lines(self, lines: Sequence[str | bytes]) -> None:
        """Parse JSON lines (blank lines ignored) and fold them; bad lines are rejected.

        Two passes keep memory to the raw lines plus a small index: first index each
        line by event_id, then parse and fold the lines in event_id order.
        """
        # One str per line, "event_id NUL line-number": a third of a tuple's memory.
        index: list[str] = []
        for number, raw in enumerate(lines):
            obj = self._decode(raw)
            if obj is _SKIP:
                continue
            event_id = obj.get("event_id") if isinstance(obj, dict) else None
            if isinstance(event_id, str) and _PRINTABLE.match(event_id):
                index.append(f"{event_id}\x00{number}")
            else:
                self.parse(obj, raw)
        index.sort()
        self._apply_sorted(self._in_order(lines, index))

    def _decode(self, raw: str | bytes) -> Any:
        """Decoded JSON (`null` too: a line to reject, in any order), or `_SKIP` for a
        blank line or a rejected (undecodable) one."""
        if not raw.strip():
            return _SKIP
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._reject_text(_text(raw).strip(), "INVALID", None, "not valid JSON")
            return _SKIP

    def _in_order(self, lines: Sequence[str | bytes], index: list[str]) -> Iterator[Event]:
        i = 0
        while i < len(index):
            event_id = index[i].partition("\x00")[0]
            j = i + 1
            while j < len(index) and index[j].partition("\x00")[0] == event_id:
                j += 1
            numbers = (int(entry.partition("\x00")[2]) for entry in index[i:j])
            copies = [self.parse(orjson.loads(lines[n]), None) for n in numbers]
            valid = [e for e in copies if e is not None]
            if valid:
                yield valid[0] if len(valid) == 1 else min(valid, key=_canonical)
            i = j

    def _streamed(self, lines: Iterable[str | bytes], kept: list[str | bytes] | None) -> Iterator[Event]:
        """Events of lines already in event_id order; raise _OutOfOrder otherwise."""
        previous = ""
        held: Event | None = None  # the last event, yielded once the next id differs
        copies: list[Event] | None = None  # every copy of the held event_id, if several
        remaining = iter(lines)
        loads, decode, catalog_parse, parse = orjson.loads, self._decode, self.catalog.parse, self.parse
        fast_parsers = self.catalog.fast_parsers
        for raw in remaining:
            if kept is not None:
                kept.append(raw)
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:  # a blank line, or one to reject
                obj = decode(raw)
                if obj is _SKIP:
                    continue
            try:  # catalog.parse's fast path, inlined
                fast = fast_parsers[obj["event_type"]]
            except (KeyError, TypeError):  # not an object, an unknown or unhashable type
                fast = None
            try:  # self.parse without its calls; on a problem, it records the rejection
                event = fast(obj) if fast is not None else None
                if event is None:
                    event = catalog_parse(obj)
                check_semantics(event)
            except InvalidEvent:
                parsed = parse(obj, raw)
                if parsed is None:
                    continue
                event = parsed
            event_id = event[0]
            if event_id == previous:
                if copies is None:
                    assert held is not None
                    copies = [held]
                copies.append(event)
                continue
            if event_id < previous:
                if kept is not None:
                    kept.extend(remaining)
                raise _OutOfOrder
            if held is not None:
                yield held if copies is None else min(copies, key=_canonical)
                copies = None
            held = event
            previous = event_id
        if held is not None:
            yield held if copies is None else min(copies, key=_canonical)

    def parse(self, obj: object, text: str | bytes | None = None) -> Event | None:
        """Validate one decoded envelope; record a rejection and return None if bad.

        `text` is the raw line, used only to name an invalid event that has no id.
        """
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

    def _invalid(self, rejection: Rejection) -> None:
        if self.invalid.get(rejection.event_id) != rejection:
            self.invalid[rejection.event_id] = rejection
            self._new_invalid.add(rejection.event_id)

    def _reject(self, exc: InvalidEvent, obj: object, text: str | bytes | None, reason: str) -> None:
        event_type = obj.get("event_type") if isinstance(obj, dict) else None
        shown_type = event_type if isinstance(event_type, str) else None
        if exc.event_id is not None:
            self._invalid(Rejection(exc.event_id, reason, shown_type, str(exc)))
        else:
            raw = _text(text) if text is not None else json.dumps(obj, sort_keys=True, default=str)
            self._reject_text(raw.strip(), reason, shown_type, str(exc))

    def _reject_text(self, text: str, reason: str, event_type: str | None, detail: str) -> None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:26]
        event_id = f"invalid:{digest}"
        self._invalid(Rejection(event_id, reason, event_type, detail))

    def apply(self, events: Iterable[Event]) -> None:
        """Fold events (any order, duplicates allowed) into the tables."""
        batch = sorted((e for e in events if self._consistent(e)), key=_event_id)
        self._apply_sorted(_one_copy_each(batch))

    def _consistent(self, event: Event) -> bool:
        try:
            check_semantics(event)
        except InvalidEvent as exc:
            self._invalid(Rejection(event.event_id, "INVALID", event.event_type, str(exc)))
            return False
        return True

    def _apply_sorted(self, events: Iterable[Event]) -> None:
        """Fold events given in event_id order (one copy per id); refold late partitions.

        The cyclic garbage collector is paused meanwhile: the fold makes millions of
        acyclic rows, and each collection would rescan all of them (quadratic time).
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            self._apply_sorted_unpaused(events)
        finally:
            if paused:
                gc.enable()

    def _apply_sorted_unpaused(self, events: Iterable[Event]) -> None:
        late: set[str] = set()
        history = self._history if self.keep_history else None
        partitions = self.partitions
        appliers = self.engine.appliers
        ctx = self._ctx
        for event in events:
            event_id, event_type, _, _, idempotency_key, occurred_at, data, _, _, _ = event
            applier = appliers.get(event_type)
            if applier is None:
                self._invalid(Rejection(event_id, "UNKNOWN_EVENT_TYPE", event_type, "not a Layer 1 event"))
                continue
            run_id = data.get("run_id")
            key = run_id if type(run_id) is str else partition_key(event)
            part = partitions.get(key)
            if part is None:
                part = partitions[key] = Partition(key)
            if history is not None:
                stored = history.get(key)
                if stored is None:
                    stored = history[key] = {}
                text = _canonical(event)
                known = stored.get(event_id)
                if known is not None:
                    if text < known:  # a conflicting copy that wins: refold with it
                        stored[event_id] = text
                        late.add(key)
                    continue
                stored[event_id] = text
                if key in late:
                    continue
            if event_id <= part.max_event_id:
                if history is None:
                    if event_id == part.max_event_id:
                        continue  # a copy of the event just folded
                    raise ServoError(
                        f"partition {key!r}: an event arrived before ones already folded, and "
                        "this projection keeps no history to refold (use keep_history=True)"
                    )
                late.add(key)
                continue
            if history is not None:  # only incremental projections publish changes
                self._touched.setdefault(key, set()).add(event_id)
            # _fold_one, inlined: this loop runs once per event of the ledger.
            part.max_event_id = event_id
            if event_id > self.last_event_id:
                self.last_event_id = event_id
            keys = part.keys
            winner = keys.get(idempotency_key)
            if winner is not None and winner != event_id:
                part.rejected[event_id] = _duplicate(event, winner)
                continue
            keys[idempotency_key] = event_id
            ctx.part, ctx.event_type, ctx.event_id, ctx.occurred_at, ctx.data, ctx.row = (
                part, event_type, event_id, occurred_at, data, None
            )
            rejection = applier(ctx)
            if rejection is not None:
                part.rejected[event_id] = rejection
        for key in sorted(late):
            self._refold(key)

    def _refold(self, key: str) -> None:
        """Rebuild one partition from its history in event_id order."""
        if key not in self._refolded:
            self._refolded[key] = self._primary_keys(self.partitions[key])
        part = self.partitions[key] = Partition(key)
        for event_id in sorted(self._history[key]):
            event = self.catalog.parse(orjson.loads(self._history[key][event_id]))
            self._fold_one(part, event)

    def _fold_one(self, part: Partition, event: Event) -> None:
        event_id, event_type, _, _, key, occurred_at, data = event[:7]
        if event_id > part.max_event_id:
            part.max_event_id = event_id
        if event_id > self.last_event_id:
            self.last_event_id = event_id
        keys = part.keys
        winner = keys.get(key)
        if winner is not None and winner != event_id:
            part.rejected[event_id] = _duplicate(event, winner)
            return
        keys[key] = event_id
        ctx = self._ctx
        ctx.part, ctx.event_type, ctx.event_id, ctx.occurred_at, ctx.data, ctx.row = (
            part, event_type, event_id, occurred_at, data, None
        )
        rejection = self.engine.appliers[event_type](ctx)
        if rejection is not None:
            part.rejected[event_id] = rejection

    # ----------------------------------------------------------- changes --

    def _primary_keys(self, part: Partition) -> dict[str, set[tuple[Any, ...]]]:
        out: dict[str, set[tuple[Any, ...]]] = {}
        for table in LAYER1_TABLES:
            pk = self.spec.tables[table].primary_key
            out[table] = {tuple(row[k] for k in pk) for row in _partition_rows(table, part)}
        return out

    def take_changes(self) -> dict[str, tuple[list[dict[str, Any]], list[tuple[Any, ...]]]]:
        """Rows changed since the last call (JSON-ready) and primary keys deleted, per table.

        A partition folded in place contributes the rows whose row_version is one of the
        events folded (every change stamps row_version) and its run row (task counts);
        a refolded partition contributes all its rows and the keys it no longer has.
        """
        out: dict[str, tuple[list[dict[str, Any]], list[tuple[Any, ...]]]] = {}
        for table in LAYER1_TABLES:
            spec = self.spec.tables[table]
            rows: list[dict[str, Any]] = []
            deleted: list[tuple[Any, ...]] = []
            for key, before in self._refolded.items():
                part = self.partitions[key]
                current = list(_partition_rows(table, part))
                rows.extend(current)
                kept = {tuple(r[k] for k in spec.primary_key) for r in current}
                deleted.extend(sorted(before[table] - kept, key=lambda t: tuple(map(str, t))))
            for key, ids in self._touched.items():
                if key in self._refolded:
                    continue
                rows.extend(_partition_rows(table, self.partitions[key], ids))
            if table == "rejected_events":
                rows.extend(_row_dict(self.invalid[i]) for i in sorted(self._new_invalid))
            json_rows = [_json_row(spec, row) for row in rows]
            json_rows.sort(key=lambda r: tuple(str(r[k]) for k in spec.primary_key))
            if json_rows or deleted:
                out[table] = (json_rows, deleted)
        self._touched.clear()
        self._refolded.clear()
        self._new_invalid.clear()
        return out

    def folded_event_ids(self) -> set[str]:
        """Every event id this projection has seen (folded or rejected as invalid)."""
        seen = set(self.invalid)
        for stored in self._history.values():
            seen.update(stored)
        return seen

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


def _duplicate(event: Event, winner: str) -> Rejection:
    key = event.idempotency_key
    return Rejection(event.event_id, "DUPLICATE", event.event_type, f"idempotency_key {key!r} first used by {winner}")


def _event_id(event: Event) -> str:
    return event.event_id


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _canonical(event: Event) -> str:
    """Canonical JSON: copies of one event compare equal, conflicts deterministically.

    Kept as str: orjson's bytes keep an over-allocated buffer (~4 KiB each).
    """
    return orjson.dumps(event.envelope(), option=orjson.OPT_SORT_KEYS).decode()


def _one_copy_each(events: list[Event]) -> Iterator[Event]:
    """Sorted events with one copy per event_id (the smallest canonical text wins)."""
    i = 0
    while i < len(events):
        j = i + 1
        while j < len(events) and events[j].event_id == events[i].event_id:
            j += 1
        yield events[i] if j == i + 1 else min(events[i:j], key=_canonical)
        i = j


def _row_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _partition_rows(table: str, part: Partition, changed: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """A partition's rows of `table`; with `changed`, only rows whose row_version (a
    rejection's event_id) is one of those events, plus the run row (task counts).

    Filtering on the record before building its dict keeps a micro-compaction
    O(changed rows) in Python work on a run of 10,000 tasks.
    """
    if table == "tasks":
        for task in part.tasks.values():
            if changed is None or task.row_version in changed:
                row = _row_dict(task)
                row["deps_total"] = task.deps_total
                yield row
    elif table == "runs" and part.run is not None:
        row = _row_dict(part.run)
        for state, count in part.task_counts.items():
            row[f"tasks_{state.lower()}"] = count
        yield row
    elif table == "dep_satisfaction":
        yield from (_row_dict(e) for e in part.edges.values() if changed is None or e.row_version in changed)
    elif table == "dispatch_outbox":
        for outbox in part.outbox.values():
            if changed is None or outbox.row_version in changed:
                row = _row_dict(outbox)
                row["status"] = outbox.state
                row["cloud_task_id"] = outbox.cloud_task_id
                yield row
    elif table == "timers":
        for timer in part.timers.values():
            if changed is None or timer.row_version in changed:
                row = _row_dict(timer)
                row["cloud_task_id"] = timer.cloud_task_id
                yield row
    elif table == "rejected_events":
        yield from (_row_dict(r) for r in part.rejected.values() if changed is None or r.event_id in changed)


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


_SKIP: Any = object()
"""What `_decode` returns for a line with nothing to fold (blank, or rejected)."""


class _OutOfOrder(Exception):
    """The input was not in event_id order after all."""


def _without_bom(lines: Iterable[Any]) -> Iterator[Any]:
    """The lines, the first without a UTF-8 byte order mark (some editors add one)."""
    first = True
    for line in lines:
        if first:
            first = False
            if isinstance(line, bytes):
                line = line.removeprefix(b"\xef\xbb\xbf")
            elif isinstance(line, str):
                line = line.removeprefix("\ufeff")
        yield line


def fold_lines(lines: Iterable[str | bytes], spec: Spec, registry: Registry) -> Projection:
    """Fold JSON lines from scratch; one streaming pass when they are in event_id order.

    A ledger export is usually sorted by event_id: then each line is decoded once and
    folded at once, holding nothing but the tables. On the first line out of order the
    work is discarded and the lines are folded by the general two-pass path.
    """
    kept: list[str | bytes] = []
    projection = Projection(spec, registry, keep_history=False)
    try:
        projection._apply_sorted(projection._streamed(_without_bom(lines), kept))
        return projection
    except _OutOfOrder:
        pass
    projection = Projection(spec, registry, keep_history=False)
    projection.apply_lines(kept)
    return projection


def fold_file(path: Path, spec: Spec, registry: Registry) -> Projection:
    """Fold a JSONL file from scratch without holding it in memory when it is sorted."""
    projection = Projection(spec, registry, keep_history=False)
    try:
        with path.open("rb") as handle:
            projection._apply_sorted(projection._streamed(_without_bom(handle), None))
        return projection
    except _OutOfOrder:
        pass
    projection = Projection(spec, registry, keep_history=False)
    projection.apply_lines(path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines())
    return projection
