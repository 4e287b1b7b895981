"""`servo run` end to end on the embedded default, including kill -9 and resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servo.core._registry import Registry
from servo.core.fold import fold_lines
from servo.core.ids import ulid_timestamp
from servo.engine import Home
from servo.spec import Spec
from servo.storage import Ledger

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "pipeline.py"
DIAMOND = ROOT / "tests" / "data" / "pipelines" / "slow_diamond.py"


def servo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servo.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ledger_lines(home: Path) -> list[bytes]:
    ledger = Ledger(Home.open(home, create=False).store)
    return [ledger.read(i) for i in ledger.list_event_ids().event_ids]


def ledger_tables(home: Path, spec: Spec, rules: Registry) -> dict[str, list[dict[str, object]]]:
    """Refold every event in the home's ledger (what an auditor would do)."""
    return fold_lines(ledger_lines(home), spec, rules).tables()


def test_example_pipeline_retries_skips_and_reports_failure(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    home = tmp_path / ".servo"
    result = servo("run", str(EXAMPLE), "--home", str(home), "--json")
    assert result.returncode == 1, result.stderr  # report fails for good, by design
    body = json.loads(result.stdout)
    states = {t["task_key"]: (t["state"], t["attempt"]) for t in body["tasks"]}
    assert states == {
        "extract": ("SUCCEEDED", 1),
        "transform": ("SUCCEEDED", 2),
        "load": ("SUCCEEDED", 1),
        "report": ("FAILED", 1),
        "notify": ("SKIPPED", 0),
    }
    assert body["run"]["state"] == "FAILED"
    # Every event is durably in the ledger: a refold of it gives the same tasks.
    refolded = ledger_tables(home, spec, rules)
    assert {t["task_key"]: t["state"] for t in refolded["tasks"]} == {k: v[0] for k, v in states.items()}
    listed = servo("runs", "list", "--home", str(home), "--json")
    assert [r["state"] for r in json.loads(listed.stdout)] == ["FAILED"]
    # SPEC §3/§6: each ledger file on disk is exactly one envelope, named by its event_id.
    files = sorted(home.glob("**/ledger/orchestration/*/*.json"))
    assert len(files) == len(ledger_lines(home)) > 10
    for file in files:
        envelope = json.loads(file.read_bytes())
        assert envelope["event_id"] == file.stem
        assert file.parent.name == ulid_timestamp(file.stem).strftime("%Y-%m-%d")


def test_missing_or_bad_pipeline_files_are_clear_errors(tmp_path: Path) -> None:
    missing = servo("run", str(tmp_path / "nope.py"), "--home", str(tmp_path / "h"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    directory = servo("run", str(tmp_path), "--home", str(tmp_path / "h"))
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    none = servo("run", str(empty), "--home", str(tmp_path / "h"))
    assert none.returncode == 2 and "declares no servo.api.Pipeline" in none.stderr and "--pipeline" not in none.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    result = servo("run", str(broken), "--home", str(tmp_path / "h"))
    assert result.returncode == 2 and "failed to load: RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr
    no_workers = servo("run", str(DIAMOND), "--home", str(tmp_path / "w"), "--workers", "0")
    assert no_workers.returncode == 2 and "--workers must be at least 1" in no_workers.stderr
    assert "Traceback" not in no_workers.stderr
    assert not (tmp_path / "w").exists()  # refused before any run was started
    for option, value, says in (("--run-key", "", "--run-key must not be empty"), ("--timeout", "-1", "--timeout must be")):
        refused = servo("run", str(DIAMOND), "--home", str(tmp_path / "k"), option, value)
        assert refused.returncode == 2 and says in refused.stderr, (option, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "k").exists()


def test_sigkill_at_random_moments_still_completes_each_task_once(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    """Killed with SIGKILL ten times, `servo run` resumes the same run to success.

    With a run key, a process started after the run already finished (the engine can
    finish the diamond within one of the kill windows) returns that run instead of
    starting a new one, so there is exactly one run however the kills fall."""
    home = tmp_path / ".servo"
    rng = random.Random(7)
    command = [sys.executable, "-m", "servo.cli", "run", str(DIAMOND), "--home", str(home), "--json", "--run-key", "kill-test"]
    for _ in range(10):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(rng.uniform(0.6, 1.6))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    final = servo("run", str(DIAMOND), "--home", str(home), "--json", "--run-key", "kill-test")
    assert final.returncode == 0, final.stderr
    body = json.loads(final.stdout)
    assert body["run"]["state"] == "SUCCEEDED"
    tables = ledger_tables(home, spec, rules)
    runs = tables["runs"]
    assert [r["state"] for r in runs] == ["SUCCEEDED"]  # one run, resumed, never restarted
    assert {t["state"] for t in tables["tasks"]} == {"SUCCEEDED"}
    # Each task's success is recorded exactly once: any repeated finish was refused.
    rejected = {r["event_id"] for r in tables["rejected_events"]}
    accepted: dict[str, int] = {}
    for line in ledger_lines(home):
        event = json.loads(line)
        if event["event_type"] == "TaskFinished" and event["event_id"] not in rejected:
            key = event["data"]["task_key"]
            accepted[key] = accepted.get(key, 0) + 1
    assert accepted == {"start": 1, "left": 1, "right": 1, "join": 1}


LONG = ROOT / "tests" / "data" / "pipelines" / "long_task.py"


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_stops_servo_run_at_once_and_names_the_run_to_resume(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (kill, docker stop, a CI cancel) while a task runs:
    `servo run` does not wait for the task to finish, says which run is unfinished and
    how to resume it, and exits 130 / 143 without a traceback."""
    home = tmp_path / ".servo"
    command = [sys.executable, "-m", "servo.cli", "run", str(LONG), "--home", str(home)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (home / "store").exists() and any(b'"TaskStarted"' in line for line in ledger_lines(home)):
            break
        time.sleep(0.1)
    interrupted_at = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - interrupted_at < 10  # not the task's remaining minute
    assert proc.returncode == code
    assert word in stderr and "run_" in stderr and "resume" in stderr
    assert "Traceback" not in stderr


_SIGNAL_ON_IMPORT = """
import importlib, importlib.abc, os, signal, sys, tomllib

SIGNAL, MODULE = getattr(signal, sys.argv[1]), sys.argv[2]


class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), SIGNAL)  # handled at the next bytecode: mid-import
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["servo", *sys.argv[3:]]
# What the installed `servo` script runs: its entry point, from pyproject.toml.
with open(sys.argv.pop(-1), "rb") as project:
    entry = tomllib.load(project)["project"]["scripts"]["servo"]
module, _, function = entry.partition(":")
getattr(importlib.import_module(module), function)()
"""
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.mark.parametrize(
    ("sig", "module", "command", "code", "word"),
    [
        ("SIGTERM", "servo.engine", ["run", str(LONG)], 143, "terminated"),
        ("SIGTERM", "servo.worker", ["worker", "--pipeline", str(LONG)], 143, "terminated"),
        ("SIGTERM", "typer", ["run", str(LONG)], 143, "terminated"),  # the command line's own modules
        ("SIGINT", "typer", ["run", str(LONG)], 130, "interrupted"),
        ("SIGINT", "servo.engine", ["run", str(LONG)], 130, "interrupted"),
    ],
)
def test_a_signal_while_a_command_is_still_loading_exits_with_its_code_not_a_traceback(
    tmp_path: Path, sig: str, module: str, command: list[str], code: int, word: str
) -> None:
    """A SIGTERM or Ctrl-C that arrives before the command is under way (its modules are
    still loading: the first second of `servo run`) stops it like one that arrives
    later: exit 143 / 130 and a line saying so, not death by the signal (-15) with
    nothing said, nor a KeyboardInterrupt traceback from the script's first import."""
    script = tmp_path / "signal_on_import.py"
    script.write_text(_SIGNAL_ON_IMPORT)
    result = subprocess.run(
        [sys.executable, str(script), sig, module, *command, "--home", str(tmp_path / ".servo"), str(PYPROJECT)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert result.returncode == code, (result.returncode, result.stderr)
    assert word in result.stderr
    assert "Traceback" not in result.stderr


_SIGNAL_THEN_MARK = """
import importlib, importlib.abc, os, pathlib, signal, sys, tomllib

SIGNAL, FIRST, LATER, MARK = getattr(signal, sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])


class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == FIRST:
            os.kill(os.getpid(), SIGNAL)
        elif name == LATER:
            MARK.write_text("reached")
        return None

sys.meta_path.insert(0, Hook())
sys.argv = ["servo", "runs", "list", "--home", str(MARK.parent / "no-home-here")]
with open(%r, "rb") as project:  # what the installed `servo` script runs
    entry = tomllib.load(project)["project"]["scripts"]["servo"]
module, _, function = entry.partition(":")
getattr(importlib.import_module(module), function)()
"""


@pytest.mark.parametrize(("sig", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_command_line_loads_waits_for_the_loading_to_finish(
    tmp_path: Path, sig: str, code: int, word: str
) -> None:
    """Raised in the middle of an import, KeyboardInterrupt can land in a class body
    (rich's `Column`: a RuntimeError traceback, exit 1) or in importlib's locks (where
    it is swallowed). The script records a signal while the command line loads, lets
    the loading finish, then exits 130 / 143 with one line."""
    mark = tmp_path / "reached"
    script = tmp_path / "signal_then_mark.py"
    script.write_text(_SIGNAL_THEN_MARK % str(PYPROJECT))
    result = subprocess.run(
        [sys.executable, str(script), sig, "rich.table", "servo.cli._spec", str(mark)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert result.returncode == code, (result.returncode, result.stderr)
    assert mark.exists()  # the modules after the one the signal landed in were loaded
    assert result.stderr.strip() == f"{word} before the command started"
    # Typer builds the command from its declaration (importing pydantic) only once it
    # runs: a signal then, after the command line loaded, is held the same way.
    mark.unlink()
    result = subprocess.run(
        [sys.executable, str(script), sig, "pydantic", "pydantic.fields", str(mark)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert result.returncode == code, (result.returncode, result.stderr)
    assert mark.exists()
    assert result.stderr.strip() == f"{word} before the command started"


def test_a_run_past_its_timeout_exits_3_and_with_json_still_prints_where_it_stands(tmp_path: Path) -> None:
    """`--timeout S` gives up waiting (exit 3; the run stays unfinished and resumable);
    with `--json` a script still gets one JSON document: the run and its tasks as they
    stood, marked `timed_out`."""
    home = tmp_path / ".servo"
    result = servo("run", str(LONG), "--home", str(home), "--timeout", "1.5", "--json")
    assert result.returncode == 3, result.stderr
    assert "did not finish within 1.5 s" in result.stderr and "Traceback" not in result.stderr
    body = json.loads(result.stdout)
    assert body["timed_out"] is True
    assert body["run"]["state"] in ("PENDING", "RUNNING") and body["run"]["run_id"].startswith("run_")
    assert [t["task_key"] for t in body["tasks"]] == ["long"]
    assert body["tasks"][0]["state"] in ("READY", "DISPATCHED", "RUNNING")
    plain = servo("run", str(LONG), "--home", str(home), "--timeout", "0.5")
    assert plain.returncode == 3 and plain.stdout == ""
    assert body["run"]["run_id"] in plain.stderr  # the same run, resumed, then given up again


HEARTBEATING = ROOT / "tests" / "data" / "pipelines" / "heartbeating.py"


def test_an_engine_killed_mid_task_resumes_before_a_short_heartbeat_timeout(tmp_path: Path) -> None:
    """kill -9 `servo run` while a task with a 3 s heartbeat timeout runs, and start it
    again at once: the dead process's lease is freed as the new one starts, so the same
    attempt runs again before its heartbeat check fires, and the run succeeds as it
    would have without the crash (before, it waited ~5 s for the lease and the attempt
    timed out, failing a run with max_attempts=1)."""
    home, mark = tmp_path / ".servo", tmp_path / "started"
    command = [sys.executable, "-m", "servo.cli", "run", str(HEARTBEATING), "--home", str(home), "--json"]
    env = {**os.environ, "SERVO_TEST_MARK": str(mark)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # a few heartbeats in
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # reaped: the lease's holder is gone
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["resumed"] is True and body["run"]["state"] == "SUCCEEDED"
    assert {t["task_key"]: (t["state"], t["attempt"]) for t in body["tasks"]} == {"work": ("SUCCEEDED", 1), "after": ("SUCCEEDED", 1)}
    started = mark.read_text().split()
    assert len(started) == 2 and len(set(started)) == 1  # the same attempt, run again after the crash


def test_a_pipeline_imports_modules_beside_it_and_prints_without_breaking_json(tmp_path: Path) -> None:
    """Like `python FILE.py`, the file's own directory is importable; with `--json`,
    stdout carries only the JSON document (what tasks print goes to stderr)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "helpers.py").write_text("def answer():\n    return 42\n")
    (project / "flow.py").write_text(
        "from helpers import answer\n"
        "from servo.api import Pipeline\n"
        "pipeline = Pipeline('beside')\n"
        "@pipeline.task()\n"
        "def shout():\n"
        "    print(f'task output {answer()}')  # one write: the tasks run at once\n"
        "@pipeline.task()\n"
        "def shell_out():\n"  # a child process (dbt, spark-submit...) writes to fd 1 itself
        "    import os, subprocess, sys\n"
        "    os.write(1, b'raw fd write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child output\")'], check=True)\n"
    )
    result = servo("run", str(project / "flow.py"), "--home", str(tmp_path / "h"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run"]["state"] == "SUCCEEDED"
    assert "task output 42" in result.stderr
    assert "raw fd write" in result.stderr and "child output" in result.stderr


def test_a_pipeline_file_that_exits_while_loading_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "exits.py"
    bad.write_text("import sys\nsys.exit('no config')\n")
    result = servo("run", str(bad), "--home", str(tmp_path / "h"))
    assert result.returncode == 2 and "failed to load: SystemExit: no config" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_engine_never_runs_or_fails_the_tasks_of_another_pipelines_run(tmp_path: Path) -> None:
    """Two pipelines share the default home (./.servo): `servo run y.py` after a killed
    `servo run x.py` must leave x's run to x, even where both declare a task `a`; the
    next `servo run x.py` resumes it and runs x's own code."""
    home, marks = tmp_path / ".servo", tmp_path / "marks"
    marks.mkdir()
    x, y = tmp_path / "x.py", tmp_path / "y.py"
    x.write_text(
        "import time\nfrom pathlib import Path\nfrom servo.api import Pipeline\n"
        "pipeline = Pipeline('x')\n"
        "@pipeline.task(heartbeat_timeout_sec=60)\n"
        f"def a(ctx):\n    Path({str(marks)!r}, 'x.a.' + str(ctx.attempt)).touch()\n    time.sleep(2.5)\n"
        "@pipeline.task(depends_on=[a])\n"
        f"def b(ctx):\n    Path({str(marks)!r}, 'x.b').touch()\n"
    )
    y.write_text(
        "import time\nfrom pathlib import Path\nfrom servo.api import Pipeline\n"
        "pipeline = Pipeline('y')\n"
        f"@pipeline.task\ndef a(ctx):\n    Path({str(marks)!r}, 'y.a.' + ctx.run_id).touch()\n"
        "@pipeline.task\ndef slow():\n    time.sleep(9)\n"  # outlives the killed engine's 5 s leases
    )
    command = [sys.executable, "-m", "servo.cli", "run", str(x), "--home", str(home), "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (marks / "x.a.1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    other = servo("run", str(y), "--home", str(home), "--json")
    assert other.returncode == 0, other.stderr
    y_run = json.loads(other.stdout)["run"]["run_id"]
    assert sorted(p.name for p in marks.iterdir()) == ["x.a.1", f"y.a.{y_run}"]  # y ran only its own run
    assert "not declared in pipeline" not in other.stderr
    runs = {r["labels"]["servo.pipeline"]: r["state"] for r in json.loads(servo("runs", "list", "--home", str(home), "--json").stdout)}
    assert runs == {"x": "RUNNING", "y": "SUCCEEDED"}
    resumed = servo("run", str(x), "--home", str(home), "--json")
    assert resumed.returncode == 0, resumed.stderr
    body = json.loads(resumed.stdout)
    assert body["run"]["state"] == "SUCCEEDED"
    assert (marks / "x.b").exists()


def test_a_run_key_of_another_pipelines_run_is_refused_not_returned(tmp_path: Path) -> None:
    """`--run-key K` names one run per home (its id is derived from K alone, SPEC §3):
    another pipeline asking for K gets a clear error (exit 2), not that run's outcome,
    and nothing of it runs; the pipeline that owns K still gets its run back."""
    home, marks = tmp_path / ".servo", tmp_path / "marks"
    marks.mkdir()
    x, y = tmp_path / "x.py", tmp_path / "y.py"
    for path, name in ((x, "x"), (y, "y")):
        path.write_text(
            "from pathlib import Path\nfrom servo.api import Pipeline\n"
            f"pipeline = Pipeline({name!r})\n"
            f"@pipeline.task\ndef a():\n    Path({str(marks)!r}, {name!r}).touch()\n"
        )
    first = servo("run", str(x), "--home", str(home), "--run-key", "daily", "--json")
    assert first.returncode == 0, first.stderr
    other = servo("run", str(y), "--home", str(home), "--run-key", "daily", "--json")
    assert other.returncode == 2, other.stdout
    assert "run key 'daily'" in other.stderr and "pipeline 'x'" in other.stderr
    assert "Traceback" not in other.stderr and other.stdout == ""
    assert sorted(p.name for p in marks.iterdir()) == ["x"]
    again = servo("run", str(x), "--home", str(home), "--run-key", "daily", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["run"]["run_id"] == json.loads(first.stdout)["run"]["run_id"]
