"""An in-memory ``ObjectStore``: thread-safe, for tests and for users who want no disk."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from servo._errors import ObjectExists, ObjectNotFound
from servo.storage._protocol import StoredObject, cas_conflict, put_each_if_absent
from servo.storage._scope import validate_object_name, validate_prefix

__all__ = ["MemoryStore"]


class MemoryStore:
    """A dict behind one lock, with GCS-like generations.

    Generations come from one counter per store, so a name never sees the
    same generation twice and a stale compare-and-swap can never pass.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, StoredObject] = {}
        self._last_generation = 0

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._objects)} objects>)"

    def _write(self, name: str, data: bytes) -> int:
        # Caller holds the lock.
        self._last_generation += 1
        self._objects[name] = StoredObject(bytes(data), self._last_generation)
        return self._last_generation

    def get(self, name: str) -> StoredObject:
        """See ``ObjectStore.get``."""
        validate_object_name(name)
        with self._lock:
            found = self._objects.get(name)
        if found is None:
            raise ObjectNotFound(f"object {name!r} does not exist")
        return found

    def put_if_absent(self, name: str, data: bytes) -> int:
        """See ``ObjectStore.put_if_absent``."""
        validate_object_name(name)
        with self._lock:
            if name in self._objects:
                raise ObjectExists(f"object {name!r} already exists")
            return self._write(name, data)

    def put_if_generation_match(self, name: str, data: bytes, generation: int) -> int:
        """See ``ObjectStore.put_if_generation_match``."""
        validate_object_name(name)
        with self._lock:
            found = self._objects.get(name)
            current = 0 if found is None else found.generation
            if current != generation:
                raise cas_conflict(name, current, generation)
            return self._write(name, data)

    def head(self, name: str) -> int | None:
        """See ``ObjectStore.head``."""
        validate_object_name(name)
        with self._lock:
            found = self._objects.get(name)
        return None if found is None else found.generation

    def list_prefix(self, prefix: str) -> list[str]:
        """See ``ObjectStore.list_prefix``. Repair / anti-entropy only (P6)."""
        validate_prefix(prefix)
        with self._lock:
            return sorted(name for name in self._objects if name.startswith(prefix))

    def delete(self, name: str) -> bool:
        """See ``ObjectStore.delete``."""
        validate_object_name(name)
        with self._lock:
            return self._objects.pop(name, None) is not None

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """See ``ObjectStore.put_many_if_absent`` (one write per item)."""
        for name, _ in items:
            validate_object_name(name)
        return put_each_if_absent(self, items)
