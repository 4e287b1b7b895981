"""The ledger: create-only events at date-partitioned paths, idempotent appends, notifications."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ulid import ULID

from servo._errors import InvalidId, ObjectExists, ObjectNotFound
from servo.storage import EventConflict, Ledger, ObjectStore, ScopedStore, ledger_object_name

NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)


def ulid_at(moment: datetime, n: int = 0) -> str:
    """A deterministic ULID: ``moment``'s millisecond timestamp, then ``n`` as the random part."""
    millis = int(moment.timestamp() * 1000)
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + n.to_bytes(10, "big")))


class Recorder:
    """An ``on_append`` hook that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, event_ids: list[str]) -> None:
        self.calls.append(list(event_ids))


@pytest.fixture
def notified() -> Recorder:
    return Recorder()


@pytest.fixture
def ledger(store: ObjectStore, notified: Recorder) -> Ledger:
    return Ledger(ScopedStore(store, "acme", "prod"), on_append=notified)


def test_event_is_stored_at_the_literal_date_partitioned_path(ledger: Ledger) -> None:
    event_id = ulid_at(NEW_YEAR, 1)
    assert ledger.append(event_id, b'{"event_type": "RunTriggered"}') is True
    assert ledger.store.store.list_prefix("") == [
        f"tenants/acme/workspaces/prod/ledger/orchestration/2026-01-01/{event_id}.json"
    ]


def test_ledger_date_is_the_utc_date_of_the_ulid_timestamp() -> None:
    last_moment = ulid_at(datetime(2026, 1, 1, 23, 59, 59, 999000, tzinfo=UTC))
    first_moment = ulid_at(datetime(2026, 1, 2, tzinfo=UTC))
    assert ledger_object_name(last_moment) == f"ledger/orchestration/2026-01-01/{last_moment}.json"
    assert (
        ledger_object_name(first_moment) == f"ledger/orchestration/2026-01-02/{first_moment}.json"
    )


@settings(max_examples=max(settings().max_examples, 300), deadline=None)
@given(event_id=st.from_regex(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", fullmatch=True))
def test_every_canonical_ulid_maps_to_its_day_or_is_rejected_cleanly(event_id: str) -> None:
    try:
        name = ledger_object_name(event_id)
    except InvalidId as error:
        assert "year 9999" in str(error)
        return
    day = ULID.from_str(event_id).datetime.date().isoformat()
    assert name == f"ledger/orchestration/{day}/{event_id}.json"
    assert re.fullmatch(r"ledger/orchestration/\d{4}-\d{2}-\d{2}/[0-9A-Z]{26}\.json", name)


def test_duplicate_append_of_identical_bytes_is_a_noop(ledger: Ledger) -> None:
    event_id = ulid_at(NEW_YEAR)
    assert ledger.append(event_id, b"payload") is True
    generation = ledger.store.head(ledger_object_name(event_id))
    assert ledger.append(event_id, b"payload") is False
    assert ledger.store.head(ledger_object_name(event_id)) == generation
    assert ledger.read(event_id) == b"payload"


def test_conflicting_append_raises_event_conflict_and_keeps_the_original(ledger: Ledger) -> None:
    event_id = ulid_at(NEW_YEAR)
    ledger.append(event_id, b"original")
    with pytest.raises(EventConflict, match=f"{event_id}.*append-only") as caught:
        ledger.append(event_id, b"tampered")
    assert isinstance(caught.value, ObjectExists)
    assert caught.value.event_ids == [event_id]
    assert ledger.read(event_id) == b"original"


def test_read_of_an_event_never_appended_raises_object_not_found(ledger: Ledger) -> None:
    with pytest.raises(ObjectNotFound):
        ledger.read(ulid_at(NEW_YEAR))
    assert ledger.contains(ulid_at(NEW_YEAR)) is False


@pytest.mark.parametrize(
    "bad_id", ["not-a-ulid", "../../etc/passwd", ulid_at(NEW_YEAR).lower(), ""]
)
def test_malformed_event_id_is_rejected_before_any_write(ledger: Ledger, bad_id: str) -> None:
    with pytest.raises(InvalidId):
        ledger.append(bad_id, b"x")
    with pytest.raises(InvalidId):
        ledger.append_many([(ulid_at(NEW_YEAR), b"ok"), (bad_id, b"x")])
    assert ledger.list_event_names() == []


def test_notifications_fire_once_per_newly_appended_event(
    ledger: Ledger, notified: Recorder
) -> None:
    e1, e2, e3 = (ulid_at(NEW_YEAR, n) for n in (1, 2, 3))
    ledger.append(e1, b"1")
    ledger.append(e1, b"1")
    assert notified.calls == [[e1]]
    created = ledger.append_many([(e1, b"1"), (e2, b"2"), (e3, b"3"), (e2, b"2")])
    assert created == [False, True, True, False]
    assert notified.calls == [[e1], [e2, e3]]
    ledger.append_many([(e1, b"1"), (e2, b"2")])
    assert notified.calls == [[e1], [e2, e3]]  # nothing new, no call


def test_append_many_with_a_conflict_appends_and_notifies_the_rest_then_raises(
    ledger: Ledger, notified: Recorder
) -> None:
    e1, e2, e3 = (ulid_at(NEW_YEAR, n) for n in (1, 2, 3))
    ledger.append(e2, b"original")
    notified.calls.clear()
    with pytest.raises(EventConflict) as caught:
        ledger.append_many([(e1, b"1"), (e2, b"different"), (e3, b"3")])
    assert caught.value.event_ids == [e2]
    assert notified.calls == [[e1, e3]]
    assert [ledger.read(e) for e in (e1, e2, e3)] == [b"1", b"original", b"3"]


def test_a_failing_hook_propagates_but_the_event_is_durable_and_retry_is_a_noop(
    store: ObjectStore,
) -> None:
    def broken(event_ids: list[str]) -> None:
        raise RuntimeError("compactor trigger down")

    ledger = Ledger(ScopedStore(store, "acme", "prod"), on_append=broken)
    event_id = ulid_at(NEW_YEAR)
    with pytest.raises(RuntimeError):
        ledger.append(event_id, b"x")
    assert ledger.append(event_id, b"x") is False
    assert ledger.contains(event_id)


def test_list_event_names_filters_by_day_and_stays_in_scope(store: ObjectStore) -> None:
    ledger = Ledger(ScopedStore(store, "acme", "prod"))
    neighbour = Ledger(ScopedStore(store, "acme", "prod2"))
    day1, day2 = ulid_at(NEW_YEAR), ulid_at(datetime(2026, 1, 2, tzinfo=UTC))
    ledger.append_many([(day2, b"2"), (day1, b"1")])
    neighbour.append(day1, b"n")
    assert ledger.list_event_names() == [ledger_object_name(day1), ledger_object_name(day2)]
    assert ledger.list_event_names("2026-01-02/") == [ledger_object_name(day2)]
    with pytest.raises(InvalidId):
        ledger.list_event_names("../")


def test_list_event_ids_sets_apart_objects_that_are_not_events(store: ObjectStore) -> None:
    """A file copied into the ledger by hand, or an event filed under the wrong day, is
    not an event: a listing names it as a stray instead of handing out its name as an id."""
    scoped = ScopedStore(store, "acme", "prod")
    ledger = Ledger(scoped)
    day1, day2 = ulid_at(NEW_YEAR), ulid_at(datetime(2026, 1, 2, tzinfo=UTC))
    ledger.append_many([(day2, b"2"), (day1, b"1")])
    misfiled = f"ledger/orchestration/2026-01-02/{ulid_at(NEW_YEAR, 7)}.json"
    junk = "ledger/orchestration/2026-01-01/notes.json"
    scoped.put_if_absent(misfiled, b"{}")
    scoped.put_if_absent(junk, b"{}")
    listed = ledger.list_event_ids()
    assert listed.event_ids == [day1, day2]
    assert sorted(listed.strays) == sorted([misfiled, junk])
    assert ledger.list_event_ids("2026-01-01/") == ([day1], [junk])
