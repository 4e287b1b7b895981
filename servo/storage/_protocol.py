"""The object-store seam: five operations every backend implements, plus a group commit.

Servo keeps all durable state in an object store. The protocol is deliberately
small so that the embedded backend (local files), the in-memory backend and
Google Cloud Storage behave identically, and one contract suite can prove it:

* ``get`` returns bytes and the object's *generation* (a positive integer that
  changes on every write of that name);
* ``put_if_absent`` is create-only (P1: the ledger is append-only);
* ``put_if_generation_match`` is compare-and-swap (P4: manifest publish);
* ``head`` reads only the generation;
* ``list_prefix`` exists for anti-entropy and repair only (P6: no listing on
  the correctness path);
* ``put_many_if_absent`` is an idempotent, batched create-only write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from servo._errors import CasConflict, ObjectExists

__all__ = [
    "BatchConflict",
    "ObjectStore",
    "StoredObject",
    "put_each_if_absent",
]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes together with the generation they were read at."""

    data: bytes
    generation: int


class BatchConflict(ObjectExists):
    """A batched create met names that already hold *different* bytes.

    Every other item of the batch was still written (or found identical), so
    ``created`` tells the caller which names this call created — a ledger
    needs it to notify for the events that did land.
    """

    def __init__(self, message: str, *, created: list[bool], conflicting: list[str]) -> None:
        super().__init__(message)
        self.created = created
        self.conflicting = conflicting


class ObjectStore(Protocol):
    """A flat namespace of byte objects with create-only and compare-and-swap writes.

    Names are ``/``-separated ASCII paths (see ``validate_object_name``). Every
    method raises ``InvalidId`` for a malformed name and ``StorageError`` (or
    a subclass) when the store fails; no backend leaks its own exceptions.
    """

    def get(self, name: str) -> StoredObject:
        """Read an object; raise ``ObjectNotFound`` if it does not exist."""
        ...

    def put_if_absent(self, name: str, data: bytes) -> int:
        """Create ``name`` holding ``data`` and return its generation.

        Raise ``ObjectExists`` if the name is already taken, whatever it holds.
        """
        ...

    def put_if_generation_match(self, name: str, data: bytes, generation: int) -> int:
        """Replace ``name`` only if its current generation is ``generation``.

        ``generation == 0`` means "only if the name does not exist". Return the
        new generation; raise ``CasConflict`` if the precondition fails.
        """
        ...

    def head(self, name: str) -> int | None:
        """Return the current generation of ``name``, or None if it does not exist."""
        ...

    def list_prefix(self, prefix: str) -> list[str]:
        """Return every name starting with ``prefix``, sorted. Repair / anti-entropy only (P6)."""
        ...

    def delete(self, name: str) -> bool:
        """Remove ``name``; True if it existed, False if it was already gone (idempotent).

        Garbage collection of superseded derived state only (ADR 015): ledger objects
        are never deleted (P1), which ``ScopedStore`` enforces.
        """
        ...

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Create-only write of many objects; return, per item, whether it was newly created.

        ``False`` means the name already held identical bytes (an idempotent
        retry). Names holding different bytes raise ``BatchConflict`` after
        every other item has been handled.
        """
        ...


def put_each_if_absent(store: ObjectStore, items: Sequence[tuple[str, bytes]]) -> list[bool]:
    """Default ``put_many_if_absent``: one create-only write per item, in order.

    Backends without a cheaper group commit (memory, GCS) delegate here.
    """
    created: list[bool] = []
    conflicting: list[str] = []
    for name, data in items:
        try:
            store.put_if_absent(name, data)
        except ObjectExists:
            if store.get(name).data != data:
                conflicting.append(name)
            created.append(False)
        else:
            created.append(True)
    if conflicting:
        raise batch_conflict(created, conflicting)
    return created


def batch_conflict(created: list[bool], conflicting: list[str]) -> BatchConflict:
    """Build the ``BatchConflict`` for names that hold different bytes."""
    shown = ", ".join(repr(name) for name in conflicting[:3])
    more = f" and {len(conflicting) - 3} more" if len(conflicting) > 3 else ""
    return BatchConflict(
        f"create-only write refused: {shown}{more} already hold different bytes",
        created=created,
        conflicting=conflicting,
    )


def cas_conflict(name: str, current: int, expected: int) -> CasConflict:
    """Build the ``CasConflict`` for ``name`` at ``current`` (0: absent) when ``expected`` was asked."""
    state = "does not exist" if current == 0 else f"is at generation {current}"
    return CasConflict(f"object {name!r} {state}, not at generation {expected}")
