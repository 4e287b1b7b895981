"""`servo spec check|generate|docs`: one-line results, exit codes, JSON, drift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servo.cli import _spec
from servo.codegen import DOCS_DIR, REFERENCE_DIR
from servo.spec import default_spec_dir, project_root

ROOT = project_root()
runner = CliRunner()


@pytest.fixture(autouse=True)
def _without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the tables' structure only: rule names are the rule modules' business."""
    monkeypatch.setattr(_spec, "_rule_names", lambda: None)


def copy_spec(tmp_path: Path) -> Path:
    copy = tmp_path / "spec"
    shutil.copytree(default_spec_dir(), copy)
    return copy


def edit_first_guarded_row(spec_dir: Path) -> None:
    path = spec_dir / "machines" / "task.toml"
    text, count = re.subn(
        r"^guards = \[", 'guards = ["added_by_the_test", ', path.read_text(), count=1, flags=re.M
    )
    assert count == 1
    path.write_text(text)


def test_check_passes_on_the_checkout() -> None:
    result = runner.invoke(_spec.spec_app, ["check"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"spec OK: \d+ machines, \d+ rows, .*; generated files up to date\n", result.stdout
    )


def test_check_fails_on_drift_and_says_to_regenerate(tmp_path: Path) -> None:
    assert ROOT is not None
    spec_dir = copy_spec(tmp_path)
    edit_first_guarded_row(spec_dir)
    result = runner.invoke(
        _spec.spec_app, ["check", "--spec-dir", str(spec_dir), "--root", str(ROOT)]
    )
    assert result.exit_code == 1
    assert "`servo spec generate`" in result.stderr
    assert f"{REFERENCE_DIR}/task.py: changed" in result.stderr
    assert f"{DOCS_DIR}/task.md: changed" in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_check_json_reports_drift(tmp_path: Path) -> None:
    assert ROOT is not None
    spec_dir = copy_spec(tmp_path)
    edit_first_guarded_row(spec_dir)
    args = ["check", "--json", "--spec-dir", str(spec_dir), "--root", str(ROOT)]
    result = runner.invoke(_spec.spec_app, args)
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert "servo spec generate" in payload["error"]
    assert sorted(p.split(":")[0] for p in payload["drift"]) == [
        f"{DOCS_DIR}/task.md",
        f"{REFERENCE_DIR}/task.py",
    ]


def test_a_bad_table_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    spec_dir = copy_spec(tmp_path)
    path = spec_dir / "machines" / "task.toml"
    path.write_text(path.read_text().replace('to = "BLOCKED"', 'to = "NOWHERE"', 1))
    result = runner.invoke(_spec.spec_app, ["check", "--spec-dir", str(spec_dir)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: spec/machines/task.toml: transitions[")
    assert "unknown state 'NOWHERE'" in result.stderr
    assert "Traceback" not in result.output


def test_generate_writes_both_trees_then_finds_nothing_to_do(tmp_path: Path) -> None:
    spec_dir = copy_spec(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")  # makes tmp_path the project root
    assert ROOT is not None
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the tests the invariants name
    first = runner.invoke(_spec.spec_app, ["generate", "--spec-dir", str(spec_dir)])
    assert first.exit_code == 0, first.output
    assert f"  {REFERENCE_DIR}/task.py\n" in first.stdout
    assert f"  {DOCS_DIR}/index.md\n" in first.stdout
    again = runner.invoke(_spec.spec_app, ["generate", "--json", "--spec-dir", str(spec_dir)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changed"] == []
    check = runner.invoke(_spec.spec_app, ["check", "--spec-dir", str(spec_dir)])
    assert check.exit_code == 0, check.output


def test_docs_writes_only_the_docs(tmp_path: Path) -> None:
    spec_dir = copy_spec(tmp_path)
    result = runner.invoke(
        _spec.spec_app, ["docs", "--json", "--spec-dir", str(spec_dir), "--root", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    changed = json.loads(result.stdout)["changed"]
    assert changed and all(path.startswith(f"{DOCS_DIR}/") for path in changed)
    assert not (tmp_path / REFERENCE_DIR).exists()


def test_generate_without_a_checkout_asks_for_root(tmp_path: Path) -> None:
    spec_dir = copy_spec(tmp_path)  # tmp_path has no pyproject.toml
    result = runner.invoke(_spec.spec_app, ["generate", "--spec-dir", str(spec_dir)])
    assert result.exit_code == 1
    assert result.stderr == "error: no project checkout to write into; pass --root\n"


def test_an_unloadable_registry_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise _spec._Failure("cannot load the rule registry: No module named 'x'")

    monkeypatch.setattr(_spec, "_rule_names", broken)
    result = runner.invoke(_spec.spec_app, ["check"])
    assert result.exit_code == 1
    assert result.stderr == "error: cannot load the rule registry: No module named 'x'\n"


def test_servo_spec_check_passes_from_the_repo_root() -> None:
    """The real command, with the real registry, as CI runs it."""
    assert ROOT is not None
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "servo.cli", "spec", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("spec OK: ")
