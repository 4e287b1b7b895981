"""Append notices (ADR 010): create-only numbered objects, found by probing, never listed."""

from __future__ import annotations

from servo.engine._notices import Notices, notice_name
from servo.storage import MemoryStore, ScopedStore


def scoped() -> ScopedStore:
    return ScopedStore(MemoryStore(), "acme", "prod")


def test_two_posters_never_overwrite_and_the_reader_takes_each_id_once() -> None:
    store = scoped()
    reader, first, second = Notices(store), Notices(store), Notices(store)
    reader.start_reading()
    first.post(["e1", "e2"])
    second.post(["e3"])  # finds the frontier (2) by probing
    first.post(["e4"])  # `first`'s cursor (2) is taken by `second`: it moves on
    first.post([])  # nothing to say: no object
    assert [store.head(notice_name(n)) is not None for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert reader.take() == ["e1", "e2", "e3", "e4"]
    assert reader.take() == []
    second.post(["e5"])
    assert reader.take() == ["e5"]


def test_a_new_reader_starts_at_the_frontier() -> None:
    store = scoped()
    poster = Notices(store)
    for index in range(37):
        poster.post([f"e{index}"])
    late = Notices(store)
    assert late.frontier() == 38
    late.start_reading()
    poster.post(["new"])
    assert late.take() == ["new"]
