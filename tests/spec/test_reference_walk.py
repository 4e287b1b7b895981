"""Walk every declared row through the generated reference classes.

Each row, started in its `from` state with facts making its guards true and every
earlier row's (same from and event) false, must land on its `to` state; every
(state, catalog event) pair with no row, and every pair whose rows' guards all
fail, must raise `TransitionNotAllowed` and leave the state unchanged.
"""

from __future__ import annotations

import pytest
from statemachine.exceptions import TransitionNotAllowed

from servo.codegen import class_name
from servo.reference import MACHINES, ReferenceMachine
from servo.spec import Machine, Spec, Transition, default_spec_dir, load_spec

SPEC: Spec = load_spec(default_spec_dir())

ROWS = [
    pytest.param(m, row, id=f"{m.name}[{row.index}]-{row.source}-{row.event}-{row.target}")
    for m in SPEC.machines.values()
    for row in m.transitions
]
STATES = [
    pytest.param(m, state.name, id=f"{m.name}-{state.name}")
    for m in SPEC.machines.values()
    for state in m.states
]


def reference(machine: Machine) -> type[ReferenceMachine]:
    cls = MACHINES[machine.name]
    assert cls.__name__ == class_name(machine.name)
    return cls


def facts_choosing(machine: Machine, row: Transition) -> dict[str, bool]:
    """Facts under which `row` is the first row of its (from, event) to hold."""
    earlier = [r for r in machine.rows(row.source, row.event) if r.index < row.index]
    for other in earlier:
        assert set(other.guards) - set(row.guards), (
            f"{machine.source}: transitions[{row.index}] is unreachable: "
            f"transitions[{other.index}] holds whenever it does"
        )
    facts = dict.fromkeys(sorted({g for r in machine.transitions for g in r.guards}), False)
    facts.update(dict.fromkeys(row.guards, True))
    return facts


def test_every_machine_has_a_reference_class() -> None:
    assert sorted(MACHINES) == sorted(SPEC.machines)


@pytest.mark.parametrize("machine", list(SPEC.machines.values()), ids=list(SPEC.machines))
def test_reference_class_mirrors_the_table(machine: Machine) -> None:
    cls = reference(machine)
    assert machine.name == cls.MACHINE
    assert machine.initial == cls.INITIAL
    assert set(cls.TERMINAL) == machine.terminal_states
    assert list(cls.EVENTS) == list(dict.fromkeys(r.event for r in machine.transitions))
    assert cls().state_name == machine.initial
    assert [s.value for s in cls.states] == [s.name for s in machine.states]
    assert {s.value for s in cls.final_states} == machine.terminal_states


@pytest.mark.parametrize(("machine", "row"), ROWS)
def test_row_lands_on_its_target(machine: Machine, row: Transition) -> None:
    sm = reference(machine)(start_value=row.source)
    assert sm.fire(row.event, facts_choosing(machine, row)) == row.target


@pytest.mark.parametrize(("machine", "state"), STATES)
def test_events_without_an_accepting_row_are_not_allowed(machine: Machine, state: str) -> None:
    """No row for (state, event), or every row's guards false: TransitionNotAllowed."""
    cls = reference(machine)
    for event in [*sorted(SPEC.events), "NotInTheCatalog"]:
        rows = machine.rows(state, event)
        if any(not row.guards for row in rows):
            continue  # an unguarded row always accepts
        sm = cls(start_value=state)
        with pytest.raises(TransitionNotAllowed):
            sm.fire(event, {})
        assert sm.state_name == state, (state, event)


@pytest.mark.parametrize(("machine", "state"), STATES)
def test_first_row_whose_guards_hold_wins(machine: Machine, state: str) -> None:
    """With every guard true, each event lands on the target of its first row."""
    cls = reference(machine)
    every_guard = dict.fromkeys(cls.GUARDS, True)
    for event in machine.events:
        rows = machine.rows(state, event)
        if rows:
            assert cls(start_value=state).fire(event, every_guard) == rows[0].target
