"""Structured logs: one JSON object per line, carrying the ids of what they are about."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from obs_support import ObservedRun

from servo.obs import configure_logging, log_context

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.py"


def test_every_json_line_has_the_base_fields(observed_run: ObservedRun) -> None:
    assert observed_run.log_lines, "an INFO-level run logs something"
    for line in observed_run.log_lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys()
        assert line["logger"].startswith("servo")
        assert line["ts"].endswith("Z")


def test_task_lines_carry_run_task_attempt_and_trace_ids(observed_run: ObservedRun) -> None:
    run_id = observed_run.outcome.run["run_id"]
    attempts = {t["task_key"]: t["attempt_id"] for t in observed_run.outcome.tasks if t["attempt_id"]}
    seen: set[str] = set()
    for line in observed_run.log_lines:
        if "task_key" in line:
            assert line["run_id"] == run_id
            assert line["attempt_id"] == attempts[line["task_key"]]
            assert len(line["trace_id"]) == 32
            assert line["tenant_id"]
            seen.add(line["task_key"])
    assert seen == {"extract", "load", "broken"}


def test_a_failed_task_logs_a_warning_with_its_error_type(observed_run: ObservedRun) -> None:
    failures = [x for x in observed_run.log_lines if x.get("task_key") == "broken" and x["level"] == "WARNING"]
    assert len(failures) == 1
    (failure,) = failures
    assert failure["error_type"] == "InjectedError"
    assert failure["component"] == "task"
    assert "injected for the error counter" in failure["msg"]


def test_json_formatter_merges_context_extras_and_exceptions() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "DEBUG", stream=stream)
    log = logging.getLogger("servo.test")
    try:
        with log_context(run_id="run_1", task_key="a"), log_context(attempt_id="01ATTEMPT"):
            try:
                raise KeyError("x")
            except KeyError:
                log.exception("boom %d", 7, extra={"component": "test"})
        log.info("outside")
    finally:
        logging.getLogger("servo").removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "boom 7" and first["level"] == "ERROR" and first["logger"] == "servo.test"
    assert (first["run_id"], first["task_key"], first["attempt_id"]) == ("run_1", "a", "01ATTEMPT")
    assert first["component"] == "test" and "KeyError" in first["exc"]
    assert "run_id" not in second


def test_human_lines_escape_control_characters_so_a_message_cannot_forge_lines() -> None:
    """A task's error text goes into log messages: a newline in it must not start what
    looks like another servo line, nor an escape code clear the terminal. A traceback
    keeps its own line breaks."""
    stream = io.StringIO()
    handler = configure_logging("human", "DEBUG", stream=stream)
    log = logging.getLogger("servo.test")
    try:
        log.warning("task failed: %s", "boom\n12:00:00 INFO servo: all good\x1b[2J\r\x07")
        try:
            raise ValueError("bad\x1b[31m")
        except ValueError:
            log.exception("crashed")
    finally:
        logging.getLogger("servo").removeHandler(handler)
    text = stream.getvalue()
    first = text.splitlines()[0]
    assert first.endswith("task failed: boom\\n12:00:00 INFO servo: all good\\x1b[2J\\r\\x07")
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "Traceback (most recent call last):\n" in text  # the traceback's own lines stay lines
    assert "ValueError: bad\\x1b[31m" in text


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servo.cli", "run", str(EXAMPLE), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_json_logs_go_to_stderr_and_leave_json_stdout_intact(tmp_path: Path, how: str) -> None:
    home = ["--home", str(tmp_path / ".servo"), "--log-level", "INFO"]
    if how == "flag":
        result = _run(*home, "--log-format", "json")
    else:
        result = _run(*home, env={"SERVO_LOG_FORMAT": "json"})
    assert result.returncode == 1, result.stderr  # the example's `report` fails by design
    assert json.loads(result.stdout)["run"]["state"] == "FAILED"
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(x.get("task_key") == "report" and x.get("error_type") == "ValueError" for x in lines)
    assert any(x.get("task_key") == "transform" and x.get("error_type") == "ConnectionError" for x in lines)


def test_cli_default_is_human_and_quiet_below_warning(tmp_path: Path) -> None:
    result = _run("--home", str(tmp_path / ".servo"))
    assert result.returncode == 1
    assert json.loads(result.stdout)["run"]["state"] == "FAILED"
    for line in result.stderr.splitlines():
        assert not line.startswith("{")
        assert "INFO" not in line
    assert "report" in result.stderr and "ValueError" in result.stderr


def test_cli_rejects_an_unknown_log_format_in_one_line(tmp_path: Path) -> None:
    result = _run("--home", str(tmp_path / ".servo"), "--log-format", "xml")
    assert result.returncode == 2
    assert "log format must be human or json" in result.stderr and "Traceback" not in result.stderr
