"""The projection reader: base + L0 deltas named by the manifest, nothing else.

Controllers get a `StateView`, a capability that can read only `manifests/` and
`state/` objects: there is no way from it to the ledger (P5, INV-7) and no listing
at all (P6).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from servo._errors import CorruptState, ObjectNotFound, ServoError
from servo.compactor._manifest import Manifest, ManifestReader
from servo.core.controllers import ProjectionView, TimerRecord
from servo.core.fold import LAYER1_TABLES
from servo.spec import Spec
from servo.storage import ScopedStore, StoredObject
from servo.tables._parquet import json_ready, parquet_rows

__all__ = ["ProjectionReader", "Snapshot", "StateView", "StateViewDenied"]

_READABLE = ("manifests/", "state/")


class StateViewDenied(ServoError):
    """Code holding a StateView asked for an object outside the published state."""


class StateView:
    """Read-only access to manifests and Parquet state; the ledger is out of reach."""

    __slots__ = ("_store",)

    def __init__(self, store: ScopedStore) -> None:
        self._store = store

    def _check(self, name: str) -> None:
        if not name.startswith(_READABLE) or ".." in name:
            raise StateViewDenied(f"{name!r} is not published state (only manifests/ and state/)")

    def get(self, name: str) -> StoredObject:
        """Read a manifest or state object."""
        self._check(name)
        return self._store.get(name)

    def head(self, name: str) -> int | None:
        """The generation of a manifest or state object, or None."""
        self._check(name)
        return self._store.head(name)


@dataclass(frozen=True)
class Snapshot:
    """The Layer 1 tables (those the reader reads) as of one manifest."""

    seq: int
    watermark: str | None
    last_event_id: str
    tables: dict[str, list[dict[str, Any]]]


class ProjectionReader:
    """Builds current tables from the latest manifest's base and deltas.

    It remembers what it has applied: when the next manifest keeps the same base and
    only appends deltas, only the new delta files are read, and only the rows they
    carry are re-sorted and turned into controller records, so a read of a large run
    costs O(new rows) plus copying the sorted lists out.
    """

    def __init__(self, view: StateView, spec: Spec, tables: Sequence[str] = LAYER1_TABLES) -> None:
        """`tables`: which Layer 1 tables to read (a driver needs only the
        ProjectionView ones); the others are not read at all."""
        self._view = view
        self._spec = spec
        self._tables = tuple(t for t in LAYER1_TABLES if t in tables)
        self._manifests = ManifestReader(view)
        self._base: dict[str, str] | None = None
        self._applied: tuple[dict[str, str], ...] = ()
        self._rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        # Per table: primary keys by their sort key (the rows' published order), the
        # keys added since the last read, whether a deletion calls for a full re-sort,
        # and the controllers' record of each row (ProjectionView tables only).
        self._order: dict[str, list[tuple[tuple[str, ...], tuple[Any, ...]]]] = {}
        self._added: dict[str, list[tuple[Any, ...]]] = {}
        self._resort: set[str] = set()
        self._records: dict[str, dict[tuple[Any, ...], Any]] = {}
        # The sorted mappings of the last view (never mutated once handed out: the next
        # view copies and patches them) and the records changed since, _GONE if deleted.
        self._published: dict[str, dict[Any, Any]] | None = None
        self._changes: dict[str, dict[tuple[Any, ...], Any]] = {}
        self._timer_groups: dict[tuple[str, str | None, str | None, int | None], dict[str, TimerRecord]] = {}
        self._timer_index: dict[tuple[str, str | None, str | None, int | None], tuple[TimerRecord, ...]] = {}

    def manifest(self) -> Manifest | None:
        """The latest manifest (pointer hint + probing)."""
        return self._manifests.latest()

    def read(self, manifest: Manifest | None = None) -> Snapshot:
        """Tables as of `manifest` (default: the latest); empty before any publish."""
        if manifest is None:
            manifest = self._catch_up_latest()
        else:
            self._catch_up(manifest)
        if manifest is None:
            return Snapshot(0, None, "", {t: [] for t in self._tables})
        out = {}
        for table in self._tables:
            rows = self._rows[table]
            out[table] = [rows[key] for _, key in self._sorted_keys(table)]
        return Snapshot(manifest.seq, manifest.watermark, manifest.last_event_id, out)

    def refresh(self) -> Manifest | None:
        """Catch up with the latest manifest for `view()` without copying the tables out
        (what a driver loop needs: O(new rows), not O(rows)); None before any publish."""
        return self._catch_up_latest()

    def _catch_up_latest(self) -> Manifest | None:
        """Catch up with the latest manifest. Its files can be gone if it was fetched
        longer than the compactor's GC grace ago (ADR 015): then start over from the
        manifest that is latest now."""
        for attempt in range(5):
            manifest = self.manifest()
            if manifest is None:
                return None
            try:
                self._catch_up(manifest)
            except CorruptState:
                self._base = None  # half applied: the next read starts over
                raise
            except ObjectNotFound as exc:
                self._base = None  # what was applied may be half a delta: rebuild
                if attempt == 4:  # not a collection race: the manifest names a file that is gone
                    raise CorruptState(
                        f"published state is missing ({exc}); it is derived from the ledger: "
                        "the next `servo run` on this home rebuilds it"
                    ) from None
                continue
            return manifest
        return None  # pragma: no cover - the loop returns or raises

    def _catch_up(self, manifest: Manifest) -> None:
        same_base = self._base == manifest.base and manifest.deltas[: len(self._applied)] == self._applied
        if not same_base:
            self._rows = {table: {} for table in self._tables}
            self._order = {table: [] for table in self._tables}
            self._added = {table: [] for table in self._tables}
            self._records = {table: {} for table in ProjectionView.TABLES}
            self._published, self._changes = None, {}
            self._apply(manifest.base)
            self._applied = ()
        for files in manifest.deltas[len(self._applied) :]:
            self._apply(files)
        self._base, self._applied = manifest.base, manifest.deltas

    def view(self) -> ProjectionView:
        """The controllers' view of the tables as of the last `read`/`refresh`.

        Built from the last view's sorted mappings plus the records changed since: a
        copy of each changed table (in C) and a re-sort only when keys were added, not
        a sort of every record in Python on every driver loop.
        """
        if self._published is None:
            self._published = {
                t: dict(sorted((_view_key(t, k), r) for k, r in self._records.get(t, {}).items()))
                for t in ProjectionView.TABLES
            }
            self._timer_groups, self._timer_index = {}, {}
            self._index_timers(self._published["timers"].values())
        else:
            timers = self._changes.get("timers")
            if timers:  # timers by attempt, for `timers_of`: only the attempts that changed
                old = self._published["timers"]
                self._index_timers([old[k[0]] for k in timers if k[0] in old], drop=True)
                self._index_timers([r for r in timers.values() if r is not _GONE])
            for table, changed in self._changes.items():
                if not changed:
                    continue
                current = dict(self._published[table])
                last = next(reversed(current), None)
                fresh: dict[Any, Any] = {}
                for key, record in changed.items():
                    vkey = _view_key(table, key)
                    if record is _GONE:
                        current.pop(vkey, None)
                    elif vkey in current:
                        current[vkey] = record
                    else:
                        fresh[vkey] = record
                if fresh and (last is None or min(fresh) > last):
                    for vkey in sorted(fresh):  # all after the last key (ids minted in order): append
                        current[vkey] = fresh[vkey]
                elif fresh:
                    current.update(fresh)
                    current = dict(sorted(current.items()))
                self._published[table] = current
        self._changes = {}
        p = self._published
        return ProjectionView.of_sorted(
            p["runs"], p["tasks"], p["dispatch_outbox"], p["timers"], timers_by_attempt=self._timer_index
        )

    def _index_timers(self, records: Iterable[TimerRecord], *, drop: bool = False) -> None:
        """Add (or `drop`) timer records in the by-attempt groups, and give each group it
        touches a new tuple in a new copy of the index (views handed out keep theirs)."""
        touched: set[tuple[str, str | None, str | None, int | None]] = set()
        for record in records:
            key = (record.timer_type, record.run_id, record.task_key, record.attempt)
            group = self._timer_groups.setdefault(key, {})
            if drop:
                group.pop(record.timer_id, None)
            else:
                group[record.timer_id] = record
            touched.add(key)
        if not touched:
            return
        index = dict(self._timer_index)
        for key in touched:
            group = self._timer_groups[key]
            if group:
                index[key] = tuple(group[t] for t in sorted(group))
            else:
                index.pop(key, None)
                del self._timer_groups[key]
        self._timer_index = index

    def _sorted_keys(self, table: str) -> list[tuple[tuple[str, ...], tuple[Any, ...]]]:
        order, added = self._order[table], self._added[table]
        if table in self._resort:
            order[:] = [(_sort_key(k), k) for k in self._rows[table]]
            order.sort(key=_first)
            self._resort.discard(table)
        elif added:
            order.extend((_sort_key(k), k) for k in added)
            order.sort(key=_first)  # a sorted run plus a short tail: near linear
        added.clear()
        return order

    def _apply(self, files: dict[str, str]) -> None:
        for table in self._tables:
            spec = self._spec.tables[table]
            rows = self._rows[table]
            records = self._records.get(table)
            changes = self._changes.setdefault(table, {}) if records is not None else None
            for key in self._deleted(files.get(f"{table}.deleted")):
                if rows.pop(key, None) is not None:
                    self._resort.add(table)
                if records is not None and changes is not None:
                    records.pop(key, None)
                    changes[key] = _GONE
            name = files.get(table)
            if name:
                added = self._added[table]
                for raw in _decoded(name, parquet_rows, self._view.get(name).data):
                    key = tuple(raw[k] for k in spec.primary_key)
                    if key not in rows:
                        added.append(key)
                    if records is not None and changes is not None:  # from the Arrow row: no text round trip
                        records[key] = changes[key] = ProjectionView.record(table, raw)
                    rows[key] = json_ready(spec, raw)  # after the record: this converts `raw` in place

    def _deleted(self, name: str | None) -> list[tuple[Any, ...]]:
        if not name:
            return []
        return [tuple(k) for k in _decoded(name, json.loads, self._view.get(name).data)]


def _decoded(name: str, decode: Callable[[bytes], Any], data: bytes) -> Any:
    """`decode(data)`, or CorruptState naming the object (never a decoder's traceback)."""
    try:
        return decode(data)
    except (pa.ArrowException, ValueError, TypeError, OSError) as exc:
        raise CorruptState(
            f"published state {name!r} is unreadable ({type(exc).__name__}: {exc}); it is derived from the "
            "ledger: the next `servo run` on this home rebuilds it"
        ) from None


_GONE = object()


def _view_key(table: str, key: tuple[Any, ...]) -> Any:
    """A view's key of a row: the primary key tuple for tasks, the one column else."""
    return key if table == "tasks" else key[0]


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(k) for k in key)


def _first(entry: tuple[tuple[str, ...], tuple[Any, ...]]) -> tuple[str, ...]:
    return entry[0]
