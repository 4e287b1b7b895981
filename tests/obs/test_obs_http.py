"""`servo run --metrics-port N` serves the servo_ families over real HTTP during the run."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PIPELINE = '''
import os, time
from servo.api import Pipeline

pipeline = Pipeline("obs_http")

@pipeline.task
def first() -> None:
    return None

@pipeline.task(depends_on=[first])
def wait_for_scrape() -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["SERVO_TEST_RELEASE"]) and time.monotonic() < deadline:
        time.sleep(0.02)
'''

FAMILIES = (
    "servo_compaction_seconds",
    "servo_ledger_append_seconds",
    "servo_queue_operation_seconds",
    "servo_reconcile_seconds",
    "servo_callback_seconds",
    "servo_task_execution_seconds",
    "servo_finish_to_dispatch_seconds",
    "servo_queue_depth",
    "servo_events_appended_total",
    "servo_errors_total",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_port_serves_servo_families_during_the_run(tmp_path: Path) -> None:
    file = tmp_path / "pipe.py"
    file.write_text(PIPELINE)
    release = tmp_path / "release"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servo.cli", "run", str(file), "--home", str(tmp_path / ".servo"), "--json",
         "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "SERVO_TEST_RELEASE": str(release)},
    )
    try:
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                body = ""
            if "servo_task_execution_seconds_count" in body and "servo_finish_to_dispatch_seconds_count" in body:
                break
            time.sleep(0.1)
        for family in FAMILIES:
            assert f"# TYPE {family} " in body, family
    finally:
        release.touch()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
