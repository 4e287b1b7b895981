"""The durable-write floor of one chained task, against Dagster's per-op cost.

    python bench/floor.py [--tasks 300] [--dagster-tasks 200] [--no-dagster] [--json]

A chain cannot batch: task k+1 is dispatched only after task k's finish is durable,
folded and published. Under SPEC P1 (every event an fsynced create-only object) and
P5 (controllers read the published Parquet, never the ledger), one chained task
needs at least these durable writes, one after another:

  1. TaskFinished of the upstream             ledger object
  2. fold it: the downstream becomes READY    L0 delta files + manifest (P5)
  3. the ready controller's DispatchRequested ledger object
  4. fold it: its outbox row is PENDING       L0 delta files + manifest (P5)
  5. the queue task is created                SQLite commit (name-deduplicated)
  6. DispatchEnqueued                         ledger object
  7. a worker leases it                       SQLite commit
  8. TaskStarted                              ledger object
  9. the lease is acked after the finish      SQLite commit

This script performs exactly those writes with Servo's own primitives (`LocalStore`
create-only objects: temp file, fsync, link, directory fsync; two delta files per
fold written as one group commit, then a manifest object; `SqliteQueue` with
synchronous=FULL) and nothing else: no fold, no Parquet encoding, no controller, no
threads. It is a lower bound on what `servo run` can reach on a chain on this disk.
Dagster's chain is measured in the same run (`bench/e2e.py`'s case, in its own
subprocess), and the floor is compared with a tenth of Dagster's per-op cost: the
issue #7 target. Record the printed figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from servo.queue import SqliteQueue
from servo.storage import LocalStore

sys.path.insert(0, str(Path(__file__).parent))
from e2e import dagster_available, run_case

EVENT = b'{"event_type": "TaskFinished", "data": {}}'.ljust(420, b" ")
DELTA = b"PAR1".ljust(1800, b"\0")


def floor(tasks: int) -> list[float]:
    """Seconds per chained task spent on its durable writes alone."""
    with tempfile.TemporaryDirectory(prefix="servo-floor-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        queue = SqliteQueue(Path(tmp) / "queue.db")
        per_task: list[float] = []

        def event(i: int, kind: str) -> None:
            store.put_if_absent(f"ledger/{i:08d}-{kind}.json", EVENT)

        def fold(i: int, kind: str) -> None:
            store.put_many_if_absent([(f"l0/{i:08d}-{kind}-tasks.parquet", DELTA), (f"l0/{i:08d}-{kind}-runs.parquet", DELTA)])
            store.put_if_absent(f"manifests/{i:08d}-{kind}.json", EVENT)

        for i in range(tasks):
            began = time.perf_counter()
            event(i, "finished")
            fold(i, "ready")
            event(i, "requested")
            fold(i, "outbox")
            now = datetime.now(UTC)
            queue.create_tasks([(f"d{i}", "dispatch", EVENT, now)])
            event(i, "enqueued")
            (lease,) = queue.lease(now, max_tasks=1, lease_seconds=60)
            event(i, "started")
            queue.ack(lease)
            per_task.append(time.perf_counter() - began)
        queue.close()
        return per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300, help="chained tasks for the floor")
    parser.add_argument("--dagster-tasks", type=int, default=200, help="ops in Dagster's chain")
    parser.add_argument("--no-dagster", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    per_task = floor(args.tasks)
    result: dict[str, object] = {
        "tasks": args.tasks,
        "floor_ms_p50": statistics.median(per_task) * 1000,
        "floor_ms_mean": statistics.mean(per_task) * 1000,
    }
    if not args.no_dagster and dagster_available():
        dagster = run_case("dagster", "chain", args.dagster_tasks)
        result["dagster_ms_per_op"] = dagster["ms_per_task"]
        result["target_ms"] = dagster["ms_per_task"] / 10
        result["floor_over_target"] = result["floor_ms_p50"] / result["target_ms"]  # type: ignore[operator]
    if args.json:
        print(json.dumps(result))
        return
    print(f"durable-write floor of a chained task ({args.tasks} tasks): "
          f"p50 {result['floor_ms_p50']:.2f} ms, mean {result['floor_ms_mean']:.2f} ms")
    if "dagster_ms_per_op" in result:
        print(f"dagster chain ({args.dagster_tasks} ops): {result['dagster_ms_per_op']:.2f} ms per op; "
              f"the 10x target is {result['target_ms']:.2f} ms per task; "
              f"the floor alone is {result['floor_over_target']:.2f}x that")
    else:
        print("dagster: not measured")


if __name__ == "__main__":
    main()
