"""One contract, three backends: memory, local files and GCS (fake-gcs-server).

Every test here runs against every backend through the ``store`` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from servo._errors import CasConflict, InvalidId, ObjectExists, ObjectNotFound
from servo.storage import BatchConflict, ObjectStore

T = TypeVar("T")
THREADS = 8


def race(count: int, action: Callable[[int], T]) -> list[T | Exception]:
    """Run ``action(i)`` for i in range(count) on threads released together."""
    barrier = threading.Barrier(count)

    def run(i: int) -> T | Exception:
        barrier.wait()
        try:
            return action(i)
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_get_of_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="missing/object"):
        store.get("missing/object")


def test_head_of_missing_object_is_none(store: ObjectStore) -> None:
    assert store.head("missing/object") is None


def test_put_if_absent_returns_the_generation_get_and_head_report(store: ObjectStore) -> None:
    generation = store.put_if_absent("a/b.json", b'{"x": 1}')
    assert generation > 0
    got = store.get("a/b.json")
    assert (got.data, got.generation) == (b'{"x": 1}', generation)
    assert store.head("a/b.json") == generation


def test_arbitrary_and_empty_bytes_round_trip(store: ObjectStore) -> None:
    blob = bytes(range(256)) * 4
    store.put_if_absent("bin", blob)
    store.put_if_absent("empty", b"")
    assert store.get("bin").data == blob
    assert store.get("empty").data == b""


def test_put_if_absent_twice_raises_object_exists_and_keeps_first_bytes(
    store: ObjectStore,
) -> None:
    generation = store.put_if_absent("once", b"first")
    with pytest.raises(ObjectExists, match="once"):
        store.put_if_absent("once", b"second")
    with pytest.raises(ObjectExists):
        store.put_if_absent("once", b"first")  # identical bytes are still a second create
    assert store.get("once").data == b"first"
    assert store.head("once") == generation


def test_cas_with_current_generation_replaces_and_moves_generation(store: ObjectStore) -> None:
    first = store.put_if_absent("pointer", b"v1")
    second = store.put_if_generation_match("pointer", b"v2", first)
    assert second != first
    assert store.get("pointer").data == b"v2"
    assert store.head("pointer") == second
    third = store.put_if_generation_match("pointer", b"v3", second)
    assert len({first, second, third}) == 3
    assert store.get("pointer").generation == third


def test_cas_with_stale_generation_raises_cas_conflict_and_keeps_bytes(
    store: ObjectStore,
) -> None:
    stale = store.put_if_absent("pointer", b"v1")
    current = store.put_if_generation_match("pointer", b"v2", stale)
    with pytest.raises(CasConflict, match="pointer"):
        store.put_if_generation_match("pointer", b"v3", stale)
    assert store.get("pointer").data == b"v2"
    assert store.head("pointer") == current


def test_cas_with_generation_zero_creates_only_when_absent(store: ObjectStore) -> None:
    generation = store.put_if_generation_match("fresh", b"v1", 0)
    assert store.get("fresh").generation == generation
    with pytest.raises(CasConflict):
        store.put_if_generation_match("fresh", b"v2", 0)
    assert store.get("fresh").data == b"v1"


def test_cas_with_nonzero_generation_on_missing_object_conflicts(store: ObjectStore) -> None:
    with pytest.raises(CasConflict):
        store.put_if_generation_match("missing", b"v1", 12345)
    assert store.head("missing") is None


def test_list_prefix_is_sorted_and_respects_prefix_boundaries(store: ObjectStore) -> None:
    names = ["a/b/2", "a/b/10", "a/b/1", "a/bc/1", "ab/1", "b/a/b/1", "a/b.x"]
    for name in names:
        store.put_if_absent(name, name.encode())
    assert store.list_prefix("a/b/") == ["a/b/1", "a/b/10", "a/b/2"]
    assert store.list_prefix("a/b") == ["a/b.x", "a/b/1", "a/b/10", "a/b/2", "a/bc/1"]
    assert store.list_prefix("a/b/1") == ["a/b/1", "a/b/10"]
    assert store.list_prefix("") == sorted(names)
    assert store.list_prefix("c/") == []
    assert store.list_prefix("a/b/1/") == []


def test_delete_removes_an_object_and_is_idempotent(store: ObjectStore) -> None:
    store.put_if_absent("state/x/1", b"one")
    store.put_if_absent("state/x/2", b"two")
    assert store.delete("state/x/1") is True
    assert store.head("state/x/1") is None
    with pytest.raises(ObjectNotFound):
        store.get("state/x/1")
    assert store.list_prefix("state/x/") == ["state/x/2"]
    assert store.delete("state/x/1") is False  # already gone: not an error
    assert store.delete("never/was") is False
    assert store.get("state/x/2").data == b"two"


def test_delete_validates_the_name(store: ObjectStore) -> None:
    with pytest.raises(InvalidId):
        store.delete("a/../b")


@pytest.mark.parametrize(
    "bad_name",
    [
        "",
        "/abs",
        "a/../b",
        "..",
        ".",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        "\uff0e\uff0e",
        "é",
        "x" * 1025,
    ],
)
def test_unsafe_names_are_rejected_before_any_write(store: ObjectStore, bad_name: str) -> None:
    with pytest.raises(InvalidId):
        store.put_if_absent(bad_name, b"x")
    with pytest.raises(InvalidId):
        store.get(bad_name)
    assert store.list_prefix("") == []


def test_unsafe_prefix_is_rejected(store: ObjectStore) -> None:
    with pytest.raises(InvalidId):
        store.list_prefix("../")


def test_put_many_if_absent_reports_new_and_identical_existing_objects(
    store: ObjectStore,
) -> None:
    store.put_if_absent("batch/old", b"same")
    created = store.put_many_if_absent(
        [
            ("batch/new1", b"n1"),
            ("batch/old", b"same"),
            ("other/new2", b"n2"),
            ("batch/new1", b"n1"),
        ]
    )
    assert created == [True, False, True, False]
    assert store.get("batch/new1").data == b"n1"
    assert store.get("other/new2").data == b"n2"


def test_put_many_if_absent_with_different_bytes_raises_after_writing_the_rest(
    store: ObjectStore,
) -> None:
    store.put_if_absent("batch/taken", b"original")
    with pytest.raises(BatchConflict, match="batch/taken") as caught:
        store.put_many_if_absent([("batch/a", b"a"), ("batch/taken", b"other"), ("batch/b", b"b")])
    assert isinstance(caught.value, ObjectExists)
    assert caught.value.created == [True, False, True]
    assert caught.value.conflicting == ["batch/taken"]
    assert store.get("batch/taken").data == b"original"
    assert store.list_prefix("batch/") == ["batch/a", "batch/b", "batch/taken"]


def test_put_many_if_absent_validates_every_name_before_writing(store: ObjectStore) -> None:
    with pytest.raises(InvalidId):
        store.put_many_if_absent([("ok/1", b"1"), ("../escape", b"2")])
    assert store.list_prefix("") == []


def test_concurrent_put_if_absent_from_threads_has_exactly_one_winner(
    store: ObjectStore,
) -> None:
    results = race(THREADS, lambda i: store.put_if_absent("contended", b"writer-%d" % i))
    winners = [i for i, r in enumerate(results) if isinstance(r, int)]
    assert len(winners) == 1
    assert all(isinstance(r, ObjectExists) for r in results if not isinstance(r, int))
    assert store.get("contended").data == b"writer-%d" % winners[0]


def test_concurrent_cas_from_threads_has_exactly_one_winner_per_generation(
    store: ObjectStore,
) -> None:
    generation = store.put_if_absent("manifest", b"round-0")
    for round_number in range(1, 4):

        def swap(writer: int, expected: int = generation, round_number: int = round_number) -> int:
            data = b"round-%d-writer-%d" % (round_number, writer)
            return store.put_if_generation_match("manifest", data, expected)

        results = race(THREADS, swap)
        winners = [(i, r) for i, r in enumerate(results) if isinstance(r, int)]
        assert len(winners) == 1, results
        assert all(isinstance(r, CasConflict) for r in results if not isinstance(r, int))
        winner, generation = winners[0]
        assert store.get("manifest").data == b"round-%d-writer-%d" % (round_number, winner)
        assert store.head("manifest") == generation


def test_concurrent_cas_increments_lose_no_update(store: ObjectStore) -> None:
    store.put_if_absent("counter", b"0")
    per_thread = 5

    def increment(_: int) -> None:
        done = 0
        while done < per_thread:
            current = store.get("counter")
            try:
                store.put_if_generation_match(
                    "counter", b"%d" % (int(current.data) + 1), current.generation
                )
            except CasConflict:
                continue
            done += 1

    assert race(4, increment) == [None] * 4
    assert store.get("counter").data == b"%d" % (4 * per_thread)
