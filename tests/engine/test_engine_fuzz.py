"""Black-box fuzz of `servo run`: random pipelines, two engines at once, SIGKILL.

Each case writes a random DAG whose tasks fail a planned number of times, starts two
`servo run` processes of it on one new home with one run key, kills them at random
moments, then runs it to the end and checks what an auditor would: every task ends
where its upstreams and its own failures say, the exit code says whether the run
succeeded, a refold of `servo ledger export` (shuffled, duplicated) gives the tables
`servo run --json` printed, and each dispatch and each success was accepted once.

This found three bugs the scripted tests did not (a home mkdir race, a fresh queue
file answering "database is locked", and replicas minting one event id with
different bytes). `SERVO_FUZZ_CASES=N` runs more cases (default: 3, the `ci` budget).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from home_damage import DAMAGE, QUEUE_DAMAGE

from servo.engine import Home

CASES = int(os.environ.get("SERVO_FUZZ_CASES", "3"))


def write_pipeline(rng: random.Random, path: Path) -> dict[str, dict[str, Any]]:
    """A random DAG t0..tN (deps point backwards, so the keys are in topological order)."""
    tasks: dict[str, dict[str, Any]] = {}
    lines = [
        "import time",
        "from servo.api import Pipeline, RetryPolicy, TaskContext",
        "pipeline = Pipeline('fuzz')",
    ]
    for i in range(rng.randint(3, 10)):
        deps = [f"t{d}" for d in sorted(rng.sample(range(i), k=min(i, rng.choice([0, 1, 1, 2]))))]
        tries = rng.choice([1, 2, 3])
        fails = rng.choice([0, 0, 0, 0, 0, 1, 2, 5])
        tasks[f"t{i}"] = {"deps": deps, "tries": tries, "fails": fails}
        lines += [
            f"@pipeline.task(depends_on={deps!r}, max_attempts={tries}, "
            "retry=RetryPolicy(base_sec=0.05, factor=1.0, cap_sec=0.1))",
            f"def t{i}(ctx: TaskContext) -> None:",
            f"    time.sleep({rng.choice([0, 0.02, 0.1])})",
            f"    if ctx.attempt <= {fails}:",
            "        raise RuntimeError('planned failure')",
        ]
    path.write_text("\n".join(lines) + "\n")
    return tasks


def expected_states(tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    states: dict[str, str] = {}
    for key, task in tasks.items():
        if any(states[d] != "SUCCEEDED" for d in task["deps"]):
            states[key] = "SKIPPED"
        else:
            states[key] = "SUCCEEDED" if task["fails"] < task["tries"] else "FAILED"
    return states


def start_together_and_kill(rng: random.Random, commands: list[list[str]], after: float) -> list[tuple[int, str]]:
    """Start the commands at once; after `after` s SIGKILL each still running (with
    probability 0.7); return each one's exit code and stderr."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) for c in commands]
    time.sleep(after)
    for proc in procs:
        if proc.poll() is None and rng.random() < 0.7:
            os.killpg(proc.pid, signal.SIGKILL)
    out = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        out.append((proc.returncode, stderr.decode()))
    return out


def servo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servo.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("seed", range(CASES))
def test_random_pipelines_under_two_engines_and_sigkill_end_as_their_tasks_say(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    tasks = write_pipeline(rng, tmp_path / "p.py")
    home = tmp_path / "home"
    command = [sys.executable, "-m", "servo.cli", "run", str(tmp_path / "p.py"), "--home", str(home), "--json",
               "--run-key", "fuzz", "--workers", rng.choice(["1", "2", "4"])]
    for _ in range(rng.choice([1, 2])):
        for returncode, stderr in start_together_and_kill(rng, [command, command], rng.uniform(0.2, 1.2)):
            assert returncode in (0, 1, -signal.SIGKILL), stderr
            assert "Traceback" not in stderr, stderr

    final = servo(*command[3:])
    assert "Traceback" not in final.stderr, final.stderr
    body = json.loads(final.stdout)
    want = expected_states(tasks)
    assert {t["task_key"]: t["state"] for t in body["tasks"]} == want
    for row in body["tasks"]:
        if row["state"] == "SUCCEEDED":
            assert row["attempt"] == tasks[row["task_key"]]["fails"] + 1, row
    succeeded = all(state == "SUCCEEDED" for state in want.values())
    assert (final.returncode == 0) == succeeded
    assert body["run"]["state"] == ("SUCCEEDED" if succeeded else "FAILED")

    exported = servo("ledger", "export", "--home", str(home))
    lines = exported.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    shuffled = lines * 2
    rng.shuffle(shuffled)
    (tmp_path / "events.jsonl").write_text("\n".join(shuffled) + "\n")
    tables = json.loads(servo("fold", str(tmp_path / "events.jsonl"), "--json").stdout)
    assert tables["tasks"] == body["tasks"]
    assert len(tables["runs"]) == 1
    rejected = {r["event_id"] for r in tables["rejected_events"]}
    accepted = [e for e in events if e["event_id"] not in rejected]
    dispatches = Counter(e["data"]["dispatch_id"] for e in accepted if e["event_type"] == "DispatchRequested")
    assert set(dispatches.values()) <= {1}
    successes = Counter(
        e["data"]["task_key"] for e in accepted
        if e["event_type"] == "TaskFinished" and e["data"]["outcome"] == "SUCCEEDED"
    )
    assert successes == Counter({k: 1 for k, state in want.items() if state == "SUCCEEDED"})
    shown = json.loads(servo("runs", "show", body["run"]["run_id"], "--home", str(home), "--json").stdout)
    assert shown["tasks"] == body["tasks"]


@pytest.mark.parametrize("seed", range(max(1, CASES // 3)))
def test_two_pipelines_sharing_a_home_under_sigkill_each_run_only_their_own_code(tmp_path: Path, seed: int) -> None:
    """Two random pipelines, both declaring tasks t0..tN, started together on one home
    (as `./.servo` is shared by every pipeline run from a directory), SIGKILLed at
    random, then each run to the end: each ends as its own tasks say, and every attempt
    ran the code of its own pipeline (each task records which pipeline's code ran it)."""
    rng = random.Random(10_000 + seed)
    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    specs: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("pa", "pb"):
        path = tmp_path / f"{name}.py"
        specs[name] = write_pipeline(rng, path)
        text = path.read_text().replace("Pipeline('fuzz')", f"Pipeline('{name}')")
        # Each attempt leaves a mark naming its pipeline, its run and its task.
        text = text.replace(
            "import time\n", f"import pathlib\nimport time\nMARKS = pathlib.Path({str(marks)!r})\n", 1
        ).replace(
            "    if ctx.attempt <=",
            f"    (MARKS / ('{name}.' + ctx.run_id + '.' + ctx.task_key + '.' + str(ctx.attempt))).touch()\n"
            "    if ctx.attempt <=",
        )
        path.write_text(text)
    commands = {
        name: [sys.executable, "-m", "servo.cli", "run", str(tmp_path / f"{name}.py"), "--home", str(home), "--json",
               "--run-key", name]
        for name in specs
    }
    for _, stderr in start_together_and_kill(rng, list(commands.values()), rng.uniform(0.3, 1.5)):
        assert "Traceback" not in stderr and "not declared in pipeline" not in stderr, stderr
    run_ids: dict[str, str] = {}
    for name, tasks in specs.items():
        final = servo(*commands[name][3:])
        assert "Traceback" not in final.stderr, final.stderr
        body = json.loads(final.stdout)
        assert {t["task_key"]: t["state"] for t in body["tasks"]} == expected_states(tasks), name
        run_ids[name] = body["run"]["run_id"]
    for mark in marks.iterdir():
        pipeline, run_id = mark.name.split(".")[:2]
        assert run_ids[pipeline] == run_id, mark.name  # never another pipeline's run


@pytest.mark.parametrize("seed", range(max(1, CASES // 3)))
def test_random_damage_to_derived_files_between_kills_never_stops_a_run(tmp_path: Path, seed: int) -> None:
    """A random pipeline is SIGKILLed at random and, while it is down, one derived file
    of its home is damaged at random (ADR 022); a last `servo run` still ends the run
    as its tasks say, with each success accepted once, and no command prints a
    traceback. Damage to the queue can lose an attempt that was running, so then
    only the run's end and its audit trail are checked, not each task's state."""
    rng = random.Random(20_000 + seed)
    tasks = write_pipeline(rng, tmp_path / "p.py")
    # Longer than a killed engine's lease (5 s), so a running attempt is leased again
    # before its heartbeat check; short enough that one lost with the queue is found.
    text = (tmp_path / "p.py").read_text().replace("@pipeline.task(", "@pipeline.task(heartbeat_timeout_sec=8, ")
    (tmp_path / "p.py").write_text(text)
    home = tmp_path / "home"
    command = [sys.executable, "-m", "servo.cli", "run", str(tmp_path / "p.py"), "--home", str(home), "--json",
               "--run-key", "fuzz", "--workers", rng.choice(["1", "2", "4"])]
    damaged = []
    for _ in range(rng.choice([1, 2])):
        for returncode, stderr in start_together_and_kill(rng, [command], rng.uniform(0.2, 1.2)):
            assert returncode in (0, 1, -signal.SIGKILL), stderr
            assert "Traceback" not in stderr, stderr
        if Home.holds_store(home):  # (killed before it made its home: nothing to damage)
            damaged.append(rng.choice(sorted(DAMAGE)))
            DAMAGE[damaged[-1]](Home.open(home, create=False))

    final = servo(*command[3:])
    assert "Traceback" not in final.stderr, (damaged, final.stderr)
    body = json.loads(final.stdout)
    assert body["run"]["state"] in ("SUCCEEDED", "FAILED"), damaged
    if not QUEUE_DAMAGE.intersection(damaged):
        assert {t["task_key"]: t["state"] for t in body["tasks"]} == expected_states(tasks), damaged
    exported = servo("ledger", "export", "--home", str(home))
    assert exported.returncode == 0 and "Traceback" not in exported.stderr, exported.stderr
    (tmp_path / "events.jsonl").write_text(exported.stdout)
    tables = json.loads(servo("fold", str(tmp_path / "events.jsonl"), "--json").stdout)
    assert tables["tasks"] == body["tasks"], damaged
    rejected = {r["event_id"] for r in tables["rejected_events"]}
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    successes = Counter(
        e["data"]["task_key"] for e in events
        if e["event_id"] not in rejected and e["event_type"] == "TaskFinished" and e["data"]["outcome"] == "SUCCEEDED"
    )
    assert successes == Counter({t["task_key"]: 1 for t in body["tasks"] if t["state"] == "SUCCEEDED"}), damaged
