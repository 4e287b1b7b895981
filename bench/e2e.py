"""Benchmark no-op pipelines end to end: Servo's embedded engine against Dagster.

    python bench/e2e.py [--quick] [--json] [--repeat N] [--dagster-max N] [--no-dagster]

Three shapes of no-op tasks:
  chain    t0 -> t1 -> ... -> t(n-1)                  (1,000 tasks)
  fanin    t0 -> 998 tasks -> sink                    (1,000 tasks)
  fanout   t0 -> n-1 leaves                           (10,000 tasks)
Each case runs in a fresh subprocess (so peak RSS, `ru_maxrss`, is its own) with a
fresh temp home:
  servo    EmbeddedEngine(Home(tmp), pipeline).run(): every event durable in the
           ledger (one create-only file per event, fsync'd), SQLite queue with
           synchronous=FULL, 4 worker threads.
  dagster  job.execute_in_process(instance=DagsterInstance.local_temp(tmp)): SQLite run,
           event-log and schedule storage on disk, the in-process executor.
Wall time is the run call alone (not interpreter start, imports or building the
job). Finish -> dispatch latency comes from the ledger, per task with upstreams:
the occurred_at of the last upstream TaskFinished against the task's
  requested  DispatchRequested.occurred_at (the ready controller's decision: the
             `now` of the driver step that saw the upstream finished)
  enqueued   DispatchEnqueued.occurred_at (the queue task exists; stamped with the
             same step's `now`, so it can only under-count by that step's own time)
  started    TaskStarted.occurred_at (a worker thread runs it: end to end)
For Dagster the comparable figure is upstream STEP_SUCCESS -> downstream STEP_START
from its event log. Servo and Dagster are measured in the same run, interleaved,
best of `--repeat` by wall time; the ratio is Dagster ms/task over Servo ms/task at
the same shape and size. Dagster sizes above `--dagster-max` are run at that size
instead, with a Servo run at the same size beside it for the ratio.
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
from pathlib import Path
from typing import Any

FULL = [("chain", 1000), ("fanin", 1000), ("fanout", 10000)]
QUICK = [("chain", 20), ("fanin", 20), ("fanout", 50)]
TARGETS = {"ratio": 10.0, "p50_ms": 20.0, "p99_ms": 100.0, "rss_mib": 1024.0}


def edges(shape: str, n: int) -> dict[str, list[str]]:
    """Task name -> upstream names, in declaration order."""
    if n < 3:
        raise ValueError("a pipeline needs at least 3 tasks")
    names = [f"t{i}" for i in range(n)]
    if shape == "chain":
        return {name: ([] if i == 0 else [names[i - 1]]) for i, name in enumerate(names)}
    if shape == "fanout":
        return {name: ([] if i == 0 else ["t0"]) for i, name in enumerate(names)}
    if shape == "fanin":
        middle = names[1:-1]
        out: dict[str, list[str]] = {"t0": []}
        out.update({name: ["t0"] for name in middle})
        out[names[-1]] = middle
        return out
    raise ValueError(f"unknown shape {shape!r}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency(graph: dict[str, list[str]], finished: dict[str, float], later: dict[str, float]) -> dict[str, Any]:
    """p50/p99 (ms) of last-upstream finish -> `later` over tasks with upstreams."""
    gaps = [
        (later[name] - max(finished[d] for d in deps)) * 1000
        for name, deps in graph.items()
        if deps and name in later and all(d in finished for d in deps)
    ]
    return {"p50_ms": _percentile(gaps, 0.50), "p99_ms": _percentile(gaps, 0.99), "samples": len(gaps)}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------- servo --


def _servo(shape: str, n: int, workdir: Path) -> dict[str, Any]:
    """Runs inside the child process."""
    import orjson

    from servo.api import Pipeline
    from servo.core.events import parse_timestamp
    from servo.engine import EmbeddedEngine, Home
    from servo.storage import Ledger

    graph = edges(shape, n)
    pipeline = Pipeline(f"bench-{shape}")
    for name, deps in graph.items():
        # Leaves of a wide fan-out wait in the queue for minutes; the heartbeat clock
        # starts at dispatch, so the default 300 s would time the last ones out.
        pipeline.task(lambda: None, name=name, depends_on=deps, heartbeat_timeout_sec=3600)
    home = Home.open(workdir / ".servo")
    engine = EmbeddedEngine(home, pipeline)
    start = time.perf_counter()
    outcome = engine.run(timeout=3600)
    wall = time.perf_counter() - start
    rss = _peak_rss_mib()
    if outcome.state != "SUCCEEDED":
        states: dict[str, int] = {}
        for task in outcome.tasks:
            states[task["state"]] = states.get(task["state"], 0) + 1
        failed = next((t for t in outcome.tasks if t["state"] == "FAILED"), None)
        raise SystemExit(f"servo run ended {outcome.state} after {wall:.0f} s: tasks {states}; first failed: {failed}")
    ledger = Ledger(home.store)
    stamps: dict[str, dict[str, float]] = {"TaskFinished": {}, "DispatchRequested": {}, "TaskStarted": {}}
    enqueued: dict[str, float] = {}
    event_ids = ledger.list_event_ids().event_ids
    for event_id in event_ids:
        event = orjson.loads(ledger.read(event_id))
        kind, data = event["event_type"], event["data"]
        at = parse_timestamp(event["occurred_at"], "occurred_at").timestamp()
        if kind in stamps:
            stamps[kind].setdefault(data["task_key"], at)
        elif kind == "DispatchEnqueued":
            enqueued.setdefault(data["dispatch_id"].split(":")[2], at)
    finished = stamps["TaskFinished"]
    return {
        "wall_s": wall,
        "ms_per_task": wall * 1000 / n,
        "peak_rss_mib": rss,
        "events": len(event_ids),
        "requested": _latency(graph, finished, stamps["DispatchRequested"]),
        "enqueued": _latency(graph, finished, enqueued),
        "started": _latency(graph, finished, stamps["TaskStarted"]),
    }


# ------------------------------------------------------------- dagster --


def _dagster(shape: str, n: int, workdir: Path) -> dict[str, Any]:
    """Runs inside the child process."""
    import dagster as dg

    graph = edges(shape, n)

    def op(name: str, has_deps: bool) -> Any:
        def noop() -> None:
            return None

        ins = {"after": dg.In(dg.Nothing)} if has_deps else {}
        return dg.op(name=name, ins=ins, out=dg.Out(dg.Nothing))(noop)

    deps: dict[str, dict[str, Any]] = {}
    for name, ups in graph.items():
        if len(ups) == 1:
            deps[name] = {"after": dg.DependencyDefinition(ups[0], "result")}
        elif ups:
            deps[name] = {"after": dg.MultiDependencyDefinition([dg.DependencyDefinition(u, "result") for u in ups])}
    job = dg.GraphDefinition(
        name=f"bench_{shape}", node_defs=[op(k, bool(v)) for k, v in graph.items()], dependencies=deps
    ).to_job()
    (workdir / "dagster_home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(workdir / "dagster_home")) as instance:
        start = time.perf_counter()
        result = job.execute_in_process(instance=instance, raise_on_error=True)
        wall = time.perf_counter() - start
        rss = _peak_rss_mib()
        if not result.success:
            raise SystemExit("dagster run failed")
        finished: dict[str, float] = {}
        started: dict[str, float] = {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type_value == "STEP_SUCCESS":
                finished[event.step_key] = entry.timestamp
            elif event.event_type_value == "STEP_START":
                started[event.step_key] = entry.timestamp
    return {"wall_s": wall, "ms_per_task": wall * 1000 / n, "peak_rss_mib": rss, "started": _latency(graph, finished, started)}


# -------------------------------------------------------------- driver --


def _child(engine: str, shape: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"servo-e2e-{engine}-") as tmp:
        measure = _servo if engine == "servo" else _dagster
        return measure(shape, n, Path(tmp))


def run_case(engine: str, shape: str, n: int) -> dict[str, Any]:
    """Measure one case in a fresh subprocess."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", engine, shape, str(n)],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} {shape} {n} failed:\n{proc.stderr[-3000:]}")
    return {"engine": engine, "shape": shape, "tasks": n, **json.loads(proc.stdout.splitlines()[-1])}


def dagster_available() -> bool:
    """Whether the optional `bench` extra (Dagster) is installed."""
    try:
        import dagster  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _line(row: dict[str, Any]) -> str:
    text = (
        f"{row['engine']:<8}{row['shape']:<7}{row['tasks']:>7,} tasks  {row['wall_s']:>8.2f} s"
        f"  {row['ms_per_task']:>7.2f} ms/task  peak RSS {row['peak_rss_mib']:>7.1f} MiB"
    )
    for kind in ("requested", "enqueued", "started"):
        if kind in row:
            lat = row[kind]
            text += f"  ->{kind} p50 {_fmt(lat['p50_ms'])} p99 {_fmt(lat['p99_ms'])} ms"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes, for a smoke run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs by wall time")
    parser.add_argument("--dagster-max", type=int, default=1000, help="largest Dagster run (tasks)")
    parser.add_argument("--no-dagster", action="store_true")
    parser.add_argument("--cases", help="shape:size,... (default: the full or quick set)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, shape, n = args.child
        print(json.dumps(_child(engine, shape, int(n))))
        return
    cases = QUICK if args.quick else FULL
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    with_dagster = not args.no_dagster and dagster_available()
    if not with_dagster and not args.json:
        print("dagster: not measured (" + ("--no-dagster" if args.no_dagster else "not installed: pip install servo[bench]") + ")")
    plan: list[tuple[str, str, int]] = []
    for shape, n in cases:
        plan.append(("servo", shape, n))
        if with_dagster:
            capped = min(n, args.dagster_max)
            if capped != n:
                plan.append(("servo", shape, capped))
            plan.append(("dagster", shape, capped))
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for _ in range(max(1, args.repeat)):
        for key in plan:  # interleaved, so both engines see the same machine load
            row = run_case(*key)
            if key not in best or row["wall_s"] < best[key]["wall_s"]:
                best[key] = row
            if not args.json:
                print(_line(row), flush=True)
    rows = [best[k] for k in dict.fromkeys(plan)]
    ratios = []
    for (engine, shape, n), row in best.items():
        if engine == "dagster":
            servo_row = best[("servo", shape, n)]
            ratios.append({"shape": shape, "tasks": n, "ratio": row["ms_per_task"] / servo_row["ms_per_task"]})
    if args.json:
        dagster = "measured" if with_dagster else "not measured: " + ("--no-dagster" if args.no_dagster else "not installed")
        print(json.dumps({"results": rows, "ratios": ratios, "targets": TARGETS, "dagster": dagster}))
        return
    print(f"best of {max(1, args.repeat)}:")
    for row in rows:
        print("  " + _line(row))
    for r in ratios:
        print(f"  per-task overhead Dagster/Servo, {r['shape']} {r['tasks']:,}: {r['ratio']:.1f}x (target >= {TARGETS['ratio']:.0f}x)")


if __name__ == "__main__":
    main()
