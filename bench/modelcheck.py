"""Benchmark the model checker: distinct states/s and totals per configuration.

    python bench/modelcheck.py [--profile ci] [--jobs 2] [--max-states N] [--json]

Runs every configuration of a profile (each in a worker process when --jobs > 1),
prints states, depth, whether the bounded space was exhausted, end states, distinct
folds and states/s per configuration, then the totals and the wall-clock rate over
all processes. Record the figures in bench/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_checks import McConfig, explore, profile
from model_checks._explore import Result


def _run(cfg: McConfig) -> Result:
    return explore(cfg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-states", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configs = profile(args.profile)
    if args.max_states is not None:
        configs = [c.with_(max_states=args.max_states) for c in configs]
    start = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = list(pool.imap_unordered(_run, configs))
    else:
        results = [_run(c) for c in configs]
    wall = time.perf_counter() - start
    results.sort(key=lambda r: r.config.name)
    rows = [
        {
            "config": r.config.name, "states": r.states, "depth": r.depth, "exhausted": r.complete,
            "end_states": r.quiescent, "folds": r.folds, "seconds": round(r.seconds, 1),
            "states_per_s": round(r.rate), "violation": r.violation[0] if r.violation else None,
        }
        for r in results
    ]
    total = sum(r.states for r in results)
    cpu = sum(r.seconds for r in results)
    summary = {
        "profile": args.profile, "jobs": args.jobs, "total_states": total, "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1), "states_per_wall_s": round(total / wall), "states_per_cpu_s": round(total / cpu),
    }
    if args.json:
        print(json.dumps({"configs": rows, "summary": summary}, indent=2))
        return 0
    print("| config | states | depth | exhausted | end states | folds | s | states/s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['config']} | {row['states']:,} | {row['depth']} | {'yes' if row['exhausted'] else 'no'} | "
              f"{row['end_states']:,} | {row['folds']:,} | {row['seconds']} | {row['states_per_s']:,} |")
    print(f"\ntotal {total:,} distinct states; wall {wall:.1f} s on {args.jobs} process(es) = "
          f"{total / wall:,.0f} states/s; {cpu:.1f} CPU-s = {total / cpu:,.0f} states/s per process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
