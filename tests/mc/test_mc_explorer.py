"""The bounded explorer on the real fold and controllers (issue #5), on small configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model_checks import McConfig, chain, diamond, explore, profile
from model_checks._mutants import MUTANTS, applied
from model_checks._universe import Universe
from servo.cli import app
from servo.core._registry import Registry
from servo.spec import Spec

QUIET = {"max_crashes": 0, "max_dup_deliveries": 0, "max_early_fires": 0, "max_cancels": 0,
         "max_reorders": 0, "max_lags": 0, "max_heartbeats": 0}


def mutant(name: str):  # type: ignore[no-untyped-def]
    return next(m for m in MUTANTS if m.name == name)


def test_ci_profile_finds_no_violation_on_a_tiny_config() -> None:
    """The `tiny` configuration (a crash and a cancel on a 2-chain) is explored to
    exhaustion with no violation, reaching end states where every task is terminal."""
    result = explore(profile("tiny")[0])
    assert result.violation is None, result.report()
    assert result.complete and result.quiescent > 0 and result.states > 1000


def test_ci_profile_covers_the_issue_configurations() -> None:
    names = {c.name.split("-")[0] + "-" + c.name.split("-")[1] for c in profile("ci")}
    assert names == {f"{g}-a{a}" for g in ("chain3", "diamond4", "fanout1x3") for a in (1, 2)}


def test_exploration_is_deterministic() -> None:
    cfg = McConfig("det", diamond(1), outcomes=("SUCCEEDED", "FAILED"), max_states=4000, **QUIET)
    first, second = explore(cfg), explore(cfg)
    assert (first.states, first.transitions, first.quiescent) == (second.states, second.transitions, second.quiescent)


@pytest.mark.parametrize(
    ("name", "invariant"),
    [
        ("409-treated-as-failure", "INV-4"),
        ("failure-not-propagated-transitively", "INV-10"),
        ("counter-instead-of-per-edge", "INV-6"),
        ("no-watermark-guard-on-heartbeat-check", "INV-9"),
    ],
)
def test_mutant_is_caught_with_a_short_counterexample(name: str, invariant: str) -> None:
    m = mutant(name)
    with applied(m) as rules:
        result = explore(m.config, rules=rules)
    assert result.violation is not None and result.violation[0] == invariant, result.report()
    assert 1 <= result.length <= 15
    assert len(result.trace) >= result.length


def test_mutants_are_restored_after_use(rules: Registry) -> None:
    before = (dict(rules.guards), dict(rules.effects), dict(rules.locators))
    for m in MUTANTS:
        with applied(m):
            pass
    assert (rules.guards, rules.effects, rules.locators) == before
    assert explore(McConfig("after", chain(1, 1), **QUIET)).violation is None


def test_counterexample_ledger_replays_with_servo_fold(tmp_path: Path) -> None:
    """The written ledger is what `servo fold --json` reads: under the mutant it shows
    the bug (t2 still BLOCKED below a SKIPPED t1), under the real fold it does not."""
    m = mutant("failure-not-propagated-transitively")
    runner = CliRunner()
    with applied(m) as rules:
        result = explore(m.config, rules=rules)
        path = result.write_ledger(tmp_path / "cx.jsonl")
        mutated = runner.invoke(app, ["fold", str(path), "--json"])
    real = runner.invoke(app, ["fold", str(path), "--json"])
    assert mutated.exit_code == 0 and real.exit_code == 0, mutated.output + real.output

    def states(output: str) -> dict[str, str]:
        return {t["task_key"]: t["state"] for t in json.loads(output)["tasks"]}

    assert states(mutated.stdout)["t1"] == "SKIPPED" and states(mutated.stdout)["t2"] == "BLOCKED"
    assert states(real.stdout) == {"t0": "FAILED", "t1": "SKIPPED", "t2": "SKIPPED"}
    assert json.loads(real.stdout)["rejected_events"] == []


def test_incremental_and_canonical_folds_agree_on_every_explored_set(spec: Spec, rules: Registry) -> None:
    """The memoised folds the explorer relies on equal a plain `servo.core.fold.fold`."""
    from servo.core.fold import fold

    cfg = McConfig("agree", chain(2, 2), max_states=5000, **{**QUIET, "max_cancels": 1})
    result = explore(cfg)
    assert result.violation is None
    universe = Universe(cfg, spec, rules)
    from model_checks._model import Model

    model = Model(universe)
    frontier = [model.initial()]
    seen = set(frontier)
    while frontier and len(universe.folds) < 150:
        state = frontier.pop()
        for _, successor in model.expand(state)[0]:
            if successor not in seen:
                seen.add(successor)
                frontier.append(successor)
    for mask, entry in list(universe.folds.items())[:150]:
        events = [universe.events[i].event for i in range(len(universe.events)) if mask >> i & 1]
        assert universe.canonical(mask).tables() == fold(events, spec, rules).tables()
        assert entry.violation is None
