"""The spec loader rejects every malformed table with one line naming file and key.

A fixture writes a small valid spec (two machines, a catalog with a record type, a
table, an invariant and a fake project whose test it names); each test breaks one
thing and checks the `SpecError` that comes back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from servo._errors import SpecError
from servo.spec import RuleNames, Spec, load_spec

PROJECT = Path(__file__).resolve().parents[2]

NAMES = RuleNames(
    guards=frozenset({"succeeded", "on_time"}),
    effects=frozenset({"mark_started", "record_failure"}),
    locators=frozenset({"job_of_event", "alarm_of_event"}),
)

JOB = """\
[machine]
name = "job"
table = "jobs"
initial = "NEW"
created_by = ["JobSubmitted"]
locator = "job_of_event"
description = "A job: started once, then finished one way or the other."

[[states]]
name = "NEW"
rank = 0

[[states]]
name = "RUNNING"
rank = 1

[[states]]
name = "DONE"
rank = 10
terminal = true

[[states]]
name = "FAILED"
rank = 11
terminal = true

[[transitions]]
from = "NEW"
event = "JobStarted"
to = "RUNNING"
effects = ["mark_started"]

[[transitions]]
from = "RUNNING"
event = "JobFinished"
guards = ["succeeded"]
to = "DONE"

[[transitions]]
from = "RUNNING"
event = "JobFinished"
to = "FAILED"
effects = ["record_failure"]
"""

ALARM = """\
[machine]
name = "alarm"
table = "alarms"
initial = "ARMED"
created_by = ["JobStarted"]
locator = "alarm_of_event"

[[states]]
name = "ARMED"
rank = 0

[[states]]
name = "FIRED"
rank = 10
terminal = true

[[states]]
name = "DISARMED"
rank = 11
terminal = true

[[transitions]]
from = "ARMED"
event = "AlarmFired"
to = "FIRED"

[[transitions]]
from = "ARMED"
event = "JobFinished"
to = "DISARMED"
"""

EVENTS = """\
[records.Outcome]
status = "enum(OK,ERROR)"
message = "str?"

[events.JobSubmitted]
category = "command"
layer = 1
machine = "job"
idempotency_key = "submit:{job_id}"
[events.JobSubmitted.fields]
job_id = "str"
labels = "map<str>"

[events.JobStarted]
category = "worker_fact"
layer = 1
machine = "job"
also = ["alarm"]
idempotency_key = "start:{job_id}:{attempt}"
[events.JobStarted.fields]
job_id = "str"
attempt = "int"

[events.JobFinished]
category = "worker_fact"
layer = 1
machine = "job"
also = ["alarm"]
idempotency_key = "finish:{job_id}:{outcome.status}"
[events.JobFinished.fields]
job_id = "str"
outcome = "Outcome"

[events.AlarmFired]
category = "trigger"
layer = 1
machine = "alarm"
idempotency_key = "alarm:{alarm_id}"
[events.AlarmFired.fields]
alarm_id = "str"
"""

TABLES = """\
[tables.jobs]
layer = 1
primary_key = ["job_id"]
description = "One row per job."

[[tables.jobs.columns]]
name = "job_id"
type = "string"

[[tables.jobs.columns]]
name = "state"
type = "enum"
enum = ["NEW", "RUNNING", "DONE", "FAILED"]

[[tables.jobs.columns]]
name = "message"
type = "string"
nullable = true
"""

INVARIANTS = """\
[[invariants]]
id = "J1"
title = "Jobs end"
statement = "Every started job reaches DONE or FAILED."
tests = ["tests/test_x.py::test_real"]
model_checks = []
machines = ["job"]
"""


@dataclass
class SpecTree:
    """A synthetic project: `project/spec/` plus `project/tests/test_x.py`."""

    project: Path

    @property
    def root(self) -> Path:
        return self.project / "spec"

    def write(self, rel: str, text: str) -> None:
        (self.root / rel).write_text(text, encoding="utf-8")

    def edit(self, rel: str, old: str, new: str) -> None:
        """Replace the one occurrence of `old` in `spec/{rel}`."""
        text = (self.root / rel).read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} is not unique in {rel}"
        self.write(rel, text.replace(old, new))

    def edit_block(self, rel: str, header: str, index: int, old: str, new: str) -> None:
        """Replace `old` inside the `index`-th `header` block (e.g. `[[transitions]]`)."""
        text = (self.root / rel).read_text(encoding="utf-8")
        head, *blocks = text.split(header)
        assert blocks[index].count(old) == 1, f"{old!r} not in {header}[{index}] of {rel}"
        blocks[index] = blocks[index].replace(old, new)
        self.write(rel, header.join([head, *blocks]))

    def append(self, rel: str, text: str) -> None:
        path = self.root / rel
        self.write(rel, path.read_text(encoding="utf-8") + "\n" + text)

    def load(self, names: RuleNames | None = NAMES) -> Spec:
        return load_spec(self.root, names, project_root=self.project)

    def rejected(self, *fragments: str, names: RuleNames | None = NAMES) -> str:
        """Load, expect a one-line SpecError containing every fragment; return it."""
        with pytest.raises(SpecError) as info:
            self.load(names)
        message = str(info.value)
        assert "\n" not in message, message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return message


@pytest.fixture
def tree(tmp_path: Path) -> SpecTree:
    """A valid synthetic spec and project, checked to load before any test breaks it."""
    project = tmp_path / "project"
    (project / "spec" / "machines").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "tests" / "test_x.py").write_text("def test_real(): ...\n", encoding="utf-8")
    tree = SpecTree(project)
    tree.write("machines/job.toml", JOB)
    tree.write("machines/alarm.toml", ALARM)
    tree.write("events.toml", EVENTS)
    tree.write("tables.toml", TABLES)
    tree.write("invariants.toml", INVARIANTS)
    tree.load()
    return tree


JOB_FILE = "spec/machines/job.toml"
EVENTS_FILE = "spec/events.toml"
TABLES_FILE = "spec/tables.toml"
INVARIANTS_FILE = "spec/invariants.toml"


# ---------------------------------------------------------------- the valid one --


def test_valid_synthetic_spec_loads(tree: SpecTree) -> None:
    """The fixture's spec loads into the records it declares."""
    spec = tree.load()
    assert set(spec.machines) == {"job", "alarm"}
    job = spec.machines["job"]
    assert job.initial == "NEW"
    assert job.terminal_states == {"DONE", "FAILED"}
    assert [r.label for r in job.rows("RUNNING", "JobFinished")] == [
        "RUNNING --JobFinished--> DONE",
        "RUNNING --JobFinished--> FAILED",
    ]
    assert job.source == JOB_FILE
    assert set(spec.events) == {"JobSubmitted", "JobStarted", "JobFinished", "AlarmFired"}
    assert spec.events["JobFinished"].also == ("alarm",)
    assert spec.records["Outcome"].fields[0].enum == ("OK", "ERROR")
    assert spec.tables["jobs"].primary_key == ("job_id",)
    assert [i.id for i in spec.invariants] == ["J1"]


def test_rule_names_are_only_checked_when_given(tree: SpecTree) -> None:
    """Without RuleNames, unregistered guard/effect/locator names are not checked."""
    tree.edit("machines/job.toml", '"succeeded"', '"not_registered"')
    tree.load(names=None)
    tree.rejected(JOB_FILE, "not_registered")


# ------------------------------------------------------------------- machines --


def test_unknown_state_in_from_is_rejected(tree: SpecTree) -> None:
    tree.edit_block("machines/job.toml", "[[transitions]]", 2, '"RUNNING"', '"RUNING"')
    tree.rejected(JOB_FILE, "transitions[2]", ".from", "unknown state 'RUNING'")


def test_unknown_state_in_to_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'to = "DONE"', 'to = "DNOE"')
    tree.rejected(JOB_FILE, "transitions[1]", ".to", "unknown state 'DNOE'")


def test_unknown_initial_state_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'initial = "NEW"', 'initial = "START"')
    tree.rejected(JOB_FILE, "machine.initial", "'START'")


def test_unreachable_state_is_rejected(tree: SpecTree) -> None:
    """A state no path from `initial` reaches is a dead declaration."""
    tree.append("machines/job.toml", '[[states]]\nname = "LOST"\nrank = 12\nterminal = true\n')
    tree.rejected(JOB_FILE, "states.LOST", "unreachable from initial state 'NEW'")


def test_unreachable_cycle_is_rejected(tree: SpecTree) -> None:
    """Non-terminal states that only lead to each other are unreachable too."""
    tree.append(
        "machines/job.toml",
        '[[states]]\nname = "LIMBO"\nrank = 2\n\n'
        '[[transitions]]\nfrom = "LIMBO"\nevent = "JobFinished"\nto = "FAILED"\n',
    )
    tree.rejected(JOB_FILE, "states.LIMBO", "unreachable")


def test_duplicate_row_is_rejected(tree: SpecTree) -> None:
    """A second row with the same from, event and guards could never match."""
    tree.append(
        "machines/job.toml",
        '[[transitions]]\nfrom = "RUNNING"\nevent = "JobFinished"\n'
        'guards = ["succeeded"]\nto = "FAILED"\n',
    )
    tree.rejected(JOB_FILE, "transitions[3]", "duplicate row", "transitions[1]")


def test_duplicate_row_with_guards_in_another_order_is_rejected(tree: SpecTree) -> None:
    """Guards are a conjunction: the same guards in another order are the same row."""
    tree.edit("machines/job.toml", 'guards = ["succeeded"]', 'guards = ["succeeded", "on_time"]')
    tree.append(
        "machines/job.toml",
        '[[transitions]]\nfrom = "RUNNING"\nevent = "JobFinished"\n'
        'guards = ["on_time", "succeeded"]\nto = "FAILED"\n',
    )
    tree.rejected(JOB_FILE, "transitions[3]", "duplicate row", "transitions[1]")


def test_row_event_missing_from_catalog_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'event = "JobStarted"', 'event = "JobStartd"')
    tree.rejected(JOB_FILE, "transitions[0]", ".event", "'JobStartd'", "events.toml")


def test_created_by_event_missing_from_catalog_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", '["JobSubmitted"]', '["JobSubmited"]')
    tree.rejected(JOB_FILE, "machine.created_by", "'JobSubmited'", "events.toml")


def test_unknown_guard_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'guards = ["succeeded"]', 'guards = ["succeded"]')
    tree.rejected(JOB_FILE, "transitions[1]", ".guards", "unknown guard 'succeded'")


def test_unknown_effect_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", '["record_failure"]', '["record_fail"]')
    tree.rejected(JOB_FILE, "transitions[2]", ".effects", "unknown effect 'record_fail'")


def test_unknown_locator_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", '"job_of_event"', '"job_for_event"')
    tree.rejected(JOB_FILE, "machine.locator", "unknown locator 'job_for_event'")


def test_terminal_state_with_outgoing_transition_is_rejected(tree: SpecTree) -> None:
    tree.append(
        "machines/job.toml",
        '[[transitions]]\nfrom = "DONE"\nevent = "JobStarted"\nto = "RUNNING"\n',
    )
    tree.rejected(JOB_FILE, "transitions[3]", "terminal state 'DONE'")


def test_non_terminal_state_without_outgoing_transition_is_rejected(tree: SpecTree) -> None:
    """A sink must be declared terminal."""
    tree.append(
        "machines/job.toml",
        '[[states]]\nname = "PAUSED"\nrank = 2\n\n'
        '[[transitions]]\nfrom = "RUNNING"\nevent = "JobStarted"\nto = "PAUSED"\n',
    )
    tree.rejected(JOB_FILE, "states.PAUSED", "no outgoing transition")


def test_duplicate_state_name_is_rejected(tree: SpecTree) -> None:
    tree.append("machines/job.toml", '[[states]]\nname = "RUNNING"\nrank = 2\n')
    tree.rejected(JOB_FILE, "states[4].name", "duplicate state 'RUNNING'")


def test_duplicate_rank_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", "rank = 11", "rank = 10")
    tree.rejected(JOB_FILE, "states[3].rank", "rank 10 already used by 'DONE'")


def test_terminal_state_ranked_below_ten_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", "rank = 10", "rank = 5")
    tree.rejected(JOB_FILE, "states[2].rank", "terminal states rank >= 10")


def test_non_terminal_state_ranked_ten_or_more_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", "rank = 1\n", "rank = 12\n")
    tree.rejected(JOB_FILE, "states[1].rank", "terminal states rank >= 10")


def test_machine_name_not_matching_file_name_is_rejected(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'name = "job"', 'name = "jobs"')
    tree.rejected(JOB_FILE, "machine.name", "'jobs'", "'job'")


@pytest.mark.parametrize(
    ("rel", "header", "index", "old", "new", "fragments"),
    [
        pytest.param(
            "machines/job.toml",
            "[[transitions]]",
            1,
            "guards =",
            "gaurds =",
            (JOB_FILE, "transitions[1]", "unknown key 'gaurds'"),
            id="transition",
        ),
        pytest.param(
            "machines/job.toml",
            "[[states]]",
            3,
            "terminal =",
            "terminl =",
            (JOB_FILE, "states[3]", "unknown key 'terminl'"),
            id="state",
        ),
        pytest.param(
            "machines/job.toml",
            "[machine]",
            0,
            "description =",
            "descripton =",
            (JOB_FILE, "machine", "unknown key 'descripton'"),
            id="machine",
        ),
        pytest.param(
            "events.toml",
            "[events.AlarmFired]",
            0,
            "category =",
            "catgory =",
            (EVENTS_FILE, "events.AlarmFired", "unknown key 'catgory'"),
            id="event",
        ),
        pytest.param(
            "tables.toml",
            "[tables.jobs]",
            0,
            "primary_key =",
            "primay_key =",
            (TABLES_FILE, "tables.jobs", "unknown key 'primay_key'"),
            id="table",
        ),
        pytest.param(
            "invariants.toml",
            "[[invariants]]",
            0,
            "model_checks =",
            "model_check =",
            (INVARIANTS_FILE, "invariants[0]", "unknown key 'model_check'"),
            id="invariant",
        ),
    ],
)
def test_unknown_key_is_rejected(
    tree: SpecTree,
    rel: str,
    header: str,
    index: int,
    old: str,
    new: str,
    fragments: tuple[str, ...],
) -> None:
    """A typo in a key is an error, never silently ignored."""
    tree.edit_block(rel, header, index, old, new)
    tree.rejected(*fragments)


def test_wrong_value_type_is_rejected(tree: SpecTree) -> None:
    """rank = "1" (a string) is not an integer."""
    tree.edit("machines/job.toml", "rank = 1\n", 'rank = "1"\n')
    tree.rejected(JOB_FILE, "states[1].rank", "expected an integer, got str")


def test_invalid_toml_syntax_is_rejected_with_its_line(tree: SpecTree) -> None:
    tree.edit("machines/job.toml", 'initial = "NEW"', "initial = NEW")
    line = JOB.splitlines().index('initial = "NEW"') + 1
    tree.rejected(JOB_FILE, "invalid TOML", f"line {line}")


def test_spec_file_that_is_not_utf8_is_rejected(tree: SpecTree) -> None:
    (tree.root / "events.toml").write_bytes(EVENTS.encode() + b"\n# caf\xe9\n")
    tree.rejected(EVENTS_FILE, "UTF-8")


def test_missing_machines_directory_is_rejected(tree: SpecTree) -> None:
    for path in (tree.root / "machines").iterdir():
        path.unlink()
    tree.rejected("spec/machines", "no machine tables")


def test_missing_table_file_is_rejected(tree: SpecTree) -> None:
    (tree.root / "tables.toml").unlink()
    tree.rejected(TABLES_FILE, "cannot read")


def test_missing_spec_directory_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-spec"
    with pytest.raises(SpecError) as info:
        load_spec(missing, NAMES)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message
    assert "spec directory not found" in message


# --------------------------------------------------------------------- events --


def test_unknown_event_category_is_rejected(tree: SpecTree) -> None:
    tree.edit("events.toml", 'category = "trigger"', 'category = "trigger_fact"')
    tree.rejected(EVENTS_FILE, "events.AlarmFired.category", "unknown category 'trigger_fact'")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        pytest.param(
            'labels = "map<str>"',
            'labels = "dict<str>"',
            "events.JobSubmitted.fields.labels",
            id="event-field",
        ),
        pytest.param(
            'attempt = "int"',
            'attempt = "integer"',
            "events.JobStarted.fields.attempt",
            id="scalar",
        ),
        pytest.param(
            'outcome = "Outcome"',
            'outcome = "Result"',
            "events.JobFinished.fields.outcome",
            id="record-name",
        ),
        pytest.param(
            'message = "str?"', 'message = "text?"', "records.Outcome.message", id="record-field"
        ),
    ],
)
def test_unknown_field_type_is_rejected(tree: SpecTree, old: str, new: str, key: str) -> None:
    tree.edit("events.toml", old, new)
    tree.rejected(EVENTS_FILE, key, "unknown type")


@pytest.mark.parametrize(
    ("old", "new", "key", "name"),
    [
        pytest.param(
            "{attempt}",
            "{attempt_no}",
            "events.JobStarted.idempotency_key",
            "'attempt_no'",
            id="field",
        ),
        pytest.param(
            "{outcome.status}",
            "{outcome.state}",
            "events.JobFinished.idempotency_key",
            "'outcome.state'",
            id="record-path",
        ),
    ],
)
def test_template_naming_unknown_field_is_rejected(
    tree: SpecTree, old: str, new: str, key: str, name: str
) -> None:
    tree.edit("events.toml", old, new)
    tree.rejected(EVENTS_FILE, key, f"template names unknown field {name}")


def test_catalog_machine_naming_unknown_machine_is_rejected(tree: SpecTree) -> None:
    tree.edit("events.toml", 'machine = "alarm"', 'machine = "alarms"')
    tree.rejected(EVENTS_FILE, "events.AlarmFired.machine", "unknown machine 'alarms'")


def test_catalog_also_naming_unknown_machine_is_rejected(tree: SpecTree) -> None:
    tree.edit_block(
        "events.toml", "[events.JobFinished]", 0, 'also = ["alarm"]', 'also = ["alarms"]'
    )
    tree.rejected(EVENTS_FILE, "events.JobFinished.also", "unknown machine 'alarms'")


# ----------------------------------------------------------------- invariants --


def test_invariant_naming_missing_test_file_is_rejected(tree: SpecTree) -> None:
    tree.edit("invariants.toml", "tests/test_x.py::", "tests/test_y.py::")
    tree.rejected(INVARIANTS_FILE, "invariants[0]", ".tests", "'tests/test_y.py' does not exist")


def test_invariant_naming_missing_test_function_is_rejected(tree: SpecTree) -> None:
    tree.edit("invariants.toml", "::test_real", "::test_unreal")
    tree.rejected(INVARIANTS_FILE, "invariants[0]", ".tests", "no test named 'test_unreal'")


def test_invariant_reference_without_double_colon_is_rejected(tree: SpecTree) -> None:
    tree.edit("invariants.toml", "tests/test_x.py::test_real", "tests/test_x.py:test_real")
    tree.rejected(INVARIANTS_FILE, "invariants[0]", ".tests", "must be 'path/to/file.py::name'")


def test_invariant_naming_test_file_that_is_not_utf8_is_rejected(tree: SpecTree) -> None:
    (tree.project / "tests" / "test_x.py").write_bytes(b"# caf\xe9\ndef test_real(): ...\n")
    tree.rejected(INVARIANTS_FILE, "invariants[0]", ".tests", "cannot parse 'tests/test_x.py'")


def test_duplicate_invariant_id_is_rejected(tree: SpecTree) -> None:
    tree.append("invariants.toml", INVARIANTS)
    tree.rejected(INVARIANTS_FILE, "invariants[1]", "duplicate invariant id 'J1'")


# --------------------------------------------------------------------- tables --


def test_primary_key_naming_unknown_column_is_rejected(tree: SpecTree) -> None:
    tree.edit("tables.toml", 'primary_key = ["job_id"]', 'primary_key = ["jobid"]')
    tree.rejected(TABLES_FILE, "tables.jobs.primary_key", "unknown column 'jobid'")


def test_enum_column_without_values_is_rejected(tree: SpecTree) -> None:
    tree.edit("tables.toml", 'enum = ["NEW", "RUNNING", "DONE", "FAILED"]\n', "")
    tree.rejected(TABLES_FILE, "tables.jobs.columns[1].enum")


# ------------------------------------------------------------------------ CLI --


def test_cli_spec_check_reports_malformed_spec_in_one_line_without_traceback(
    tree: SpecTree,
) -> None:
    """`servo spec check` exits 1 and prints the loader's line, never a traceback.

    Depends on `servo/cli/_spec.py` (the `spec check` command).
    """
    tree.edit("events.toml", 'category = "trigger"', 'category = "trigger_fact"')
    expected = tree.rejected(EVENTS_FILE)
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [sys.executable, "-m", "servo.cli", "spec", "check", "--spec-dir", str(tree.root)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env=env,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    assert any(expected in line for line in output.splitlines()), output


# -------------------------------------------------------------- the real spec --


def test_project_spec_loads_with_the_full_registry() -> None:
    """spec/ validates against every registered guard, effect, locator and test."""
    from servo.core.rules import registry

    spec = load_spec(PROJECT / "spec", registry().names(), project_root=PROJECT)
    assert spec.machines and spec.events and spec.tables and spec.invariants
