"""Processes sharing one SQLite queue split the work by target (engine: timers, workers: dispatches)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from servo.queue import SqliteQueue

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_lease_with_a_target_takes_only_that_targets_tasks(tmp_path: Path) -> None:
    engine = SqliteQueue(tmp_path / "q.db")
    worker = SqliteQueue(tmp_path / "q.db")
    engine.create_task("d_1", "dispatch", b"a", T0)
    engine.create_task("t_1", "timer", b"b", T0)
    engine.create_task("d_2", "dispatch", b"c", T0)
    assert [x.task.name for x in worker.lease(T0, max_tasks=10, target="dispatch")] == ["d_1", "d_2"]
    assert [x.task.name for x in engine.lease(T0, max_tasks=10, target="timer")] == ["t_1"]
    assert engine.lease(T0, max_tasks=10) == []  # everything is leased now
    engine.close()
    worker.close()


def test_lease_with_several_targets_takes_any_of_them_and_none_takes_nothing(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "q.db")
    for name, target in [("d_x", "dispatch/x"), ("d_y", "dispatch/y"), ("d_old", "dispatch"), ("t_1", "timer")]:
        queue.create_task(name, target, b"", T0)
    assert queue.lease(T0, max_tasks=10, target=[]) == []
    taken = queue.lease(T0, max_tasks=10, target=("timer", "dispatch", "dispatch/x"))
    assert sorted(x.task.name for x in taken) == ["d_old", "d_x", "t_1"]
    assert [x.task.name for x in queue.lease(T0, max_tasks=10)] == ["d_y"]  # left for pipeline y
    queue.close()
