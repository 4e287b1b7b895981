"""`bench/e2e.py` at toy size: the Servo half always runs; the Dagster half only when
the `bench` extra is installed, and the output says which."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "e2e.py"
HAS_DAGSTER = importlib.util.find_spec("dagster") is not None


def test_e2e_bench_runs_at_toy_size_and_reports_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--cases", "chain:3,fanin:4,fanout:4"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads(proc.stdout.splitlines()[-1])
    servo = [r for r in body["results"] if r["engine"] == "servo"]
    assert [(r["shape"], r["tasks"]) for r in servo] == [("chain", 3), ("fanin", 4), ("fanout", 4)]
    for row in servo:
        assert row["wall_s"] > 0 and row["ms_per_task"] > 0 and row["peak_rss_mib"] > 0
        for kind in ("requested", "enqueued", "started"):
            assert row[kind]["samples"] == row["tasks"] - 1  # every task but the root has upstreams
            assert row[kind]["p50_ms"] is not None and row[kind]["p50_ms"] >= 0
    # The Dagster half is conditional on the optional `bench` extra, and says so.
    dagster = [r for r in body["results"] if r["engine"] == "dagster"]
    if HAS_DAGSTER:
        assert body["dagster"] == "measured"
        assert len(dagster) == 3 and len(body["ratios"]) == 3
        assert all(r["ratio"] > 0 for r in body["ratios"])
    else:
        assert body["dagster"] == "not measured: not installed"
        assert dagster == [] and body["ratios"] == []
