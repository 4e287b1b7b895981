"""`servo runs list|show|cancel` against an embedded home."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from servo.cli import app
from servo.compactor import Compactor
from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.events import Catalog
from servo.engine import Home
from servo.spec import Spec
from servo.storage import Ledger

runner = CliRunner()
LEDGER = Path(__file__).parents[1] / "data" / "nightly_ledger.jsonl"


def seeded_home(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> Path:
    home = Home.open(tmp_path / ".servo")
    compactor = Compactor(home.store, spec, rules)
    ledger = Ledger(home.store, on_append=compactor.notify)
    compactor.start()
    lines = LEDGER.read_bytes().splitlines()
    ledger.append_many([(json.loads(x)["event_id"], x) for x in lines])
    later = datetime(2026, 2, 1, tzinfo=UTC)  # ids after the example ledger's
    b = EventBuilder(catalog, tenant_id=home.tenant, workspace_id=home.workspace, now=later)
    open_run = [b.run_triggered("run_open"), b.plan_created("run_open", [TaskDef("a"), TaskDef("b", ["a"])])]
    ledger.append_many([(e.event_id, e.to_json().encode()) for e in open_run])
    compactor.compact()
    return home.root


def test_list_and_show_read_the_published_projection(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    listed = runner.invoke(app, ["runs", "list", "--home", str(home), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(r["run_id"], r["state"]) for r in json.loads(listed.stdout)] == [  # newest first, as in the table
        ("run_open", "RUNNING"),
        ("run_nightly", "FAILED"),
    ]
    shown = runner.invoke(app, ["runs", "show", "run_nightly", "--home", str(home), "--json"])
    body = json.loads(shown.stdout)
    assert {t["task_key"]: t["state"] for t in body["tasks"]}["notify"] == "SKIPPED"
    human = runner.invoke(app, ["runs", "show", "run_nightly", "--home", str(home)])
    assert "FAILED" in human.stdout


def test_list_filters_by_state_and_keeps_the_newest_n(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    home = str(seeded_home(tmp_path, spec, rules, catalog))

    def listed(*options: str) -> list[str]:
        result = runner.invoke(app, ["runs", "list", "--home", home, "--json", *options])
        assert result.exit_code == 0, result.output
        return [r["run_id"] for r in json.loads(result.stdout)]

    assert listed("--state", "failed") == ["run_nightly"]
    assert listed("--state", "RUNNING", "--state", "FAILED") == ["run_open", "run_nightly"]
    assert listed("--state", "SUCCEEDED") == []
    assert listed("--limit", "1") == ["run_open"]  # the newest
    assert listed("--state", "FAILED", "--limit", "5") == ["run_nightly"]
    for bad, says in ((["--state", "DONE"], "--state must be one of"), (["--limit", "0"], "--limit must be at least 1")):
        result = runner.invoke(app, ["runs", "list", "--home", home, *bad])
        assert result.exit_code == 2 and says in result.output, result.output
        assert "Traceback" not in result.output


def test_the_cli_knows_the_same_run_states_as_the_controllers() -> None:
    from servo.cli import _runs
    from servo.core.controllers import RUN_STATES, TERMINAL_RUN_STATES

    assert _runs.RUN_STATES == RUN_STATES and _runs.TERMINAL_RUN_STATES == TERMINAL_RUN_STATES


def test_cancel_cancels_every_open_task(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    result = runner.invoke(app, ["runs", "cancel", "run_open", "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "CANCELLED"
    shown = json.loads(runner.invoke(app, ["runs", "show", "run_open", "--home", str(home), "--json"]).stdout)
    assert {t["state"] for t in shown["tasks"]} == {"CANCELLED"}
    again = runner.invoke(app, ["runs", "cancel", "run_open", "--home", str(home)])
    assert again.exit_code == 1 and "already ended CANCELLED" in again.output


def test_unknown_home_and_run_are_clear_errors(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    missing = runner.invoke(app, ["runs", "list", "--home", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no Servo home here" in missing.output
    home = seeded_home(tmp_path, spec, rules, catalog)
    ghost = runner.invoke(app, ["runs", "show", "run_ghost", "--home", str(home)])
    assert ghost.exit_code == 1 and "no run 'run_ghost'" in ghost.output


def test_cancel_hands_a_running_engine_the_event_instead_of_fencing_it(tmp_path: Path) -> None:
    """With `servo run` driving the home, `runs cancel` appends RunCancelRequested and
    posts it to the engine's notify spool; the engine folds it and ends the run
    CANCELLED. No second compactor starts, so the engine keeps its epoch (starting one
    used to fence the running engine until it took the epoch back)."""
    import threading
    import time

    from servo.api import Pipeline, TaskContext
    from servo.compactor import ProjectionReader, StateView
    from servo.core.rules import default_spec
    from servo.engine import EmbeddedEngine, RunOutcome

    home = Home.open(tmp_path / ".servo")
    pipeline = Pipeline("cancel_me")
    started = threading.Event()

    @pipeline.task()
    def slow(ctx: TaskContext) -> None:
        started.set()
        time.sleep(1.0)

    @pipeline.task(depends_on=["slow"])
    def after() -> None:
        raise AssertionError("a cancelled run must not start downstream tasks")

    engine = EmbeddedEngine(home, pipeline, poll_seconds=0.01)
    outcome: list[RunOutcome] = []
    driver = threading.Thread(target=lambda: outcome.append(engine.run(timeout=60)))
    driver.start()
    assert started.wait(30)
    run_id = ProjectionReader(StateView(home.store), default_spec()).read().tables["runs"][0]["run_id"]

    result = runner.invoke(app, ["runs", "cancel", run_id, "--home", str(home.root), "--json"])

    driver.join(60)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "CANCELLED"
    assert outcome and outcome[0].state == "CANCELLED"
    assert home.store.get("compactor/epoch").data == b"1"  # nobody took the engine's epoch
    assert engine.leading


def test_cancel_without_a_running_engine_folds_the_event_itself(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    result = runner.invoke(app, ["runs", "cancel", "run_open", "--home", str(home), "--json", "--wait", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "CANCELLED"


def test_cancel_without_an_engine_first_folds_what_serve_appended(
    tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    """With no engine running, `servo serve` may still have appended worker facts
    (posted to the notify spool, not folded yet). The cancel's own fold must take them
    in first: a task that finished before the cancel stays SUCCEEDED, as `servo fold`
    of the ledger says, instead of being published CANCELLED."""
    from servo.engine._notify import NotifySpool

    home = seeded_home(tmp_path, spec, rules, catalog)
    h = Home.open(home, create=False)
    b = EventBuilder(catalog, tenant_id=h.tenant, workspace_id=h.workspace, now=datetime(2026, 2, 2, tzinfo=UTC))
    served = [
        b.dispatch_requested("run_open", "a", 1, "A1"),
        b.started("run_open", "a", 1, "A1"),
        b.finished("run_open", "a", 1, "A1"),
    ]
    ledger = Ledger(h.store, on_append=NotifySpool.for_home(h).post)  # as `servo serve` appends
    ledger.append_many([(e.event_id, e.to_json().encode()) for e in served])
    result = runner.invoke(app, ["runs", "cancel", "run_open", "--home", str(home), "--json", "--wait", "0"])
    assert result.exit_code == 0, result.output
    shown = json.loads(runner.invoke(app, ["runs", "show", "run_open", "--home", str(home), "--json"]).stdout)
    assert {t["task_key"]: t["state"] for t in shown["tasks"]} == {"a": "SUCCEEDED", "b": "CANCELLED"}
    assert shown["run"]["state"] == "CANCELLED" and shown["run"]["tasks_succeeded"] == 1


def test_the_run_table_shows_whole_run_ids_and_a_unique_prefix_names_a_run(
    tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    listed = runner.invoke(app, ["runs", "list", "--home", str(home)], env={"COLUMNS": "60"})
    assert listed.exit_code == 0, listed.output
    assert "run_nightly" in listed.stdout and "run_open" in listed.stdout  # never cut off
    by_prefix = runner.invoke(app, ["runs", "show", "run_ni", "--home", str(home), "--json"])
    assert by_prefix.exit_code == 0, by_prefix.output
    assert json.loads(by_prefix.stdout)["run"]["run_id"] == "run_nightly"
    ambiguous = runner.invoke(app, ["runs", "show", "run_", "--home", str(home)])
    assert ambiguous.exit_code == 1
    assert "matches 2 runs" in ambiguous.output and "run_nightly" in ambiguous.output
    unknown = runner.invoke(app, ["runs", "cancel", "run_zzz", "--home", str(home)])
    assert unknown.exit_code == 1 and "no run 'run_zzz'" in unknown.output


def test_runs_commands_on_a_directory_that_is_no_home_say_so_and_write_nothing(tmp_path: Path) -> None:
    """A mistyped --home (the project directory, say) is not a home: `runs list|show|
    cancel` say so (exit 2), as `ledger export` does, and leave no `store/` behind."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("x")
    for command in (["list"], ["show", "run_x"], ["cancel", "run_x"]):
        result = runner.invoke(app, ["runs", *command, "--home", str(project), "--json"])
        assert result.exit_code == 2, (command, result.output)
        assert "no Servo home here" in result.output and "Traceback" not in result.output
        assert sorted(p.name for p in project.iterdir()) == ["notes.txt"], command
