"""The projection reader: base + L0 deltas named by the manifest, nothing else.

Controllers get a `StateView`, a capability that can read only `manifests/` and
`state/` objects: there is no way from it to the ledger (P5, INV-7) and no listing
at all (P6).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from servo._errors import ServoError
from servo.compactor._manifest import Manifest, ManifestReader
from servo.core.fold import LAYER1_TABLES
from servo.spec import Spec
from servo.storage import ScopedStore, StoredObject
from servo.tables._parquet import read_parquet

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
    """The Layer 1 tables as of one manifest."""

    seq: int
    watermark: str | None
    last_event_id: str
    tables: dict[str, list[dict[str, Any]]]


class ProjectionReader:
    """Builds current tables from the latest manifest's base and deltas.

    It remembers what it has applied: when the next manifest keeps the same base and
    only appends deltas, only the new delta files are read (O(new rows) per read).
    """

    def __init__(self, view: StateView, spec: Spec) -> None:
        self._view = view
        self._spec = spec
        self._manifests = ManifestReader(view)
        self._base: dict[str, str] | None = None
        self._applied: tuple[dict[str, str], ...] = ()
        self._rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}

    def manifest(self) -> Manifest | None:
        """The latest manifest (pointer hint + probing)."""
        return self._manifests.latest()

    def read(self, manifest: Manifest | None = None) -> Snapshot:
        """Tables as of `manifest` (default: the latest); empty before any publish."""
        manifest = manifest if manifest is not None else self.manifest()
        if manifest is None:
            return Snapshot(0, None, "", {t: [] for t in LAYER1_TABLES})
        same_base = self._base == manifest.base and manifest.deltas[: len(self._applied)] == self._applied
        if not same_base:
            self._rows = {table: {} for table in LAYER1_TABLES}
            self._apply(manifest.base)
            self._applied = ()
        for files in manifest.deltas[len(self._applied) :]:
            self._apply(files)
        self._base, self._applied = manifest.base, manifest.deltas
        out = {}
        for table in LAYER1_TABLES:
            pk = self._spec.tables[table].primary_key
            out[table] = sorted(self._rows[table].values(), key=lambda r: tuple(str(r[k]) for k in pk))
        return Snapshot(manifest.seq, manifest.watermark, manifest.last_event_id, out)

    def _apply(self, files: dict[str, str]) -> None:
        for table in LAYER1_TABLES:
            spec = self._spec.tables[table]
            rows = self._rows[table]
            for key in self._deleted(files.get(f"{table}.deleted")):
                rows.pop(key, None)
            name = files.get(table)
            if name:
                for row in read_parquet(self._view.get(name).data, spec):
                    rows[tuple(row[k] for k in spec.primary_key)] = row

    def _deleted(self, name: str | None) -> list[tuple[Any, ...]]:
        if not name:
            return []
        return [tuple(k) for k in json.loads(self._view.get(name).data)]
