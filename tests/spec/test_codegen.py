"""The generators: deterministic trees, headers, drift detection and writing."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servo._errors import SpecError
from servo.codegen import (
    DOCS_DIR,
    GENERATED_MARKER,
    REFERENCE_DIR,
    docs_tree,
    drift,
    generated_trees,
    reference_tree,
    write_tree,
)
from servo.spec import Spec, default_spec_dir, load_spec, project_root

ROOT = project_root()
REAL_SPEC_DIR = default_spec_dir()


def real_spec() -> Spec:
    """The checkout's tables, structure only (rule names are `servo spec check`'s job)."""
    return load_spec(REAL_SPEC_DIR)


# ------------------------------------------------------------ synthetic spec --


def write_spec(root: Path, machine: str, *, invariants: str | None = None) -> Path:
    """A one-machine spec dir under `root` whose machine table is `machine` (TOML)."""
    spec = root / "spec"
    (spec / "machines").mkdir(parents=True)
    (spec / "events.toml").write_text(
        textwrap.dedent(
            """
            [events.WidgetMade]
            category = "command"
            layer = 1
            machine = "widget"
            idempotency_key = "made:{widget_id}"
            [events.WidgetMade.fields]
            widget_id = "str"

            [events.WidgetPoked]
            category = "trigger"
            layer = 1
            machine = "widget"
            idempotency_key = "poke:{widget_id}:{n}"
            [events.WidgetPoked.fields]
            widget_id = "str"
            n = "int"

            [events.WidgetDone]
            category = "worker_fact"
            layer = 1
            machine = "widget"
            idempotency_key = "done:{widget_id}"
            [events.WidgetDone.fields]
            widget_id = "str"
            """
        ),
        encoding="utf-8",
    )
    (spec / "invariants.toml").write_text(
        invariants
        or textwrap.dedent(
            """
            [[invariants]]
            id = "INV-1"
            title = "Widgets end"
            statement = "Every widget ends."
            tests = []
            model_checks = []
            """
        ),
        encoding="utf-8",
    )
    (spec / "tables.toml").write_text(
        textwrap.dedent(
            """
            [tables.widgets]
            layer = 1
            primary_key = ["widget_id"]
            [[tables.widgets.columns]]
            name = "widget_id"
            type = "string"
            """
        ),
        encoding="utf-8",
    )
    (spec / "machines" / "widget.toml").write_text(textwrap.dedent(machine), encoding="utf-8")
    return spec


WIDGET = """
[machine]
name = "widget"
table = "widgets"
initial = "NEW"
created_by = ["WidgetMade"]
locator = "widget_of_event"
description = "A widget that is poked until it is done."

[[states]]
name = "NEW"
rank = 0
description = "Just made."

[[states]]
name = "POKED"
rank = 1
description = "Poked at least once."

[[states]]
name = "DONE"
rank = 10
terminal = true
description = "Finished | closed."

[[transitions]]
from = "NEW"
event = "WidgetPoked"
to = "POKED"
effects = ["count_poke"]

[[transitions]]
from = "POKED"
event = "WidgetPoked"
guards = ["poke_is_new"]
to = "POKED"
effects = ["count_poke"]

[[transitions]]
from = "POKED"
event = "WidgetDone"
guards = ["a_rather_long_guard_name_that_forces_wrapping", "another_long_guard_name_here"]
to = "DONE"
"""


@pytest.fixture
def widget_spec(tmp_path: Path) -> Spec:
    return load_spec(write_spec(tmp_path, WIDGET))


# ------------------------------------------------------------- determinism --


def test_generation_is_deterministic() -> None:
    """Two loads of the tables generate byte-identical trees."""
    first, second = real_spec(), real_spec()
    assert reference_tree(first) == reference_tree(second)
    assert docs_tree(first) == docs_tree(second)
    assert list(reference_tree(first)) == sorted(reference_tree(first))


def test_generated_tree_matches_spec_tables() -> None:
    """servo/reference/ and docs/spec/ on disk are exactly what the tables produce."""
    assert ROOT is not None, "run from a source checkout"
    problems = drift(ROOT, real_spec())
    assert problems == [], "run `servo spec generate`:\n" + "\n".join(problems)


def test_every_generated_file_says_it_is_generated() -> None:
    for subdir, tree in generated_trees(real_spec()).items():
        for rel, text in tree.items():
            first = text.splitlines()[0]
            assert GENERATED_MARKER in first, f"{subdir}/{rel}"
            assert "servo spec generate" in first and "Do not edit" in first, f"{subdir}/{rel}"
            assert text.endswith("\n") and not text.endswith("\n\n"), f"{subdir}/{rel}"


def test_reference_tree_has_one_module_per_machine() -> None:
    spec = real_spec()
    expected = {"__init__.py", "_base.py", *(f"{name}.py" for name in spec.machines)}
    assert set(reference_tree(spec)) == expected
    assert set(docs_tree(spec)) == {"index.md", *(f"{name}.md" for name in spec.machines)}


# ------------------------------------------------------------------- drift --


def _edited_copy(tmp_path: Path) -> Path:
    """A copy of the real spec with one transition row of task.toml changed."""
    copy = tmp_path / "spec"
    shutil.copytree(REAL_SPEC_DIR, copy)
    path = copy / "machines" / "task.toml"
    text, count = re.subn(
        r"^guards = \[",
        'guards = ["guard_added_by_the_drift_test", ',
        path.read_text(),
        count=1,
        flags=re.M,
    )
    assert count == 1
    path.write_text(text)
    return copy


def test_drift_names_the_files_an_edited_row_changes(tmp_path: Path) -> None:
    assert ROOT is not None
    problems = drift(ROOT, load_spec(_edited_copy(tmp_path)))
    changed = {p.split(":")[0] for p in problems}
    assert changed == {f"{REFERENCE_DIR}/task.py", f"{DOCS_DIR}/task.md"}
    assert all("changed (line " in p for p in problems)


def test_drift_reports_missing_stale_and_hand_written_files(
    tmp_path: Path, widget_spec: Spec
) -> None:
    for subdir, tree in generated_trees(widget_spec).items():
        write_tree(tmp_path, tree, subdir)
    assert drift(tmp_path, widget_spec) == []
    (tmp_path / DOCS_DIR / "widget.md").unlink()
    (tmp_path / REFERENCE_DIR / "old.py").write_text(f"# {GENERATED_MARKER}machines/old.toml\n")
    (tmp_path / DOCS_DIR / "notes.md").write_text("hand-written\n")
    assert drift(tmp_path, widget_spec) == [
        f"{REFERENCE_DIR}/old.py: stale (the spec tables no longer produce it)",
        f"{DOCS_DIR}/notes.md: not generated from the spec tables "
        f"(remove it or move it out of {DOCS_DIR}/)",
        f"{DOCS_DIR}/widget.md: missing",
    ]


def test_write_tree_writes_only_changes_and_removes_only_its_own_stale_files(
    tmp_path: Path, widget_spec: Spec
) -> None:
    tree = reference_tree(widget_spec)
    written = write_tree(tmp_path, tree, REFERENCE_DIR)
    assert written == sorted(f"{REFERENCE_DIR}/{rel}" for rel in tree)
    assert write_tree(tmp_path, tree, REFERENCE_DIR) == []
    base = tmp_path / REFERENCE_DIR
    (base / "gone.py").write_text(f"# {GENERATED_MARKER}machines/gone.toml\n")
    (base / "mine.py").write_text("# hand-written\n")
    (base / "__pycache__").mkdir()
    (base / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert write_tree(tmp_path, tree, REFERENCE_DIR) == [f"{REFERENCE_DIR}/gone.py"]
    assert not (base / "gone.py").exists()
    assert (base / "mine.py").exists()
    for rel, text in tree.items():
        assert (base / rel).read_bytes() == text.encode()


# ------------------------------------------------------- synthetic machines --


def test_generated_reference_runs_a_synthetic_machine(
    tmp_path: Path, widget_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Self-loops, guards and wrapping: the generated package imports and walks."""
    package = tmp_path / "gen"
    tree = {
        rel: text.replace("servo.reference", "widgetref")
        for rel, text in reference_tree(widget_spec).items()
    }
    write_tree(package, tree, "widgetref")
    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("widgetref")
    from statemachine.exceptions import TransitionNotAllowed

    cls = module.MACHINES["widget"]
    sm = cls()
    assert sm.state_name == "NEW"
    assert sm.fire("WidgetPoked") == "POKED"
    with pytest.raises(TransitionNotAllowed):
        sm.fire("WidgetPoked")  # poke_is_new does not hold
    assert sm.fire("WidgetPoked", {"poke_is_new": True}) == "POKED"
    with pytest.raises(TransitionNotAllowed):
        sm.fire("WidgetDone", {"a_rather_long_guard_name_that_forces_wrapping": True})
    assert sm.state_name == "POKED"
    facts = dict.fromkeys(cls.GUARDS, True)
    assert sm.fire("WidgetDone", facts) == "DONE"
    for name in list(sys.modules):
        if name.startswith("widgetref"):
            del sys.modules[name]


def test_generated_python_is_ruff_clean(tmp_path: Path, widget_spec: Spec) -> None:
    """`ruff check` and `ruff format --check` accept the generated code as it is."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    assert ROOT is not None
    for name, spec in (("widget", widget_spec), ("real", real_spec())):
        project = tmp_path / name
        project.mkdir()
        shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
        write_tree(project, reference_tree(spec), REFERENCE_DIR)
        for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
            done = subprocess.run(
                [ruff, *args, "servo"], cwd=project, capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('guards = ["poke_is_new"]', 'guards = ["send"]', "guard 'send' would shadow"),
        ('guards = ["poke_is_new"]', 'guards = ["fire"]', "guard 'fire' would shadow"),
        ('guards = ["poke_is_new"]', 'guards = ["not-a-name"]', "is not a Python identifier"),
        ('guards = ["poke_is_new"]', 'guards = ["new"]', "already used by state 'NEW'"),
        (
            'guards = ["poke_is_new"]',
            'guards = ["on_enter_poked"]',
            "binds by convention",
        ),
    ],
)
def test_names_the_reference_class_cannot_hold_are_rejected(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in WIDGET
    spec = load_spec(write_spec(tmp_path, WIDGET.replace(old, new)))
    with pytest.raises(SpecError, match=re.escape(message)):
        reference_tree(spec)


# -------------------------------------------------------------------- docs --


def test_machine_page_has_diagram_tables_and_escaped_cells(widget_spec: Spec) -> None:
    page = docs_tree(widget_spec)["widget.md"]
    assert "```mermaid\nstateDiagram-v2\n    [*] --> NEW : WidgetMade\n" in page
    assert "    POKED --> POKED : WidgetPoked [poke_is_new]\n" in page
    assert "    NEW --> POKED : WidgetPoked\n" in page
    assert "    DONE --> [*]\n" in page
    assert "| `DONE` | 10 | yes | Finished \\| closed. |" in page
    assert "| 1 | `POKED` | `WidgetPoked` | `poke_is_new` | `POKED` | `count_poke` |" in page
    assert "| `WidgetPoked` | trigger | 1 | primary | `poke:{widget_id}:{n}` |" in page
    assert "| **INV-1** | Widgets end | Every widget ends. | **not yet verified** |" in page


def test_invariants_link_their_tests_and_follow_their_machines(tmp_path: Path) -> None:
    """An invariant's tests link relative to docs/spec/; `machines` narrows its pages."""
    assert ROOT is not None
    ref = "tests/spec/test_codegen.py::test_generation_is_deterministic"
    invariants = f"""
[[invariants]]
id = "INV-1"
title = "Proved"
statement = "Proved by a test."
tests = ["{ref}"]
model_checks = []

[[invariants]]
id = "L2-INV-1"
title = "Narrowed"
statement = "A Layer 2 law that names this Layer 1 machine."
tests = []
model_checks = []
machines = ["widget"]

[[invariants]]
id = "L2-INV-2"
title = "Other layer"
statement = "A Layer 2 law."
tests = []
model_checks = []

[[invariants]]
id = "P1"
title = "Platform"
statement = "Storage law."
tests = []
model_checks = []
"""
    spec = load_spec(write_spec(tmp_path, WIDGET, invariants=invariants), project_root=ROOT)
    pages = docs_tree(spec)
    link = f"test [`{ref}`](../../tests/spec/test_codegen.py)<br>(no model check yet)"
    assert link in pages["widget.md"]
    assert link in pages["index.md"]
    assert "**L2-INV-1**" in pages["widget.md"]
    assert "| **L2-INV-1** | Narrowed |" in pages["index.md"]
    assert "[`widget`](widget.md) | **not yet verified** |" in pages["index.md"]
    assert "**L2-INV-2**" not in pages["widget.md"]
    assert "**P1**" not in pages["widget.md"]
    assert (
        "| **P1** | Platform | Storage law. | platform | **not yet verified** |"
        in pages["index.md"]
    )


def test_invariant_machines_list_must_name_known_machines(tmp_path: Path) -> None:
    invariants = """
[[invariants]]
id = "INV-1"
title = "Bad"
statement = "Names a machine that does not exist."
tests = []
model_checks = []
machines = ["gadget"]
"""
    with pytest.raises(SpecError, match="unknown machine 'gadget'"):
        load_spec(write_spec(tmp_path, WIDGET, invariants=invariants))


_DIGEST = """
import hashlib
from servo.codegen import generated_trees
from servo.spec import default_spec_dir, load_spec
trees = generated_trees(load_spec(default_spec_dir()))
items = sorted((sub, rel, text) for sub, tree in trees.items() for rel, text in tree.items())
print(hashlib.sha256(repr(items).encode()).hexdigest())
"""


def test_generation_does_not_depend_on_hash_seed() -> None:
    """Set and dict ordering cannot leak into the output: two seeds, one tree."""
    digests = set()
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", _DIGEST],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(done.stdout)
    assert len(digests) == 1
