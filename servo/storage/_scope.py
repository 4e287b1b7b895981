"""Identifier and object-name validation, and the tenant/workspace scope.

Every durable path is ``tenants/{tenant}/workspaces/{workspace}/{relative}``.
The checks here are what make that prefix a wall: an accepted id never holds
``/``, so it cannot add or remove a path segment; an accepted relative name
has no ``.``/``..`` or empty segments, so no backend (least of all the local
filesystem) can resolve it outside the prefix. Everything is plain ASCII, so
no Unicode normalisation (NFKC turns fullwidth U+FF0E twice into ``..``) or
case-folding trick can make two accepted strings mean the same path on
a case-sensitive store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Literal

from servo._errors import InvalidId
from servo.storage._protocol import BatchConflict, ObjectStore, StoredObject, batch_conflict

LEDGER_ROOT: Final = "ledger/"  # every ledger object lives under it; never deleted (P1)

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "IdKind",
    "ScopedStore",
    "validate_id",
    "validate_object_name",
    "validate_prefix",
]

IdKind = Literal["tenant", "workspace", "run", "task", "event"]

MAX_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 1024  # GCS's limit on object names, in bytes (ASCII here).
_MAX_SEGMENT_LENGTH: Final = 255  # the usual filesystem limit on one path component

# One charset for every id kind. It has no ':' on purpose: ids are joined with
# ':' into dispatch ids and idempotency keys (``dispatch:{run_id}:{task_key}:
# {attempt}``) and parsed back by splitting on ':', so a run id or task key
# holding ':' would be ambiguous. It has no '/' so an id is one path segment,
# and it starts with a letter or digit so '.', '..' and hidden names are out.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Event ids are canonical ULIDs (Crockford base32, upper case, 48-bit time first):
# the ledger derives the event's date from them, and one spelling per id keeps
# two copies of one event on one path.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_SEGMENT = re.compile(r"[A-Za-z0-9_.:=,@+~-]+")
# The whole of a valid name in one match (the common case; problems are then found
# segment by segment, to say which): segments of allowed characters, none too long.
_NAME = re.compile(r"(?:[A-Za-z0-9_.:=,@+~-]{1,255}/)*[A-Za-z0-9_.:=,@+~-]{1,255}")


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."


def _ascii_problem(value: str) -> str | None:
    if value.isascii() and value.isprintable():  # the common case, in C: printable ASCII has no controls
        return None
    for index, char in enumerate(value):
        if not char.isascii():
            return f"non-ASCII character U+{ord(char):04X} at index {index}"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"control character {char!r} at index {index}"
    return None


def validate_id(kind: IdKind, value: str) -> str:
    """Return ``value`` if it is a valid ``kind`` id, else raise ``InvalidId``.

    Valid: 1-128 ASCII characters ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (so never
    ``.``, ``..``, ``/``, ``:`` or whitespace). Event ids must in addition be
    canonical upper-case ULIDs.
    """
    reason: str | None
    if not isinstance(value, str):
        reason = f"expected a string, got {type(value).__name__}"
        raise InvalidId(f"invalid {kind} id: {reason}")
    if not value:
        reason = "it is empty"
    elif len(value) > MAX_ID_LENGTH:
        reason = f"it is {len(value)} characters long (limit {MAX_ID_LENGTH})"
    else:
        reason = _ascii_problem(value)
    if reason is None and not _ID.fullmatch(value):
        if ":" in value:
            reason = "':' is reserved as the separator of dispatch ids and idempotency keys"
        elif "/" in value or "\\" in value:
            reason = "path separators are not allowed"
        else:
            reason = "allowed are letters, digits, '_', '.', '-', starting with a letter or digit"
    if reason is None and kind == "event" and not _ULID.fullmatch(value):
        reason = "event ids are canonical upper-case ULIDs (26 characters, Crockford base32)"
    if reason is not None:
        raise InvalidId(f"invalid {kind} id {_shown(value)}: {reason}")
    return value


def _name_problem(name: str, max_length: int, *, partial_last: bool) -> str | None:
    if len(name) > max_length:
        return f"it is {len(name)} characters long (limit {max_length})"
    if not partial_last and _NAME.fullmatch(name):
        padded = f"/{name}/"
        if "/./" not in padded and "/../" not in padded:
            return None
    problem = _ascii_problem(name)
    if problem is not None:
        return problem
    if "\\" in name:
        return "backslash is not allowed"
    if name.startswith("/"):
        return "it is absolute (starts with '/')"
    segments = name.split("/")
    for position, segment in enumerate(segments):
        if partial_last and position == len(segments) - 1:
            # The tail of a prefix may be any partial segment, even empty.
            if segment and not _SEGMENT.fullmatch(segment):
                return f"segment {_shown(segment)} has a character outside [A-Za-z0-9_.:=,@+~-]"
            continue
        if not segment:
            return "it has an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"it has a {segment!r} segment"
        if len(segment) > _MAX_SEGMENT_LENGTH:
            return f"a segment is longer than {_MAX_SEGMENT_LENGTH} characters"
        if not _SEGMENT.fullmatch(segment):
            return f"segment {_shown(segment)} has a character outside [A-Za-z0-9_.:=,@+~-]"
    return None


def validate_object_name(name: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return ``name`` if it is a safe object name, else raise ``InvalidId``.

    A safe name is non-empty ASCII of at most ``max_length`` characters, made
    of ``/``-separated segments, each non-empty, not ``.`` or ``..`` and drawn
    from ``[A-Za-z0-9_.:=,@+~-]``.
    """
    if not isinstance(name, str) or not name:
        raise InvalidId("invalid object name: it must be a non-empty string")
    problem = _name_problem(name, max_length, partial_last=False)
    if problem is not None:
        raise InvalidId(f"invalid object name {_shown(name)}: {problem}")
    return name


def validate_prefix(prefix: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return ``prefix`` if it is a safe listing prefix (``""`` lists everything).

    Every complete segment obeys the object-name rules; the last, partial
    segment only has to use the allowed characters.
    """
    if not isinstance(prefix, str):
        raise InvalidId("invalid prefix: it must be a string")
    problem = _name_problem(prefix, max_length, partial_last=True) if prefix else None
    if problem is not None:
        raise InvalidId(f"invalid prefix {_shown(prefix)}: {problem}")
    return prefix


class ScopedStore:
    """An ``ObjectStore`` view confined to ``tenants/{tenant}/workspaces/{workspace}/``.

    Callers name objects relative to the scope; every relative name is
    validated, so none can reach outside it, and ``list_prefix`` returns
    relative names again.
    """

    def __init__(self, store: ObjectStore, tenant: str, workspace: str) -> None:
        self.store: Final = store
        self.tenant: Final = validate_id("tenant", tenant)
        self.workspace: Final = validate_id("workspace", workspace)
        self.prefix: Final = f"tenants/{tenant}/workspaces/{workspace}/"

    def __repr__(self) -> str:
        return f"ScopedStore({self.store!r}, tenant={self.tenant!r}, workspace={self.workspace!r})"

    def full_name(self, name: str) -> str:
        """The backend name of the relative ``name`` (validated)."""
        validate_object_name(name, max_length=MAX_NAME_LENGTH - len(self.prefix))
        return self.prefix + name

    def get(self, name: str) -> StoredObject:
        """See ``ObjectStore.get``."""
        return self.store.get(self.full_name(name))

    def put_if_absent(self, name: str, data: bytes) -> int:
        """See ``ObjectStore.put_if_absent``."""
        return self.store.put_if_absent(self.full_name(name), data)

    def put_if_generation_match(self, name: str, data: bytes, generation: int) -> int:
        """See ``ObjectStore.put_if_generation_match``."""
        return self.store.put_if_generation_match(self.full_name(name), data, generation)

    def head(self, name: str) -> int | None:
        """See ``ObjectStore.head``."""
        return self.store.head(self.full_name(name))

    def list_prefix(self, prefix: str) -> list[str]:
        """Relative names under ``prefix`` in this scope, sorted. Repair / anti-entropy only (P6)."""
        validate_prefix(prefix, max_length=MAX_NAME_LENGTH - len(self.prefix))
        cut = len(self.prefix)
        return [name[cut:] for name in self.store.list_prefix(self.prefix + prefix)]

    def delete(self, name: str) -> bool:
        """See ``ObjectStore.delete``; refuses ledger objects (P1: append-only)."""
        if name.startswith(LEDGER_ROOT):
            raise InvalidId(f"cannot delete {name!r}: the ledger is append-only (P1)")
        return self.store.delete(self.full_name(name))

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """See ``ObjectStore.put_many_if_absent``."""
        try:
            return self.store.put_many_if_absent([(self.full_name(n), d) for n, d in items])
        except BatchConflict as error:
            cut = len(self.prefix)
            raise batch_conflict(error.created, [n[cut:] for n in error.conflicting]) from error
