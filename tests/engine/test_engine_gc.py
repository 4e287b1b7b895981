"""The engine collects superseded derived state while it runs (ADR 015)."""

from __future__ import annotations

from pathlib import Path

from engine_audit import Audit

from servo.api import Pipeline
from servo.compactor import ProjectionReader, StateView
from servo.core._registry import Registry
from servo.core.rules import default_spec
from servo.engine import EmbeddedEngine, Home
from servo.spec import Spec


def chain(name: str, length: int) -> Pipeline:
    pipeline = Pipeline(name)
    previous: list[str] = []
    for index in range(length):
        pipeline.task(lambda: None, name=f"t{index}", depends_on=previous)
        previous = [f"t{index}"]
    return pipeline


def state_objects(home: Home) -> int:
    return len(home.store.list_prefix("state/")) + len(home.store.list_prefix("manifests/"))


def test_a_long_run_keeps_only_the_state_its_latest_base_needs(tmp_path: Path, spec: Spec, rules: Registry) -> None:
    kept = Home.open(tmp_path / "kept")
    collected = Home.open(tmp_path / "collected")
    for home, grace in ((kept, None), (collected, 0.0)):
        engine = EmbeddedEngine(home, chain("gc", 60), poll_seconds=0.01, gc_grace_sec=grace)
        assert engine.run(timeout=120).state == "SUCCEEDED"

    # Without GC every delta, base and manifest of the run stays; with it, nothing
    # older than the newest base (plus the ledger, which is never touched).
    def oldest(home: Home) -> tuple[int, int]:
        state = min(int(n.split("/")[2][:12]) for n in home.store.list_prefix("state/"))
        manifests = min(int(n.split("/")[1][:12]) for n in home.store.list_prefix("manifests/0"))
        return state, manifests

    newest_base = max(int(n.split("/")[2][:12]) for n in collected.store.list_prefix("state/base/"))
    assert newest_base > 1
    assert oldest(collected) == (newest_base, newest_base)
    assert oldest(kept)[0] < newest_base and oldest(kept)[1] == 1
    assert state_objects(collected) < state_objects(kept)
    assert len(collected.store.list_prefix("ledger/")) == len(Audit.of(collected, spec, rules).events)
    audit = Audit.of(collected, spec, rules)
    published = ProjectionReader(StateView(collected.store), default_spec()).read().tables
    assert published["tasks"] == audit.tables["tasks"]
    assert published["runs"] == audit.tables["runs"]
    assert audit.successes() == {f"t{i}": 1 for i in range(60)}
