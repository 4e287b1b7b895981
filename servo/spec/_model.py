"""Typed records that the spec tables load into (neutral data, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Column",
    "EventSpec",
    "FieldSpec",
    "Invariant",
    "Machine",
    "RecordSpec",
    "RuleNames",
    "Spec",
    "State",
    "TableSpec",
    "Transition",
]


@dataclass(frozen=True, slots=True)
class State:
    """A state of a machine; rank orders states and terminal states rank >= 10."""

    name: str
    rank: int
    terminal: bool
    description: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One row: in `source`, `event` moves to `target` when every guard holds."""

    index: int
    source: str
    event: str
    guards: tuple[str, ...]
    target: str
    effects: tuple[str, ...]

    @property
    def label(self) -> str:
        """The row as an auditor reads it: `FROM --Event--> TO`."""
        return f"{self.source} --{self.event}--> {self.target}"


@dataclass(frozen=True, slots=True)
class Machine:
    """A state machine declared in `spec/machines/{name}.toml`."""

    name: str
    table: str
    initial: str
    created_by: tuple[str, ...]
    locator: str
    description: str
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    source: str
    _rows: dict[tuple[str, str], tuple[Transition, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rows: dict[tuple[str, str], list[Transition]] = {}
        for row in self.transitions:
            rows.setdefault((row.source, row.event), []).append(row)
        self._rows.update({key: tuple(value) for key, value in rows.items()})

    def rows(self, state: str, event: str) -> tuple[Transition, ...]:
        """The rows for `(state, event)`, in declared order (first match wins)."""
        return self._rows.get((state, event), ())

    def state(self, name: str) -> State:
        """The state called `name` (KeyError if there is none)."""
        for state in self.states:
            if state.name == name:
                return state
        raise KeyError(name)

    @property
    def events(self) -> tuple[str, ...]:
        """Every event some row of this machine consumes, in first-use order."""
        seen: dict[str, None] = {}
        for name in self.created_by:
            seen.setdefault(name, None)
        for row in self.transitions:
            seen.setdefault(row.event, None)
        return tuple(seen)

    @property
    def terminal_states(self) -> frozenset[str]:
        """Names of the terminal states."""
        return frozenset(s.name for s in self.states if s.terminal)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A payload field: `kind` is str/int/bool/timestamp/enum/object/list/map/record."""

    name: str
    kind: str
    optional: bool
    enum: tuple[str, ...] = ()
    item: FieldSpec | None = None
    record: str | None = None

    @property
    def type_text(self) -> str:
        """The type as written in the catalog."""
        if self.kind == "enum":
            text = f"enum({','.join(self.enum)})"
        elif self.kind in ("list", "map") and self.item is not None:
            text = f"{self.kind}<{self.item.type_text}>"
        elif self.kind == "record" and self.record is not None:
            text = self.record
        else:
            text = self.kind
        return text + ("?" if self.optional else "")


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """A named nested object type used by event payloads."""

    name: str
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A catalog entry of `spec/events.toml`."""

    name: str
    category: str
    layer: int
    machine: str
    also: tuple[str, ...]
    unmatched: str
    idempotency_key: str | None
    idempotency_key_by: str | None
    idempotency_keys: tuple[tuple[str, str], ...]
    fields: tuple[FieldSpec, ...]
    description: str

    @property
    def derived(self) -> bool:
        """Derived events are computed by the fold and never stored in the ledger."""
        return self.category == "derived"


@dataclass(frozen=True, slots=True)
class Invariant:
    """A law with the tests and model checks that verify it.

    `machines` narrows the machine pages of the generated docs that show it; when
    empty, the invariant belongs to every machine of its layer (by id prefix).
    """

    id: str
    title: str
    statement: str
    tests: tuple[str, ...]
    model_checks: tuple[str, ...]
    machines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Column:
    """A Parquet column: type is string/int64/bool/timestamp/json, or enum."""

    name: str
    type: str
    nullable: bool
    enum: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A projected table of `spec/tables.toml`."""

    name: str
    layer: int
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in declared order."""
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class RuleNames:
    """The names the runtime registers: what guards/effects/locators may name."""

    guards: frozenset[str]
    effects: frozenset[str]
    locators: frozenset[str]


@dataclass(frozen=True, slots=True)
class Spec:
    """Every table of `spec/`, validated."""

    root: Path
    machines: dict[str, Machine]
    events: dict[str, EventSpec]
    records: dict[str, RecordSpec]
    invariants: tuple[Invariant, ...]
    tables: dict[str, TableSpec]
