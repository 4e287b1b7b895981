"""Generate `servo/reference/`: one python-statemachine class per machine.

Each state becomes a `State` attribute (lower-case name, upper-case value), each
event a snake_case `Event` attribute whose id is the catalog name and whose
transitions are that event's rows joined with `|` in declared order. Guards are
runtime predicates, so the class reads them from the facts given to `fire`.

python-statemachine tries an event's transitions in the order they were declared
and takes the first whose conds all hold; with no such transition (or none from
the current state at all) `StateMachine` raises `TransitionNotAllowed`. That is
exactly the spec's "first row whose guards all hold wins, otherwise rejected".

The emitted code is laid out the way `ruff format` lays it out (one line when it
fits in 100 columns, otherwise one item per line with a trailing comma), so a
formatter run over the repository never makes the tree drift.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable

from servo._errors import SpecError
from servo.codegen._tree import python_header
from servo.spec import Machine, Spec, Transition

__all__ = ["class_name", "event_attribute", "reference_tree", "state_attribute"]

_WIDTH = 100
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CAMEL_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Members of the generated base class (StateMachine's own are added at check time).
_BASE_MEMBERS = frozenset(
    {"EVENTS", "GUARDS", "INITIAL", "MACHINE", "SOURCE", "TERMINAL", "fire", "state_name"}
)
# Callback names python-statemachine binds by convention, whatever the machine.
_CONVENTIONS = frozenset(
    {
        "after_transition",
        "before_transition",
        "on_enter_state",
        "on_exit_state",
        "on_invoke_state",
        "on_transition",
        "prepare_event",
    }
)


def reference_tree(spec: Spec) -> dict[str, str]:
    """`{path relative to servo/reference/: file text}` for every machine of `spec`."""
    tree = {"_base.py": _BASE, "__init__.py": _package(spec)}
    for name in sorted(spec.machines):
        tree[f"{name}.py"] = _module(spec.machines[name])
    return dict(sorted(tree.items()))


def class_name(machine: str) -> str:
    """`dispatch_outbox` -> `DispatchOutboxMachine`."""
    return "".join(part.capitalize() for part in machine.split("_")) + "Machine"


def state_attribute(state: str) -> str:
    """The class attribute of a state: its name in lower case."""
    return state.lower()


def event_attribute(event: str) -> str:
    """The class attribute of a catalog event: `TaskFinished` -> `task_finished`."""
    return _CAMEL_BREAK.sub("_", event).lower()


# ------------------------------------------------------------------ modules --


def _package(spec: Spec) -> str:
    names = sorted(spec.machines)
    classes = [class_name(n) for n in names]
    lines = [python_header("machines/*.toml").rstrip("\n")]
    lines += [
        '"""Reference implementations of Servo\'s machines, one class per spec table.',
        "",
        "The runtime fold is not this code: the differential suite runs both and requires",
        "identical transitions. `MACHINES` maps a machine name to its class.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from servo.reference._base import ReferenceMachine",
    ]
    lines += [f"from servo.reference.{n} import {c}" for n, c in zip(names, classes, strict=True)]
    lines.append("")
    exported = ["MACHINES", *sorted(["ReferenceMachine", *classes])]
    lines += _sequence("__all__ = ", [_q(x) for x in exported], "", 0, "[", "]")
    lines.append("")
    entries = [f"{_q(n)}: {c}" for n, c in zip(names, classes, strict=True)]
    lines += _sequence("MACHINES: dict[str, type[ReferenceMachine]] = ", entries, "", 0, "{", "}")
    lines.append('"""Machine name -> reference class."""')
    return "\n".join(lines) + "\n"


def _module(machine: Machine) -> str:
    _check_names(machine)
    cls = class_name(machine.name)
    guards = sorted({g for row in machine.transitions for g in row.guards})
    events = _events_with_rows(machine)
    lines = [python_header(f"machines/{machine.name}.toml").rstrip("\n")]
    lines.append(f'"""Reference implementation of the `{machine.name}` machine.')
    if machine.description:
        lines.append("")
        lines += _docstring_lines(machine.description, 0)
    lines += [
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import ClassVar",
        "",
    ]
    lines += [
        "from statemachine import Event, State",
        "",
        "from servo.reference._base import ReferenceMachine",
        "",
        *_sequence("__all__ = ", [_q(cls)], "", 0, "[", "]"),
        "",
        "",
        f"class {cls}(ReferenceMachine):",
        f'    """The `{machine.name}` machine (table `{machine.table}`)."""',
        "",
        f"    MACHINE: ClassVar[str] = {_q(machine.name)}",
        f"    SOURCE: ClassVar[str] = {_q(f'spec/machines/{machine.name}.toml')}",
        f"    INITIAL: ClassVar[str] = {_q(machine.initial)}",
    ]
    terminal = [_q(s.name) for s in machine.states if s.terminal]
    lines += _sequence("TERMINAL: ClassVar[tuple[str, ...]] = ", terminal, "", 4, "(", ")")
    lines += _sequence(
        "EVENTS: ClassVar[tuple[str, ...]] = ", [_q(e) for e in events], "", 4, "(", ")"
    )
    lines += _sequence(
        "GUARDS: ClassVar[tuple[str, ...]] = ", [_q(g) for g in guards], "", 4, "(", ")"
    )
    lines.append("")
    for state in machine.states:
        args = [_q(state.name), f"value={_q(state.name)}"]
        if state.name == machine.initial:
            args.append("initial=True")
        if state.terminal:
            args.append("final=True")
        lines += _call(f"{state_attribute(state.name)} = State", args, "", 4)
    for event in events:
        lines.append("")
        lines += _event(machine, event)
    for guard in guards:
        lines.append("")
        lines += _call(f"def {guard}", ["self"], " -> bool:", 4)
        lines.append(f'        """Guard `{guard}`: holds when the facts of the event say so."""')
        lines += _call("return self._fact", [_q(guard)], "", 8)
    return "\n".join(lines) + "\n"


def _event(machine: Machine, event: str) -> list[str]:
    rows = [row for row in machine.transitions if row.event == event]
    lines = [f"    {event_attribute(event)} = Event("]
    for position, row in enumerate(rows):
        effects = ", ".join(row.effects) if row.effects else "none"
        lines.append(
            f"        # transitions[{row.index}]: {row.source} -> {row.target}; effects: {effects}"
        )
        operator = "" if position == 0 else "| "
        trailer = "," if position == len(rows) - 1 else ""
        lines += _call(f"{operator}{_transition_head(row)}", _transition_args(row), trailer, 8)
    lines += [f"        id={_q(event)},", f"        name={_q(event)},", "    )"]
    return lines


def _transition_head(row: Transition) -> str:
    return f"{state_attribute(row.source)}.to"


def _transition_args(row: Transition) -> list[str]:
    args = [state_attribute(row.target)]
    if row.guards:
        args.append("cond=[" + ", ".join(_q(g) for g in row.guards) + "]")
    return args


def _events_with_rows(machine: Machine) -> list[str]:
    seen: dict[str, None] = {}
    for row in machine.transitions:
        seen.setdefault(row.event, None)
    return list(seen)


# ------------------------------------------------------------------- layout --


def _call(head: str, args: list[str], trailer: str, indent: int) -> list[str]:
    """`head(args)` on one line if it fits, else one argument per line (ruff's layout)."""
    pad = " " * indent
    one = f"{head}({', '.join(args)}){trailer}"
    if indent + len(one) <= _WIDTH:
        return [pad + one]
    lines = [f"{pad}{head}("]
    for arg in args:
        if arg.startswith("cond=["):
            items = arg[len("cond=[") : -1].split(", ")
            lines += _sequence("cond=", items, ",", indent + 4, "[", "]")
        else:
            lines.append(f"{pad}    {arg},")
    lines.append(f"{pad}){trailer}")
    return lines


def _sequence(
    head: str, items: list[str], trailer: str, indent: int, opening: str, closing: str
) -> list[str]:
    """A collection literal: one line if it fits, else one item per line."""
    pad = " " * indent
    body = ", ".join(items)
    if opening == "(" and len(items) == 1:
        body += ","
    one = f"{head}{opening}{body}{closing}{trailer}"
    if indent + len(one) <= _WIDTH:
        return [pad + one]
    return [
        f"{pad}{head}{opening}",
        *(f"{pad}    {item}," for item in items),
        f"{pad}{closing}{trailer}",
    ]


def _docstring_lines(text: str, indent: int) -> list[str]:
    pad = " " * indent
    clean = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return [(pad + line.strip()) if line.strip() else "" for line in clean.strip().splitlines()]


def _q(text: str) -> str:
    """A double-quoted Python string literal (ruff's preferred quotes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------- checks --


def _check_names(machine: Machine) -> None:
    """Every name the class will define must be a fresh Python identifier."""
    from statemachine import StateMachine

    events = _events_with_rows(machine)
    conventions = set(_CONVENTIONS)
    conventions.update(f"{when}_{e}" for when in ("before", "on", "after") for e in events)
    conventions.update(
        f"on_{when}_{state_attribute(s.name)}"
        for when in ("enter", "exit", "invoke")
        for s in machine.states
    )
    taken = set(dir(StateMachine)) | _BASE_MEMBERS
    owners: dict[str, str] = {}
    guards = sorted({g for row in machine.transitions for g in row.guards})
    candidates: Iterable[tuple[str, str, str]] = [
        *((state_attribute(s.name), f"state {s.name!r}", s.name) for s in machine.states),
        *((event_attribute(e), f"event {e!r}", e) for e in events),
        *((g, f"guard {g!r}", g) for g in guards),
    ]
    for attribute, what, raw in candidates:
        problem = None
        if not _IDENTIFIER.match(raw) or keyword.iskeyword(attribute):
            problem = "is not a Python identifier"
        elif attribute in taken or attribute.startswith("_"):
            problem = f"would shadow {attribute!r} of the reference base class"
        elif attribute in conventions:
            problem = "is a callback name python-statemachine binds by convention"
        elif attribute in owners:
            problem = f"maps to attribute {attribute!r}, already used by {owners[attribute]}"
        if problem:
            raise SpecError(f"{machine.source}: {what} {problem} (needed by the reference class)")
        owners[attribute] = what


_BASE = (
    python_header("machines/*.toml").rstrip("\n")
    + '''
"""The base of every reference machine: guards are facts supplied per event.

A reference class cannot compute a guard (guards are runtime predicates over the
projection), so `fire(event, facts)` makes each guard hold exactly when
`facts[guard]` is true; a guard missing from `facts` does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from statemachine import StateMachine

__all__ = ["ReferenceMachine"]


class ReferenceMachine(StateMachine):
    """A spec machine as a python-statemachine class, driven by `fire`."""

    # Reaching a terminal state from everywhere is not a spec rule; the loader
    # checks what the spec requires (reachability from the initial state, no sinks).
    validate_final_reachability = False

    MACHINE: ClassVar[str] = ""
    """The machine's name in spec/machines/."""
    SOURCE: ClassVar[str] = ""
    """The table the class was generated from."""
    INITIAL: ClassVar[str] = ""
    """The state a new instance starts in."""
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    """The terminal states (no row leaves them)."""
    EVENTS: ClassVar[tuple[str, ...]] = ()
    """Catalog names of the events that have at least one row, in first-row order."""
    GUARDS: ClassVar[tuple[str, ...]] = ()
    """Every guard name the rows use, sorted."""

    def __init__(self, *, start_value: str | None = None) -> None:
        """Start in the initial state, or in `start_value` (a state name)."""
        self._facts: Mapping[str, bool] = {}
        super().__init__(start_value=start_value)

    @property
    def state_name(self) -> str:
        """The current state's name."""
        return str(self.current_state_value)

    def fire(self, event: str, facts: Mapping[str, bool] | None = None) -> str:
        """Send `event` (a catalog name) with `facts` for its guards; return the new state.

        Raises `statemachine.exceptions.TransitionNotAllowed` when no row for the
        current state and `event` has all its guards true (the state is unchanged).
        """
        self._facts = dict(facts) if facts else {}
        try:
            self.send(event)
        finally:
            self._facts = {}
        return self.state_name

    def _fact(self, guard: str) -> bool:
        return bool(self._facts.get(guard, False))
'''
)
