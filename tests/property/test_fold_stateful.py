"""The Layer 1 fold under random event histories with faults (SPEC §3-5).

The state machine (`fold_machine.py`) has one rule per Layer 1 catalog event,
generated from the spec tables, plus duplicate delivery, replay, stale attempts,
events minted in the past, compaction lag and crashes; after every step it checks
INV-1, INV-2, INV-3, INV-6, INV-8 and INV-10 and replays every transition on the
generated reference classes. Profiles: `ci` (default, bounded) and `deep`
(`HYPOTHESIS_PROFILE=deep`, bigger plans and many more examples).
"""

from __future__ import annotations

from fold_machine import FoldMachine, build_fold_machine
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from servo.core._registry import Registry
from servo.spec import Spec

STEPS = 100
"""Steps per example at least: a 12-task plan needs ~40 events to finish, and rules
for faults and redelivery take about half the steps."""


def limits() -> dict[str, int]:
    """Plan sizes for the loaded profile: ~12 tasks in ci, ~30 in deep."""
    if settings.get_current_profile_name() == "deep":
        return {"max_tasks": 30, "max_runs": 3}
    return {"max_tasks": 12, "max_runs": 2}


def test_fold_keeps_layer1_invariants_under_faults(spec: Spec, rules: Registry) -> None:
    """Every invariant holds after every step, and the fold agrees with the reference."""
    machine = build_fold_machine(spec, rules, **limits())
    profile = settings()  # the loaded profile (ci by default, or deep)
    steps = max(STEPS, profile.stateful_step_count)
    run_state_machine_as_test(machine, settings=settings(profile, stateful_step_count=steps))


def test_rules_are_generated_for_every_layer1_event(spec: Spec, rules: Registry) -> None:
    """One rule per non-derived Layer 1 catalog event, named after it."""
    machine = build_fold_machine(spec, rules)
    names = {r.function.__name__ for r in machine.setup_state().rules}
    layer1 = {n for n, e in spec.events.items() if e.layer == 1 and not e.derived}
    assert layer1 <= names
    assert issubclass(machine, FoldMachine)
