"""The append gate keeps worker facts from straddling a compaction's cut."""

from __future__ import annotations

import threading
import time

import pytest

from servo.engine._gate import AppendGate, GroupCommit


def test_cut_waits_for_appends_in_flight_and_holds_new_ones_back() -> None:
    gate = AppendGate()
    order: list[str] = []
    in_append = threading.Event()
    release = threading.Event()

    def slow_append() -> None:
        with gate.append():
            in_append.set()
            release.wait(5)
            order.append("append-1 done")

    def late_append() -> None:
        with gate.append():
            order.append("append-2")

    first = threading.Thread(target=slow_append)
    first.start()
    assert in_append.wait(5)
    cutter_done = threading.Event()

    def cut() -> None:
        with gate.cut():
            order.append("cut")
            second = threading.Thread(target=late_append)
            second.start()
            time.sleep(0.05)  # the new append must not enter while the cut holds
            order.append("cut done")
        second.join(5)
        cutter_done.set()

    cutter = threading.Thread(target=cut)
    cutter.start()
    time.sleep(0.05)
    assert order == []  # the cut is waiting for the append in flight
    release.set()
    assert cutter_done.wait(5)
    first.join(5)
    cutter.join(5)
    assert order == ["append-1 done", "cut", "cut done", "append-2"]


def test_appends_run_together_when_no_cut_is_pending() -> None:
    gate = AppendGate()
    with gate.append(), gate.append():
        pass
    with gate.cut():
        pass


def test_group_commit_commits_concurrent_items_together_each_once() -> None:
    """Callers that arrive while a commit is under way are committed together by the
    next one (one fsync round for several worker facts); each item exactly once, and
    each caller returns only once its own item is committed."""
    batches: list[list[int]] = []
    committed: set[int] = set()
    first_in = threading.Event()
    release_first = threading.Event()

    def commit(items: list[int]) -> None:
        if not batches:  # hold the first commit, so the others pile up behind it
            first_in.set()
            release_first.wait(5)
        batches.append(list(items))
        committed.update(items)

    group: GroupCommit[int] = GroupCommit(commit)
    returned: list[tuple[int, bool]] = []

    def submit(i: int) -> None:
        group.submit(i)
        returned.append((i, i in committed))

    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    assert first_in.wait(5)
    threads += [threading.Thread(target=submit, args=(i,)) for i in range(1, 6)]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)  # all five waiting behind the first commit
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2
    assert sorted(returned) == [(i, True) for i in range(6)]
    group.submit(9)  # alone: committed at once, by the caller
    assert batches[-1] == [9]


def test_group_commit_fails_every_caller_of_a_failed_batch_and_recovers() -> None:
    failing = True
    seen: list[list[str]] = []

    def commit(items: list[str]) -> None:
        seen.append(items)
        if failing:
            raise OSError("disk full")

    group: GroupCommit[str] = GroupCommit(commit)
    with pytest.raises(OSError, match="disk full"):
        group.submit("a")
    failing = False
    group.submit("b")
    assert seen == [["a"], ["b"]]
