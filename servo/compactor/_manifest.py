"""Manifests: immutable, create-only, numbered; a pointer object is only a hint.

GCS allows about one write per second to one object name, so no single hot object
is compare-and-swapped per batch (SPEC §6, ADR 007). Each publish creates
`manifests/{seq:012d}.json` with `put_if_absent`: the sequence is gapless and
each number can be taken once, which is the compare-and-swap. `manifests/latest`
names a recent seq; readers start there and probe `seq+1, seq+2, ...` by name
(head, no listing) until one is missing. The pointer is rewritten at most once per
`pointer_interval` seconds and may lag; it is never trusted beyond a start point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from servo._errors import CasConflict, CorruptState, ObjectExists, ObjectNotFound
from servo.obs import MANIFEST_PUBLISH_SECONDS, timed
from servo.storage import ScopedStore, StoredObject

__all__ = ["POINTER", "Manifest", "ManifestReader", "ManifestStore", "ObjectReader", "manifest_name"]

POINTER = "manifests/latest"


def manifest_name(seq: int) -> str:
    """The object name of manifest `seq`."""
    return f"manifests/{seq:012d}.json"


@dataclass(frozen=True)
class Manifest:
    """What the compactor published: files per table, watermark, fencing epoch.

    `base` and each delta map a table name to its Parquet object (a delta also maps
    `{table}.deleted` to the primary keys it removes) and `_events` to the list of
    event ids folded into it, which is how a restarted compactor finds its history
    without listing.
    """

    seq: int
    epoch: int
    watermark: str | None
    last_event_id: str
    base: dict[str, str]
    deltas: tuple[dict[str, str], ...]

    def to_json(self) -> bytes:
        """Canonical JSON bytes."""
        body: dict[str, Any] = {
            "seq": self.seq,
            "epoch": self.epoch,
            "watermark": self.watermark,
            "last_event_id": self.last_event_id,
            "base": self.base,
            "deltas": list(self.deltas),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, name: str = "manifest") -> Manifest:
        """Parse a manifest object; CorruptState (naming `name`) if it is not one."""
        try:
            body = json.loads(data)
            manifest = cls(
                seq=int(body["seq"]),
                epoch=int(body["epoch"]),
                watermark=body["watermark"],
                last_event_id=str(body["last_event_id"]),
                base=_files(body["base"]),
                deltas=tuple(_files(d) for d in body["deltas"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptState(
                f"published state {name!r} is unreadable ({type(exc).__name__}: {exc}); it is derived from the "
                "ledger: the next `servo run` on this home rebuilds it"
            ) from None
        if manifest.watermark is not None and not isinstance(manifest.watermark, str):
            raise CorruptState(f"published state {name!r} is unreadable (watermark {manifest.watermark!r})")
        return manifest


def _files(value: Any) -> dict[str, str]:
    """A manifest's table -> object map, checked (TypeError if it is not one)."""
    files = dict(value)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise TypeError("a file map holds a non-string")
    return files


def _pointed(data: bytes) -> int:
    """The seq a pointer object names; 0 if it is unreadable (it is only a hint, and
    the next move overwrites it)."""
    try:
        return max(0, int(data))
    except ValueError:
        return 0


class ObjectReader(Protocol):
    """The read half of an object store."""

    def get(self, name: str) -> StoredObject:
        """Read an object."""
        ...

    def head(self, name: str) -> int | None:
        """An object's generation, or None."""
        ...


class ManifestReader:
    """Finds and reads manifests without listing (P6)."""

    def __init__(self, store: ObjectReader) -> None:
        self.store = store
        self._known = 0  # the newest seq this reader has seen: probing starts there too

    def latest_seq(self) -> int:
        """The seq of the newest manifest (0: none yet), by name only: start at the
        pointer hint (or the newest seq seen, if further: the pointer moves about once a
        second) and probe forward."""
        seq = max(self.pointer_seq(), self._known)
        while self.store.head(manifest_name(seq + 1)) is not None:
            seq += 1
        return seq

    def latest(self) -> Manifest | None:
        """The newest manifest (CorruptState if it cannot be parsed)."""
        for _ in range(3):
            seq = self.latest_seq()
            if seq == 0:
                return None
            try:
                manifest = self.get(seq)
            except ObjectNotFound:
                # Collected (ADR 015): what this reader last saw is older than the
                # GC grace. Start again from the pointer, which is past the collection.
                self._known = 0
                continue
            self._known = seq
            return manifest
        raise ObjectNotFound("no readable manifest: the latest ones keep being collected")

    def get(self, seq: int) -> Manifest:
        """Manifest `seq` (ObjectNotFound if it was never published, CorruptState if
        it cannot be parsed)."""
        name = manifest_name(seq)
        return Manifest.from_json(self.store.get(name).data, name)

    def pointer_seq(self) -> int:
        """The seq the pointer names (0 if it is missing or unreadable): a hint only."""
        try:
            return _pointed(self.store.get(POINTER).data)
        except ObjectNotFound:
            return 0


class ManifestStore(ManifestReader):
    """Reads and publishes manifests in one scope."""

    def __init__(self, store: ScopedStore) -> None:
        super().__init__(store)
        self.writer = store

    @timed(MANIFEST_PUBLISH_SECONDS, "manifest")
    def publish(self, manifest: Manifest) -> bool:
        """Create manifest `seq`; False if that number is already taken (lost the race)."""
        try:
            self.writer.put_if_absent(manifest_name(manifest.seq), manifest.to_json())
        except ObjectExists:
            return False
        return True

    def move_pointer(self, seq: int) -> None:
        """Best effort: point the hint at `seq` unless it already points further."""
        try:
            current = self.store.get(POINTER)
        except ObjectNotFound:
            generation = 0
        else:
            generation = current.generation
            if _pointed(current.data) >= seq:
                return
        try:
            self.writer.put_if_generation_match(POINTER, str(seq).encode(), generation)
        except (CasConflict, ObjectExists):
            return  # another writer moved it; a stale hint only costs probes
