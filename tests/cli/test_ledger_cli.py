"""An auditor's path from a home to `servo fold`: `servo ledger export` and `servo fold HOME`.

Ledger objects in a `LocalStore` carry a store header, so the files under `store/`
are not a ledger export; these commands are how a home's ledger is replayed."""

from __future__ import annotations

import json
import random
from pathlib import Path

from test_runs_cli import seeded_home
from typer.testing import CliRunner

from servo.cli import app
from servo.core._registry import Registry
from servo.core.events import Catalog
from servo.spec import Spec

runner = CliRunner()
LEDGER = Path(__file__).parents[1] / "data" / "nightly_ledger.jsonl"


def test_export_writes_every_event_once_as_jsonl_in_event_id_order(
    tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    result = runner.invoke(app, ["ledger", "export", "--home", str(home)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    ids = [e["event_id"] for e in events]
    expected = {json.loads(x)["event_id"] for x in LEDGER.read_text().splitlines()}
    assert expected < set(ids) and len(ids) == len(set(ids)) == len(expected) + 2  # + the open run's two
    assert ids == sorted(ids)


def test_export_to_a_file_and_fold_of_the_home_agree_with_runs_show(
    tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    out = tmp_path / "events.jsonl"
    exported = runner.invoke(app, ["ledger", "export", "--home", str(home), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "exported" in exported.output and str(out) in exported.output
    lines = out.read_text().splitlines()
    random.Random(3).shuffle(lines)  # any order, duplicates allowed
    (tmp_path / "shuffled.jsonl").write_text("\n".join(lines + lines[:5]) + "\n")

    from_file = runner.invoke(app, ["fold", str(tmp_path / "shuffled.jsonl"), "--json"])
    from_home = runner.invoke(app, ["fold", str(home), "--json"])
    assert from_file.exit_code == from_home.exit_code == 0, from_home.output
    assert from_file.stdout == from_home.stdout
    shown = json.loads(runner.invoke(app, ["runs", "show", "run_nightly", "--home", str(home), "--json"]).stdout)
    folded = json.loads(from_home.stdout)
    assert [t for t in folded["tasks"] if t["run_id"] == "run_nightly"] == shown["tasks"]


def test_export_and_fold_name_a_directory_that_is_not_a_home(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["ledger", "export", "--home", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no Servo home here" in missing.output
    plain = tmp_path / "plain"
    plain.mkdir()
    folded = runner.invoke(app, ["fold", str(plain)])
    assert folded.exit_code == 2
    assert "is a directory, not a ledger export or a Servo home" in folded.output
    assert "Traceback" not in folded.output


def test_export_to_a_directory_says_it_wants_a_file(tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    into_dir = runner.invoke(app, ["ledger", "export", "--home", str(home), "--out", str(tmp_path)])
    assert into_dir.exit_code == 2
    assert "is a directory; --out takes a file path" in into_dir.output
    assert not list(tmp_path.glob("*.part"))


def test_export_and_fold_of_a_home_skip_and_name_files_that_are_not_events(
    tmp_path: Path, spec: Spec, rules: Registry, catalog: Catalog
) -> None:
    home = seeded_home(tmp_path, spec, rules, catalog)
    before = runner.invoke(app, ["fold", str(home), "--json"]).stdout
    day = next((home / "store").rglob("ledger/orchestration/*/*.json")).parent
    (day / "notes.json").write_text('{"copied": "by hand"}')
    exported = runner.invoke(app, ["ledger", "export", "--home", str(home)])
    folded = runner.invoke(app, ["fold", str(home), "--json"])
    assert exported.exit_code == folded.exit_code == 0, exported.output
    assert "notes.json" in exported.stderr and "notes.json" in folded.stderr
    assert "copied" not in exported.stdout
    assert folded.stdout == before
