"""Benchmark the Layer 1 fold: events/s and peak RSS on generated ledgers.

    python bench/fold.py [--sizes 10000,100000,1000000] [--json]

For each size it generates a ledger (half wide fan-out runs, half long chains; every
task dispatched, started, heartbeat, finished), then, each in a fresh subprocess so
peak RSS is that measurement's own:
  full      read, parse and fold a JSONL file from scratch (what `servo fold` does)
  history   fold with keep_history=True (what an incremental compactor keeps)
  incr      on top of that history, fold 1,000 new events; reported per size so the
            1M/10k ratio shows whether incremental cost depends on history size.
Figures are printed; record them in bench/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _ulid(counter: int) -> str:
    from servo.core.ids import new_ulid

    return new_ulid(EPOCH + timedelta(milliseconds=counter), counter.to_bytes(10, "big"))


def _envelope(counter: int, event_type: str, key: str, data: dict[str, object]) -> str:
    at = (EPOCH + timedelta(milliseconds=counter)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps(
        {
            "event_id": _ulid(counter),
            "event_type": event_type,
            "schema_version": 1,
            "tenant_id": "acme",
            "workspace_id": "prod",
            "idempotency_key": key,
            "occurred_at": at,
            "source": "bench",
            "data": data,
        },
        separators=(",", ":"),
    )


def generate(total: int, path: Path, start: int = 0, prefix: str = "r") -> int:
    """Write about `total` events of fan-out and chain runs; return the count."""
    counter = start
    written = 0
    run_index = 0
    with path.open("w") as out:
        while written < total:
            run = f"{prefix}{run_index}"
            wide = run_index % 2 == 0
            size = 50
            tasks = []
            for i in range(size):
                deps = ([] if i == 0 else ["t0"]) if wide else [] if i == 0 else [f"t{i - 1}"]
                tasks.append({"task_key": f"t{i}", "depends_on": deps, "max_attempts": 1, "heartbeat_timeout_sec": 60})
            lines = [
                ("RunTriggered", f"run:{run}", {"run_id": run, "plan_id": "p", "trigger": {"kind": "MANUAL"}, "root_assets": [], "labels": {}}),
                ("PlanCreated", f"plan:{run}:p", {"run_id": run, "plan_id": "p", "tasks": tasks}),
            ]
            order = ["t0"] + [f"t{i}" for i in range(1, size)]
            for key in order:
                aid = f"A{run}{key}"
                base = {"run_id": run, "task_key": key, "attempt": 1, "attempt_id": aid}
                lines.append(("DispatchRequested", f"dispatch:{run}:{key}:1", {**base, "dispatch_id": f"dispatch:{run}:{key}:1", "worker_queue": "q"}))
                lines.append(("TaskStarted", f"started:{run}:{key}:{aid}", {**base, "worker_id": "w"}))
                hb = "2026-01-01T00:00:01Z"
                lines.append(("TaskHeartbeat", f"hb:{run}:{key}:{aid}:{hb}", {**base, "worker_id": "w", "heartbeat_at": hb}))
                lines.append(("TaskFinished", f"finished:{run}:{key}:{aid}", {**base, "worker_id": "w", "outcome": "SUCCEEDED"}))
            for event_type, key, data in lines:
                out.write(_envelope(counter, event_type, key, data) + "\n")
                counter += 1
                written += 1
            run_index += 1
    return written


def _measure(mode: str, ledger: str, extra: str) -> dict[str, float]:
    """Runs inside the child process."""
    from servo.core.fold import Projection, fold_file
    from servo.core.rules import default_spec, registry

    spec, rules = default_spec(), registry()
    if mode == "full":
        start = time.perf_counter()
        cpu = time.process_time()
        projection = fold_file(Path(ledger), spec, rules)
        result: dict[str, float] = {"seconds": time.perf_counter() - start}
        result["cpu_seconds"] = time.process_time() - cpu
        result["events"] = sum(len(p.keys) + len(p.rejected) for p in projection.partitions.values())
    else:
        lines = Path(ledger).read_bytes().splitlines()
        result = {"events": len(lines)}
        start = time.perf_counter()
        projection = Projection(spec, rules, keep_history=True)
        projection.apply_lines(lines)
        result["seconds"] = time.perf_counter() - start
        new = Path(extra).read_bytes().splitlines()
        start = time.perf_counter()
        projection.apply_lines(new)
        result["incr_seconds"] = time.perf_counter() - start
        result["incr_events"] = len(new)
    result["events_per_s"] = result["events"] / result["seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "new.jsonl"
        generate(1000, extra, start=10**9, prefix="new")
        for size in (int(s) for s in args.sizes.split(",")):
            ledger = Path(tmp) / f"ledger_{size}.jsonl"
            generate(size, ledger)
            for mode in ("full", "history"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(ledger), str(extra)],
                    capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                row = {"size": size, "mode": mode, **json.loads(proc.stdout)}
                results.append(row)
                if not args.json:
                    line = f"{size:>9} {mode:<8} {row['events_per_s']:>10,.0f} events/s  peak RSS {row['peak_rss_mib']:>7.1f} MiB"
                    if mode == "history":
                        line += f"  +1,000 new events: {row['incr_seconds'] * 1000:.1f} ms"
                    print(line, flush=True)
    incr = {r["size"]: r["incr_seconds"] for r in results if r["mode"] == "history"}
    if len(incr) > 1:
        sizes = sorted(incr)
        ratio = incr[sizes[-1]] / incr[sizes[0]]
        if args.json:
            print(json.dumps({"results": results, "incremental_ratio": ratio}))
        else:
            print(f"incremental cost ratio ({sizes[-1]:,} / {sizes[0]:,} history): {ratio:.2f} (target <= 2)")
    elif args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
