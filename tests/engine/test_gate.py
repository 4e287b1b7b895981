"""The append gate keeps worker facts from straddling a compaction's cut."""

from __future__ import annotations

import threading
import time

from servo.engine._gate import AppendGate


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
