"""Benchmark one embedded run end to end (the observability overhead check, ADR 010).

    python bench/engine.py [--tasks 200] [--width 20] [--rounds 3]

Runs a pipeline of `tasks` no-op tasks in layers of `width` (each task depends on
one task of the layer before, so `width` chains) with `EmbeddedEngine` in a fresh
home, `rounds` times, and prints every wall time and process CPU time (all
threads) and the best of each. To compare two trees, run it with each on
PYTHONPATH (see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from servo.api import Pipeline
from servo.engine import EmbeddedEngine, Home


def build(tasks: int, width: int) -> Pipeline:
    """`tasks` no-op tasks in `width` chains."""
    pipeline = Pipeline("bench_engine")
    for n in range(tasks):
        name = f"t{n:04d}"
        depends = [f"t{n - width:04d}"] if n >= width else []

        def fn() -> None:
            return None

        pipeline.task(name=name, depends_on=depends)(fn)
    return pipeline


def main() -> None:
    """Print the wall and CPU time of each round and the best."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            engine = EmbeddedEngine(Home.open(Path(tmp) / ".servo"), build(args.tasks, args.width))
            started, cpu_started = time.perf_counter(), time.process_time()
            outcome = engine.run(timeout=600)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            assert outcome.state == "SUCCEEDED", outcome.run
    print("wall", " ".join(f"{t:.2f}" for t in times), f"best={min(times):.2f}", end="  ")
    print("cpu", " ".join(f"{t:.2f}" for t in cpu), f"best={min(cpu):.2f}")


if __name__ == "__main__":
    main()
