"""The orchestration ledger: one create-only object per event (P1).

An event ``01JD...`` lands at
``tenants/{tenant}/workspaces/{workspace}/ledger/orchestration/{yyyy-mm-dd}/{event_id}.json``
where the date is the UTC date of the ULID's timestamp, so the path is a pure
function of the id: a reader holding the id (from a manifest, say) finds the
object by name, with no listing (P6).

Appending is idempotent: the same event appended twice — a producer retrying
after a timeout — is one event. Different bytes under one id are refused:
the ledger is never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from functools import lru_cache
from typing import NamedTuple

from servo._errors import InvalidId, ObjectExists
from servo.obs import LEDGER_APPEND_SECONDS, timed
from servo.storage._protocol import BatchConflict
from servo.storage._scope import ScopedStore, validate_id, validate_prefix

__all__ = ["LEDGER_PREFIX", "EventConflict", "Ledger", "ListedEvents", "ledger_object_name"]

LEDGER_PREFIX = "ledger/orchestration/"

AppendHook = Callable[[list[str]], None]


class EventConflict(ObjectExists):
    """An event id is already in the ledger with different bytes.

    `created`: per item of the append, whether it was newly appended (a conflicting
    item is False); every other item was appended before this was raised.
    """

    def __init__(self, message: str, *, event_ids: list[str], created: list[bool]) -> None:
        super().__init__(message)
        self.event_ids = event_ids
        self.created = created


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}
_MS_PER_DAY = 86_400_000
_EPOCH_DAY = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def _day_of(ulid_time: str) -> str | None:
    """The UTC date (ISO) of a ULID's 10-character time prefix (already validated);
    None past year 9999."""
    ms = 0
    for char in ulid_time:
        ms = ms * 32 + _CROCKFORD[char]
    try:
        return date.fromordinal(_EPOCH_DAY + ms // _MS_PER_DAY).isoformat()
    except (ValueError, OverflowError):
        return None


def ledger_object_name(event_id: str) -> str:
    """The scope-relative object name of ``event_id`` (validated as a ULID)."""
    validate_id("event", event_id)
    day = _day_of(event_id[:10])
    if day is None:
        raise InvalidId(f"invalid event id {event_id!r}: its timestamp is past year 9999")
    return f"{LEDGER_PREFIX}{day}/{event_id}.json"


class ListedEvents(NamedTuple):
    """What a listing of the ledger found: the ids of its event objects, and the names
    of any other objects under it (a file copied in by hand, an event filed under the
    wrong day), which are not events and are never folded."""

    event_ids: list[str]
    strays: list[str]


def _event_id_of(name: str) -> str | None:
    """The event id a listed ledger object is filed under, or None if `name` is not
    where that event belongs (`{day of its id}/{id}.json`)."""
    event_id = name.rsplit("/", 1)[-1].removesuffix(".json")
    try:
        return event_id if ledger_object_name(event_id) == name else None
    except InvalidId:
        return None


def _conflict(event_ids: list[str], created: list[bool]) -> EventConflict:
    shown = ", ".join(event_ids[:3]) + (
        f" and {len(event_ids) - 3} more" if len(event_ids) > 3 else ""
    )
    return EventConflict(
        f"ledger already holds different bytes for event {shown}; the ledger is append-only",
        event_ids=event_ids,
        created=created,
    )


class Ledger:
    """Append-only event storage in one tenant/workspace scope.

    ``on_append`` is the in-process notification hook (embedded mode's
    compactor trigger): it is called, after the write is durable, with the
    ids this call newly appended — never with duplicates. An exception it
    raises propagates to the appender; the events are already durable and a
    retried append is a harmless no-op.
    """

    def __init__(self, store: ScopedStore, *, on_append: AppendHook | None = None) -> None:
        self.store = store
        self._on_append = on_append

    def __repr__(self) -> str:
        return f"Ledger({self.store!r})"

    def _notify(self, event_ids: list[str]) -> None:
        if event_ids and self._on_append is not None:
            self._on_append(event_ids)

    @timed(LEDGER_APPEND_SECONDS, "ledger")
    def append(self, event_id: str, payload: bytes) -> bool:
        """Append one event; return True if newly appended, False if already there (same bytes).

        Raise ``EventConflict`` (an ``ObjectExists``) if the id holds different bytes.
        """
        name = ledger_object_name(event_id)
        try:
            self.store.put_if_absent(name, payload)
        except ObjectExists:
            if self.store.get(name).data != payload:
                raise _conflict([event_id], [False]) from None
            return False
        self._notify([event_id])
        return True

    @timed(LEDGER_APPEND_SECONDS, "ledger")
    def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Append many events with one group commit; per item, whether it was newly appended.

        Items are validated before anything is written. If some ids hold
        different bytes, every other event is still appended (and notified)
        before ``EventConflict`` is raised.
        """
        names = [(ledger_object_name(event_id), payload) for event_id, payload in items]
        try:
            created = self.store.put_many_if_absent(names)
        except BatchConflict as error:
            self._notify(
                [event_id for (event_id, _), new in zip(items, error.created, strict=True) if new]
            )
            conflicting = set(error.conflicting)
            event_ids = [
                event_id for event_id, _ in items if ledger_object_name(event_id) in conflicting
            ]
            raise _conflict(list(dict.fromkeys(event_ids)), list(error.created)) from error
        self._notify([event_id for (event_id, _), new in zip(items, created, strict=True) if new])
        return created

    def read(self, event_id: str) -> bytes:
        """The bytes of one event; ``ObjectNotFound`` if it was never appended."""
        return self.store.get(ledger_object_name(event_id)).data

    def contains(self, event_id: str) -> bool:
        """Whether ``event_id`` is in the ledger (a metadata read, no bytes)."""
        return self.store.head(ledger_object_name(event_id)) is not None

    def list_event_names(self, prefix: str = "") -> list[str]:
        """Scope-relative names of ledger objects under ``ledger/orchestration/{prefix}``, sorted.

        For repair and anti-entropy ONLY (P6: no bucket listing on the
        correctness path). ``prefix`` is typically a day, e.g. ``"2026-01-01/"``.
        """
        validate_prefix(prefix)
        return self.store.list_prefix(LEDGER_PREFIX + prefix)

    def list_event_ids(self, prefix: str = "") -> ListedEvents:
        """The event ids under ``ledger/orchestration/{prefix}``, sorted, and the names
        of the objects there that are not events (repair and anti-entropy only, P6)."""
        ids: list[str] = []
        strays: list[str] = []
        for name in self.list_event_names(prefix):
            event_id = _event_id_of(name)
            if event_id is None:
                strays.append(name)
            else:
                ids.append(event_id)
        return ListedEvents(ids, strays)
