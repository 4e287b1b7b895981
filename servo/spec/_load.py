"""Load `spec/` into typed records and reject any malformed table with one line.

Every check names the file and the key (TOML has no line numbers after parsing, so
the key path is the address: `spec/machines/task.toml: transitions[3] ...`).
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from servo._errors import SpecError
from servo.spec._model import (
    Column,
    EventSpec,
    FieldSpec,
    Invariant,
    Machine,
    RecordSpec,
    RuleNames,
    Spec,
    State,
    TableSpec,
    Transition,
)

__all__ = ["load_spec", "parse_field_type"]

CATEGORIES = ("intent", "ack", "worker_fact", "trigger", "command", "derived")
REJECT_REASONS = (
    "DUPLICATE",
    "INVALID",
    "INVALID_TRANSITION",
    "STALE_ATTEMPT",
    "UNKNOWN_EVENT_TYPE",
    "UNKNOWN_RUN",
    "UNKNOWN_TASK",
)
COLUMN_TYPES = ("string", "int64", "bool", "timestamp", "json", "enum")
TERMINAL_RANK = 10
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def load_spec(
    root: Path,
    names: RuleNames | None = None,
    *,
    project_root: Path | None = None,
) -> Spec:
    """Load and validate every table under `root` (the `spec/` directory).

    `names` are the guard/effect/locator names the runtime registers; when given,
    every name a row uses must be among them. `project_root` is where the tests and
    model checks named by invariants live; when given, each must exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpecError(f"{root}: spec directory not found")
    records = _load_records(root)
    events = _load_events(root, records)
    machines = _load_machines(root, events, names)
    _check_catalog_machines(root, events, machines)
    invariants = _load_invariants(root, project_root, frozenset(machines))
    tables = _load_tables(root)
    return Spec(
        root=root,
        machines=machines,
        events=events,
        records=records,
        invariants=invariants,
        tables=tables,
    )


# ------------------------------------------------------------------ helpers --


def _rel(path: Path) -> str:
    parts = path.parts
    if "spec" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("spec") :])
    return str(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{_rel(path)}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{_rel(path)}: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{_rel(path)}: cannot read: {exc.strerror}") from None


class _Table:
    """A TOML table with typed accessors whose errors name file and key."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            self.fail(f"expected a table, got {type(data).__name__}")
        self.data: dict[str, Any] = data

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        place = self.where if key is None else f"{self.where}.{key}" if self.where else key
        prefix = f"{_rel(self.path)}: {place}: " if place else f"{_rel(self.path)}: "
        raise SpecError(prefix + message)

    def only(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in self.data:
            if key not in allowed:
                self.fail(f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            self.fail("missing required key", key)
        if not isinstance(value, str):
            self.fail(f"expected a string, got {type(value).__name__}", key)
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.data.get(key, default)
        if value is None:
            self.fail("missing required key", key)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"expected an integer, got {type(value).__name__}", key)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {type(value).__name__}", key)
        return value

    def strs(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("expected a list of strings", key)
        return tuple(value)

    def table(self, key: str, *, required: bool = True) -> _Table:
        if key not in self.data:
            if required:
                self.fail("missing required table", key)
            return _Table(self.path, self._sub(key), {})
        return _Table(self.path, self._sub(key), self.data[key])

    def tables(self, key: str) -> list[_Table]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value:
            self.fail("expected a non-empty array of tables", key)
        return [_Table(self.path, f"{self._sub(key)}[{i}]", item) for i, item in enumerate(value)]

    def _sub(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


# --------------------------------------------------------------- field types --


def parse_field_type(text: str, records: Mapping[str, object], fail: Any) -> FieldSpec:
    """Parse a catalog type string (`str?`, `list<PlanTask>`, `enum(A,B)`)."""
    return _parse_type("", text, records, fail)


def _parse_type(name: str, text: str, records: Mapping[str, object], fail: Any) -> FieldSpec:
    raw = text.strip()
    optional = raw.endswith("?")
    body = raw[:-1] if optional else raw
    if body in ("str", "int", "bool", "timestamp", "object"):
        return FieldSpec(name, body, optional)
    if body.startswith("enum(") and body.endswith(")"):
        values = tuple(v.strip() for v in body[5:-1].split(","))
        if not values or not all(_NAME.match(v) for v in values) or len(set(values)) != len(values):
            fail(f"bad enum type {text!r}")
        return FieldSpec(name, "enum", optional, enum=values)
    for container in ("list", "map"):
        if body.startswith(container + "<") and body.endswith(">"):
            item = _parse_type("", body[len(container) + 1 : -1], records, fail)
            if item.optional:
                fail(f"container items cannot be optional in {text!r}")
            return FieldSpec(name, container, optional, item=item)
    if body in records:
        return FieldSpec(name, "record", optional, record=body)
    fail(f"unknown type {text!r}")
    raise AssertionError("unreachable")


def _fields(table: _Table, records: Mapping[str, object]) -> tuple[FieldSpec, ...]:
    out = []
    for key, value in table.data.items():
        if not _NAME.match(key):
            table.fail("field names must be identifiers", key)
        if not isinstance(value, str):
            table.fail("expected a type string", key)

        def fail(message: str, key: str = key) -> None:
            table.fail(message, key)

        out.append(_parse_type(key, value, records, fail))
    return tuple(out)


# ------------------------------------------------------------------ records --


def _load_records(root: Path) -> dict[str, RecordSpec]:
    path = root / "events.toml"
    doc = _Table(path, "", _read(path))
    names = set(doc.table("records", required=False).data)
    records: dict[str, RecordSpec] = {}
    section = doc.table("records", required=False)
    for name in section.data:
        sub = section.table(name)
        records[name] = RecordSpec(name, _fields(sub, {n: None for n in names}))
    return records


# ------------------------------------------------------------------- events --


def _load_events(root: Path, records: dict[str, RecordSpec]) -> dict[str, EventSpec]:
    path = root / "events.toml"
    doc = _Table(path, "", _read(path))
    doc.only(["records", "events"])
    section = doc.table("events")
    events: dict[str, EventSpec] = {}
    for name in section.data:
        t = section.table(name)
        t.only(
            [
                "category",
                "layer",
                "machine",
                "also",
                "unmatched",
                "idempotency_key",
                "idempotency_key_by",
                "idempotency_keys",
                "description",
                "fields",
            ]
        )
        category = t.text("category")
        if category not in CATEGORIES:
            t.fail(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})", "category")
        unmatched = t.text("unmatched", "INVALID_TRANSITION")
        if unmatched not in REJECT_REASONS:
            t.fail(f"unknown rejection reason {unmatched!r}", "unmatched")
        fields = _fields(t.table("fields"), records)
        field_names = {f.name for f in fields}
        key = t.data.get("idempotency_key")
        by = t.data.get("idempotency_key_by")
        keyed = t.table("idempotency_keys", required=False)
        templates: list[tuple[str, str]] = []
        if category == "derived":
            if key is not None or by is not None or keyed.data:
                t.fail("derived events are never in the ledger and take no idempotency key")
        elif key is not None:
            templates.append(("", t.text("idempotency_key")))
        elif by is not None:
            if not keyed.data:
                t.fail("idempotency_key_by needs an [idempotency_keys] table")
            templates.extend((k, keyed.text(k)) for k in keyed.data)
        else:
            t.fail("missing idempotency_key (or idempotency_key_by + idempotency_keys)")
        for variant, template in templates:
            _check_template(t, template, field_names, records, fields, variant)
        events[name] = EventSpec(
            name=name,
            category=category,
            layer=t.integer("layer"),
            machine=t.text("machine"),
            also=t.strs("also"),
            unmatched=unmatched,
            idempotency_key=key if isinstance(key, str) else None,
            idempotency_key_by=by if isinstance(by, str) else None,
            idempotency_keys=tuple(templates) if by is not None else (),
            fields=fields,
            description=t.text("description", ""),
        )
    return events


def _check_template(
    t: _Table,
    template: str,
    field_names: set[str],
    records: dict[str, RecordSpec],
    fields: tuple[FieldSpec, ...],
    variant: str,
) -> None:
    by_name = {f.name: f for f in fields}
    for placeholder in _PLACEHOLDER.findall(template):
        expr = placeholder
        if expr.startswith("sha256_hex(") and expr.endswith(")"):
            expr = expr[len("sha256_hex(") : -1]
        head, _, rest = expr.partition(".")
        where = "idempotency_keys." + variant if variant else "idempotency_key"
        if head not in field_names:
            t.fail(f"template names unknown field {head!r}", where)
        spec = by_name[head]
        if rest:
            record = records.get(spec.record or "")
            if record is None or rest not in {f.name for f in record.fields}:
                t.fail(f"template names unknown field {expr!r}", where)


# ----------------------------------------------------------------- machines --


def _load_machines(
    root: Path, events: dict[str, EventSpec], names: RuleNames | None
) -> dict[str, Machine]:
    machine_dir = root / "machines"
    files = sorted(machine_dir.glob("*.toml")) if machine_dir.is_dir() else []
    if not files:
        raise SpecError(f"{_rel(machine_dir)}: no machine tables found")
    machines: dict[str, Machine] = {}
    for path in files:
        machine = _load_machine(path, events, names)
        machines[machine.name] = machine
    return machines


def _load_machine(path: Path, events: dict[str, EventSpec], names: RuleNames | None) -> Machine:
    doc = _Table(path, "", _read(path))
    doc.only(["machine", "states", "transitions"])
    head = doc.table("machine")
    head.only(["name", "table", "initial", "created_by", "locator", "description"])
    name = head.text("name")
    if name != path.stem:
        head.fail(f"machine name {name!r} must match its file name {path.stem!r}", "name")

    states: list[State] = []
    seen_ranks: dict[int, str] = {}
    for t in doc.tables("states"):
        t.only(["name", "rank", "terminal", "description"])
        state = State(t.text("name"), t.integer("rank"), t.flag("terminal", False), t.text("description", ""))
        if any(s.name == state.name for s in states):
            t.fail(f"duplicate state {state.name!r}", "name")
        if state.rank in seen_ranks:
            t.fail(f"rank {state.rank} already used by {seen_ranks[state.rank]!r}", "rank")
        if state.terminal != (state.rank >= TERMINAL_RANK):
            t.fail(f"terminal states rank >= {TERMINAL_RANK} and others below it", "rank")
        seen_ranks[state.rank] = state.name
        states.append(state)
    state_names = {s.name for s in states}

    initial = head.text("initial")
    if initial not in state_names:
        head.fail(f"unknown state {initial!r}", "initial")
    created_by = head.strs("created_by")
    for event in created_by:
        if event not in events:
            head.fail(f"event {event!r} is missing from the catalog (spec/events.toml)", "created_by")
    locator = head.text("locator")
    if names is not None and locator not in names.locators:
        head.fail(f"unknown locator {locator!r} (not registered in servo)", "locator")

    rows: list[Transition] = []
    for index, t in enumerate(doc.tables("transitions")):
        t.only(["from", "event", "guards", "to", "effects"])
        row = Transition(
            index=index,
            source=t.text("from"),
            event=t.text("event"),
            guards=t.strs("guards"),
            target=t.text("to"),
            effects=t.strs("effects"),
        )
        t.where = f"{t.where} ({row.label})"
        for key, state_name in (("from", row.source), ("to", row.target)):
            if state_name not in state_names:
                t.fail(f"unknown state {state_name!r}", key)
        if row.event not in events:
            t.fail(f"event {row.event!r} is missing from the catalog (spec/events.toml)", "event")
        for earlier in rows:
            same_guards = sorted(earlier.guards) == sorted(row.guards)
            if (earlier.source, earlier.event) == (row.source, row.event) and same_guards:
                t.fail(f"duplicate row: same from, event and guards as transitions[{earlier.index}]")
        if names is not None:
            for guard in row.guards:
                if guard not in names.guards:
                    t.fail(f"unknown guard {guard!r} (not registered in servo)", "guards")
            for effect in row.effects:
                if effect not in names.effects:
                    t.fail(f"unknown effect {effect!r} (not registered in servo)", "effects")
        rows.append(row)

    for state in states:
        outgoing = [r for r in rows if r.source == state.name]
        if state.terminal and outgoing:
            raise SpecError(
                f"{_rel(path)}: transitions[{outgoing[0].index}] ({outgoing[0].label}): "
                f"terminal state {state.name!r} cannot have outgoing transitions"
            )
        if not state.terminal and not outgoing:
            raise SpecError(
                f"{_rel(path)}: states.{state.name}: non-terminal state has no outgoing "
                "transition (a sink must be terminal)"
            )
    reached = _reachable(initial, rows)
    for state in states:
        if state.name not in reached:
            raise SpecError(
                f"{_rel(path)}: states.{state.name}: unreachable from initial state {initial!r}"
            )
    return Machine(
        name=name,
        table=head.text("table"),
        initial=initial,
        created_by=created_by,
        locator=locator,
        description=head.text("description", "").strip(),
        states=tuple(states),
        transitions=tuple(rows),
        source=_rel(path),
    )


def _reachable(initial: str, rows: list[Transition]) -> set[str]:
    seen = {initial}
    queue = deque([initial])
    while queue:
        current = queue.popleft()
        for row in rows:
            if row.source == current and row.target not in seen:
                seen.add(row.target)
                queue.append(row.target)
    return seen


def _check_catalog_machines(
    root: Path, events: dict[str, EventSpec], machines: dict[str, Machine]
) -> None:
    path = root / "events.toml"
    for event in events.values():
        for key, machine in [("machine", event.machine), *(("also", m) for m in event.also)]:
            if machine not in machines:
                raise SpecError(f"{_rel(path)}: events.{event.name}.{key}: unknown machine {machine!r}")
        if event.name not in machines[event.machine].events:
            raise SpecError(
                f"{_rel(path)}: events.{event.name}.machine: machine {event.machine!r} "
                f"has no row or creation for {event.name}"
            )


# --------------------------------------------------------------- invariants --


def _load_invariants(
    root: Path, project_root: Path | None, machines: frozenset[str] | None = None
) -> tuple[Invariant, ...]:
    path = root / "invariants.toml"
    doc = _Table(path, "", _read(path))
    doc.only(["invariants"])
    out: list[Invariant] = []
    for t in doc.tables("invariants"):
        t.only(["id", "title", "statement", "tests", "model_checks", "machines"])
        inv = Invariant(
            id=t.text("id"),
            title=t.text("title"),
            statement=t.text("statement").strip(),
            tests=t.strs("tests"),
            model_checks=t.strs("model_checks"),
            machines=t.strs("machines"),
        )
        t.where = f"{t.where} ({inv.id})"
        if any(o.id == inv.id for o in out):
            t.fail(f"duplicate invariant id {inv.id!r}", "id")
        if machines is not None:
            for machine in inv.machines:
                if machine not in machines:
                    t.fail(f"unknown machine {machine!r}", "machines")
        if project_root is not None:
            for key, refs in (("tests", inv.tests), ("model_checks", inv.model_checks)):
                for ref in refs:
                    problem = _missing_reference(project_root, ref)
                    if problem:
                        t.fail(problem, key)
        out.append(inv)
    return tuple(out)


def _missing_reference(project_root: Path, ref: str) -> str | None:
    """Why `path::name` does not name a test or check in the project, or None."""
    file_part, sep, name = ref.partition("::")
    if not sep or not name:
        return f"{ref!r} must be 'path/to/file.py::name'"
    path = project_root / file_part
    if not path.is_file():
        return f"{ref!r}: file {file_part!r} does not exist"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError as exc:
        return f"{ref!r}: cannot parse {file_part!r}: {exc.msg}"
    except UnicodeDecodeError:
        return f"{ref!r}: cannot parse {file_part!r}: not UTF-8"
    head, _, method = name.partition(".")
    for node in ast.walk(tree):
        found = _defined_name(node)
        if found == head:
            if not method:
                return None
            if isinstance(node, ast.ClassDef) and any(_defined_name(n) == method for n in node.body):
                return None
    return f"{ref!r}: no test named {name!r} in {file_part!r}"


def _defined_name(node: ast.AST) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


# ------------------------------------------------------------------- tables --


def _load_tables(root: Path) -> dict[str, TableSpec]:
    path = root / "tables.toml"
    doc = _Table(path, "", _read(path))
    doc.only(["tables"])
    section = doc.table("tables")
    tables: dict[str, TableSpec] = {}
    for name in section.data:
        t = section.table(name)
        t.only(["layer", "primary_key", "description", "columns"])
        columns: list[Column] = []
        for c in t.tables("columns"):
            c.only(["name", "type", "nullable", "enum", "description"])
            column = Column(
                name=c.text("name"),
                type=c.text("type"),
                nullable=c.flag("nullable", False),
                enum=c.strs("enum"),
                description=c.text("description", ""),
            )
            if column.type not in COLUMN_TYPES:
                c.fail(f"unknown column type {column.type!r} (one of {', '.join(COLUMN_TYPES)})", "type")
            if (column.type == "enum") != bool(column.enum):
                c.fail("enum columns (and only they) list their values", "enum")
            if any(x.name == column.name for x in columns):
                c.fail(f"duplicate column {column.name!r}", "name")
            columns.append(column)
        pk = t.strs("primary_key")
        if not pk:
            t.fail("missing primary key", "primary_key")
        for key in pk:
            if key not in {c.name for c in columns}:
                t.fail(f"primary key names unknown column {key!r}", "primary_key")
        tables[name] = TableSpec(name, t.integer("layer"), pk, tuple(columns), t.text("description", ""))
    return tables
