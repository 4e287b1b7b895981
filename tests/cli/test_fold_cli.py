"""`servo fold` as a black box: the auditor's replay of a ledger export."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from servo.cli import app
from servo.spec import Spec
from servo.tables import read_parquet

DATA = Path(__file__).parents[1] / "data"
LEDGER = DATA / "nightly_ledger.jsonl"
runner = CliRunner()


def fold_json(path: Path) -> str:
    result = runner.invoke(app, ["fold", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_fold_reproduces_the_expected_tables_of_a_hand_checked_ledger() -> None:
    out = fold_json(LEDGER)
    assert out == (DATA / "nightly_ledger.expected.json").read_text()
    tables = json.loads(out)
    states = {t["task_key"]: (t["state"], t["attempt"]) for t in tables["tasks"]}
    assert states == {
        "extract": ("SUCCEEDED", 1),
        "transform": ("SUCCEEDED", 2),
        "load": ("SUCCEEDED", 1),
        "report": ("FAILED", 1),
        "notify": ("SKIPPED", 0),
    }
    assert tables["runs"][0]["state"] == "FAILED"
    assert [r["reason"] for r in tables["rejected_events"]] == ["STALE_ATTEMPT"]
    assert list(tables) == ["tasks", "runs", "dep_satisfaction", "dispatch_outbox", "timers", "rejected_events"]


def test_shuffled_and_duplicated_ledger_gives_byte_identical_json(tmp_path: Path) -> None:
    lines = LEDGER.read_text().splitlines()
    rng = random.Random(2026)
    for trial in range(5):
        mixed = lines + rng.sample(lines, k=len(lines) // 2)
        rng.shuffle(mixed)
        copy = tmp_path / f"shuffled_{trial}.jsonl"
        copy.write_text("\n".join(mixed) + "\n")
        assert fold_json(copy) == fold_json(LEDGER)


def test_invalid_lines_are_reported_and_the_fold_does_not_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(LEDGER.read_text() + "{oops\n[1,2]\n" + '{"event_id": "X1", "event_type": "TaskStarted"}\n')
    tables = json.loads(fold_json(bad))
    reasons = sorted(r["reason"] for r in tables["rejected_events"])
    assert reasons == ["INVALID", "INVALID", "INVALID", "STALE_ATTEMPT"]
    assert tables["runs"][0]["state"] == "FAILED"


def test_junk_lines_are_rejected_the_same_in_any_line_order(tmp_path: Path) -> None:
    """A `null` line was skipped like a blank one when the ledger was out of order, and
    rejected when it was in order: the output depended on line order (INV-1)."""
    lines = [*LEDGER.read_text().splitlines(), "null", "true", "0", '""', "{}", "[1]", "{oops"]
    rng = random.Random(7)
    outputs = set()
    for trial in range(4):
        mixed = list(lines)
        if trial:
            rng.shuffle(mixed)
        copy = tmp_path / f"junk_{trial}.jsonl"
        copy.write_text("\n".join(mixed) + "\n")
        outputs.add(fold_json(copy))
    assert len(outputs) == 1
    invalid = [r for r in json.loads(outputs.pop())["rejected_events"] if r["reason"] == "INVALID"]
    assert len(invalid) == 7


def test_copies_of_one_event_with_labels_in_another_key_order_fold_alike(tmp_path: Path) -> None:
    """Two copies of one event are one event: the labels a run row shows may not depend
    on which copy came first (keys are sorted)."""
    lines = LEDGER.read_text().splitlines()
    envelope = json.loads(next(line for line in lines if '"RunTriggered"' in line))
    envelope["data"]["labels"] = {"team": "x", "a": "b"}
    first = json.dumps(envelope)
    envelope["data"]["labels"] = {"a": "b", "team": "x"}
    second = json.dumps(envelope)
    rest = [line for line in lines if '"RunTriggered"' not in line]
    one, other = tmp_path / "one.jsonl", tmp_path / "other.jsonl"
    one.write_text("\n".join([first, second, *rest]) + "\n")
    other.write_text("\n".join([second, first, *rest]) + "\n")
    assert fold_json(one) == fold_json(other)
    assert list(json.loads(fold_json(one))["runs"][0]["labels"]) == ["a", "team"]


def test_strict_exits_one_when_something_was_rejected() -> None:
    result = runner.invoke(app, ["fold", str(LEDGER), "--json", "--strict"])
    assert result.exit_code == 1


def test_missing_file_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "servo.cli", "fold", str(tmp_path / "nope.jsonl"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_out_writes_parquet_with_the_spec_schemas(tmp_path: Path, spec: Spec) -> None:
    result = runner.invoke(app, ["fold", str(LEDGER), "--out", str(tmp_path / "tables")])
    assert result.exit_code == 0, result.output
    expected = json.loads(fold_json(LEDGER))
    for name, rows in expected.items():
        path = tmp_path / "tables" / f"{name}.parquet"
        import pyarrow.parquet as pq

        assert pq.read_schema(path).names == list(spec.tables[name].column_names)
        assert read_parquet(path, spec.tables[name]) == rows


def test_parquet_output_is_byte_identical_for_the_same_events(tmp_path: Path) -> None:
    """P3: the same events give byte-identical Parquet, whatever their order."""
    shuffled = tmp_path / "s.jsonl"
    lines = LEDGER.read_text().splitlines()
    random.Random(1).shuffle(lines)
    shuffled.write_text("\n".join(lines) + "\n")
    for source, target in ((LEDGER, "a"), (shuffled, "b")):
        assert runner.invoke(app, ["fold", str(source), "--out", str(tmp_path / target)]).exit_code == 0
    for path in sorted((tmp_path / "a").glob("*.parquet")):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_summary_names_the_run_outcome_without_flags() -> None:
    result = runner.invoke(app, ["fold", str(LEDGER)])
    assert result.exit_code == 0
    assert "run run_nightly: FAILED" in result.stdout


def test_a_directory_without_event_files_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an event")
    result = runner.invoke(app, ["fold", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.output and "*.json" in result.output


def test_a_directory_of_event_files_folds_like_the_export(tmp_path: Path) -> None:
    """A ledger directory as it lies on disk (`ledger/orchestration/{day}/{event_id}.json`,
    one envelope per file, SPEC §3/§6) folds to the same tables as its JSONL export,
    whatever the nesting; a pretty-printed file is still one envelope, a broken one is
    INVALID."""
    root = tmp_path / "ledger"
    for i, line in enumerate(LEDGER.read_text().splitlines()):
        event = json.loads(line)
        day = root / "orchestration" / f"day{i % 3}"
        day.mkdir(parents=True, exist_ok=True)
        text = json.dumps(event, indent=2) if i % 2 else line
        (day / f"{event['event_id']}.json").write_text(text)
    assert fold_json(root) == fold_json(LEDGER)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "000000000001.json").write_text('{"seq": 1}')  # not an event
    assert fold_json(tmp_path) == fold_json(LEDGER)  # a workspace directory: its ledger/ only
    (root / "orchestration" / "day0" / "BROKEN.json").write_text("{oops")
    tables = json.loads(fold_json(root))
    assert sorted(r["reason"] for r in tables["rejected_events"]) == ["INVALID", "STALE_ATTEMPT"]


def test_a_utf8_byte_order_mark_and_crlf_line_ends_change_nothing(tmp_path: Path) -> None:
    """An export saved by an editor that adds a BOM and CRLF is the same ledger."""
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + LEDGER.read_bytes().replace(b"\n", b"\r\n"))
    assert fold_json(marked) == fold_json(LEDGER)
    lines = LEDGER.read_bytes().splitlines()
    unsorted = tmp_path / "bom_unsorted.jsonl"  # the two-pass path too
    unsorted.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(reversed(lines)) + b"\r\n")
    assert fold_json(unsorted) == fold_json(LEDGER)
