"""`bench/floor.py` at toy size: the durable-write floor of a chained task, and (when
the `bench` extra is installed) Dagster's chain beside it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "floor.py"
HAS_DAGSTER = importlib.util.find_spec("dagster") is not None


def test_floor_bench_reports_the_floor_and_the_target_it_is_compared_with() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--tasks", "5", "--dagster-tasks", "3"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(proc.stdout.splitlines()[-1])
    assert body["tasks"] == 5
    assert 0 < body["floor_ms_p50"] <= body["floor_ms_mean"] * 5
    if HAS_DAGSTER:
        assert body["dagster_ms_per_op"] > 0
        assert body["target_ms"] == body["dagster_ms_per_op"] / 10
        assert body["floor_over_target"] == body["floor_ms_p50"] / body["target_ms"]
    else:
        assert "dagster_ms_per_op" not in body
