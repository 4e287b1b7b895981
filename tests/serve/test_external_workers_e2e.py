"""Three processes: `servo serve`, `servo worker` and `servo run --external-workers`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from servo.core._registry import Registry
from servo.core.fold import fold_lines
from servo.engine import Home
from servo.spec import Spec
from servo.storage import Ledger

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.py"
SERVO = [sys.executable, "-m", "servo.cli"]


def _ledger_lines(home: Path) -> list[bytes]:
    ledger = Ledger(Home.open(home, create=False).store)
    return [ledger.read(i) for i in ledger.list_event_ids().event_ids]


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_a_run_completes_through_serve_and_a_separate_worker(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    home = tmp_path / ".servo"
    serve = subprocess.Popen(
        [*SERVO, "serve", "--home", str(home), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    worker: subprocess.Popen[str] | None = None
    try:
        assert serve.stdout is not None
        banner = serve.stdout.readline()
        assert " on http://127.0.0.1:" in banner, banner
        url = banner.rsplit(" on ", 1)[1].strip()
        worker = subprocess.Popen(
            [*SERVO, "worker", "--home", str(home), "--pipeline", str(EXAMPLE), "--server", url, "--concurrency", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        run = subprocess.run(
            [*SERVO, "run", str(EXAMPLE), "--home", str(home), "--external-workers", "--callback-base", url, "--json"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        if worker is not None:
            worker_code, worker_err = _stop(worker)
        serve_code, serve_err = _stop(serve)
    assert run.returncode == 1, run.stderr  # report fails for good, by design
    body = json.loads(run.stdout)
    assert {t["task_key"]: (t["state"], t["attempt"]) for t in body["tasks"]} == {
        "extract": ("SUCCEEDED", 1),
        "transform": ("SUCCEEDED", 2),
        "load": ("SUCCEEDED", 1),
        "report": ("FAILED", 1),
        "notify": ("SKIPPED", 0),
    }
    assert worker_code == 0 and "Traceback" not in worker_err, worker_err
    assert "stopped after" in worker_err
    assert serve_code == 0 and "Traceback" not in serve_err, serve_err
    # Every worker fact came over HTTP from the worker process, none from an embedded pool.
    lines = _ledger_lines(home)
    events = [json.loads(line) for line in lines]
    facts = [e for e in events if e["event_type"] in ("TaskStarted", "TaskHeartbeat", "TaskFinished")]
    assert facts and all(e["source"].startswith("worker:") and e["source"] != "worker:embedded" for e in facts)
    assert any(e["event_type"] == "TaskHeartbeat" and e["data"].get("progress_pct") == 50 for e in facts)
    # Each task's success is recorded exactly once (a repeat would be a rejected duplicate).
    rejected = {r["event_id"] for r in fold_lines(lines, spec, rules).tables()["rejected_events"]}
    successes = Counter(
        e["data"]["task_key"]
        for e in facts
        if e["event_type"] == "TaskFinished" and e["data"]["outcome"] == "SUCCEEDED" and e["event_id"] not in rejected
    )
    assert successes == {"extract": 1, "transform": 1, "load": 1}
