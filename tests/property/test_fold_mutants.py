"""The fold state machine catches planted bugs (mutation tests of the stateful suite).

Each test swaps one registered guard or effect (or the engine's row order) for a
buggy version (restored by `monkeypatch`), runs the same state machine as
`test_fold_stateful.py` with a small budget, and requires Hypothesis to find a failing
step list that names the invariant the bug breaks. A mutant that survives means the
suite has gone blind to that bug.
"""

from __future__ import annotations

from typing import Any

import pytest
from fold_machine import build_fold_machine
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from servo.core._registry import GuardEntry, Registry
from servo.core.fold._engine import Engine
from servo.spec import Spec

LIVE = frozenset({"DISPATCHED", "RUNNING"})

MUTANT_BUDGET = settings(
    max_examples=150,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    # Detection is the point here; shrinking a mutant's failure to the minimal step
    # list (RunTriggered, PlanCreated, DispatchRequested, stale fact) costs ~40 s more.
    phases=[Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def failure_of(spec: Spec, rules: Registry) -> str:
    """Run the state machine on the mutated registry; return the failure message."""
    machine = build_fold_machine(spec, rules, max_tasks=4, max_runs=1)
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(machine, settings=MUTANT_BUDGET)
    return str(failure.value)


def test_mutant_attempt_guard_ignoring_attempt_id_is_caught(
    spec: Spec, rules: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attempt_is_current that only checks the task is live lets stale facts in: INV-8."""

    def attempt_is_live(ctx: Any) -> bool:
        return ctx.row.state in LIVE

    monkeypatch.setitem(
        rules.guards, "attempt_is_current", GuardEntry(attempt_is_live, "STALE_ATTEMPT")
    )
    assert "INV-8" in failure_of(spec, rules)


@pytest.mark.parametrize("delta", [+1, -1], ids=["increment", "decrement"])
def test_mutant_unconditional_count_change_is_caught(
    spec: Spec, rules: Registry, monkeypatch: pytest.MonkeyPatch, delta: int
) -> None:
    """resolve_downstream that also counts a non-success upstream (or decrements for
    it) breaks deps_satisfied_count == SUCCESS edges: INV-6."""
    resolve = rules.effects["resolve_downstream"]

    def resolve_and_miscount(ctx: Any) -> None:
        resolve(ctx)
        if ctx.row.state != "SUCCEEDED":
            for key in ctx.part.downstream.get(ctx.row.task_key, ()):
                ctx.part.tasks[key].deps_satisfied_count += delta

    monkeypatch.setitem(rules.effects, "resolve_downstream", resolve_and_miscount)
    assert "INV-6" in failure_of(spec, rules)


def test_mutant_last_matching_row_wins_is_caught(
    spec: Spec, rules: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that tries a (state, event)'s rows last-first diverges from the
    generated reference: the differential check names the transition."""
    compile_rows = Engine._compile

    def reversed_rows(engine: Engine, machine: Any) -> Any:
        return {key: tuple(reversed(rows)) for key, rows in compile_rows(engine, machine).items()}

    monkeypatch.setattr(Engine, "_compile", reversed_rows)
    assert "fold vs reference" in failure_of(spec, rules)
