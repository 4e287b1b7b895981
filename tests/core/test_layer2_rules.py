"""Layer 2 guards, effects and locators, one by one and through their machines' rows.

Each guard has a case where it holds and one where it does not; each effect is checked
for the rows it writes. `_Fold` is a minimal stand-in for the (future) Layer 2 fold: it
applies one event to one instance by the spec rows (get-or-create on `created_by`, first
row whose guards hold wins, state set by the row, then its effects), so the machines and
their rules are also tested together.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import servo.core.layer2
from servo.core._registry import REGISTRY
from servo.core.ids import run_id_from_run_key
from servo.core.layer2 import L2Context, Row, Tables
from servo.spec import Machine, Spec, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC: Spec = load_spec(ROOT / "spec")
SECRET = b"secret"
EID = "01JD0000000000000000000001"
AT = "2026-01-01T00:00:00Z"


def run_id_of(run_key: str) -> str:
    return run_id_from_run_key(SECRET, "acme", "prod", run_key)


def ctx(
    row: Row | None = None,
    data: Mapping[str, object] | None = None,
    tables: Tables | None = None,
    event_id: str = EID,
) -> L2Context:
    return L2Context(
        row={} if row is None else row,
        data={} if data is None else data,
        event_id=event_id,
        tables={} if tables is None else tables,
        occurred_at=AT,
        run_id_of=run_id_of,
    )


def guard(name: str, c: L2Context) -> bool:
    return bool(REGISTRY.guards[name].fn(c))


def effect(name: str, c: L2Context) -> None:
    REGISTRY.effects[name](c)


def columns(table: str) -> set[str]:
    return set(SPEC.tables[table].column_names)


# ------------------------------------------------------------ a tiny fold --


class _Fold:
    """Applies Layer 2 events through the spec rows; instance rows live in `tables`."""

    def __init__(self) -> None:
        self.tables: Tables = {}
        self.seq = 0

    def apply(self, machine_name: str, event: str, data: Mapping[str, object]) -> str | None:
        """The target state, or None when no row accepts (nothing changes)."""
        machine: Machine = SPEC.machines[machine_name]
        key = REGISTRY.locators[machine.locator](data)
        assert key is not None
        table = self.tables.setdefault(machine.table, {})
        row = table.get(key)
        created = row is None
        if created:
            assert event in machine.created_by, f"no {machine_name} for {event}"
            pk = SPEC.tables[machine.table].primary_key
            row = {**dict(zip(pk, key, strict=True)), "state": machine.initial}
        assert row is not None
        self.seq += 1
        event_id = f"01JD{self.seq:022d}"
        for transition in machine.rows(str(row["state"]), event):
            c = ctx(row, data, self.tables, event_id)
            if all(guard(g, c) for g in transition.guards):
                row["state"] = transition.target
                row["row_version"] = event_id
                for name in transition.effects:
                    effect(name, c)
                table[key] = row
                return transition.target
        return None

    def row(self, table: str, *key: str) -> Row:
        return self.tables[table][key]


# ---------------------------------------------------------------- registry --


def _layer2_names() -> tuple[set[str], set[str], set[str]]:
    guards: set[str] = set()
    effects: set[str] = set()
    locators: set[str] = set()
    for name in servo.core.layer2.LAYER2_MACHINES:
        machine = SPEC.machines[name]
        locators.add(machine.locator)
        for row in machine.transitions:
            guards.update(row.guards)
            effects.update(row.effects)
    return guards, effects, locators


def test_every_layer2_rule_name_is_registered() -> None:
    """Every guard, effect and locator the five Layer 2 machines name is in the registry."""
    guards, effects, locators = _layer2_names()
    names = REGISTRY.names()
    assert guards <= names.guards, sorted(guards - names.guards)
    assert effects <= names.effects, sorted(effects - names.effects)
    assert locators <= names.locators, sorted(locators - names.locators)


def test_layer2_rule_names_are_not_used_by_layer1_rows() -> None:
    """A Layer 2 rule never shares a name with a Layer 1 row's rule (one name, one meaning)."""
    l2 = set().union(*_layer2_names())
    for machine in SPEC.machines.values():
        if machine.name in servo.core.layer2.LAYER2_MACHINES:
            continue
        used = {machine.locator} | {n for r in machine.transitions for n in (*r.guards, *r.effects)}
        assert not (l2 & used), (machine.name, sorted(l2 & used))


def test_layer2_guards_reject_with_a_known_reason() -> None:
    from servo.spec import REJECT_REASONS

    guards, _, _ = _layer2_names()
    for name in guards:
        assert REGISTRY.guards[name].rejects in REJECT_REASONS, name


# ---------------------------------------------------------------- locators --


def test_locators_key_instances_by_their_ulid_or_run_key() -> None:
    locate = REGISTRY.locators
    assert locate["backfill_of_event"]({"backfill_id": "B1"}) == ("B1",)
    assert locate["schedule_of_event"]({"schedule_id": "S1"}) == ("S1",)
    assert locate["sensor_of_event"]({"sensor_id": "N1"}) == ("N1",)
    assert locate["run_key_of_event"]({"run_key": "sched:S1:60"}) == ("sched:S1:60",)


def test_partition_of_event_keys_by_asset_and_partition() -> None:
    locate = REGISTRY.locators["partition_of_event"]
    assert locate({"asset_key": "sales", "partition_key": "2026-01-01"}) == ("sales", "2026-01-01")
    assert locate({"asset_key": "sales", "partition_key": None}) == ("sales", "")
    assert locate({"asset_key": None, "partition_key": "2026-01-01"}) is None


# ---------------------------------------------------------------- backfill --


def backfill_created(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "backfill_id": "B1",
        "client_request_id": "req-1",
        "asset_selection": ["sales"],
        "partition_selector": {"kind": "LIST", "keys": ["p0", "p1", "p2", "p3", "p4"]},
        "total_partitions": 5,
        "chunk_size": 2,
        "max_concurrent_runs": 2,
        "parent_backfill_id": None,
        "code_version": "v1",
    }
    data.update(over)
    return data


def backfill_row(**over: Any) -> Row:
    row: Row = {"backfill_id": "B1", "state": "PENDING"}
    effect("record_backfill", ctx(row, backfill_created()))
    row.update(over)
    return row


def chunk(index: int, **over: Any) -> dict[str, Any]:
    keys = ["p0", "p1", "p2", "p3", "p4"][index * 2 : index * 2 + 2]
    data: dict[str, Any] = {
        "backfill_id": "B1",
        "chunk_id": f"B1:{index}",
        "chunk_index": index,
        "partition_keys": keys,
        "run_key": f"backfill:B1:chunk:{index}",
        "request_fingerprint": f"fp-{index}",
    }
    data.update(over)
    return data


def state_change(version: int, source: str, target: str) -> dict[str, Any]:
    return {
        "backfill_id": "B1",
        "from_state": source,
        "to_state": target,
        "state_version": version,
        "changed_by": "ops",
    }


def test_backfill_is_new_only_before_its_creation_is_recorded() -> None:
    assert guard("backfill_is_new", ctx({"backfill_id": "B1", "state": "PENDING"}))
    assert not guard("backfill_is_new", ctx(backfill_row()))


@pytest.mark.parametrize(
    "selector",
    [
        {"kind": "RANGE", "start": "2026-01-01", "end": "2026-12-31"},
        {"kind": "LIST", "keys": ["p0", "p1", "p2", "p3", "p4"]},
        {"kind": "FILTER", "filter": "region = 'eu'"},
    ],
)
def test_partition_selector_is_compact_accepts_each_kind(selector: dict[str, Any]) -> None:
    assert guard(
        "partition_selector_is_compact", ctx(data=backfill_created(partition_selector=selector))
    )


@pytest.mark.parametrize(
    "over",
    [
        {
            "partition_selector": {"kind": "LIST", "keys": [f"p{i}" for i in range(1001)]},
            "total_partitions": 1001,
        },
        {"partition_selector": {"kind": "LIST", "keys": ["p0", "p0", "p1", "p2", "p3"]}},
        {"partition_selector": {"kind": "LIST", "keys": ["p0", "p1"]}},
        {"partition_selector": {"kind": "RANGE", "start": "2026-01-01"}},
        {"partition_selector": {"kind": "FILTER"}},
        {"chunk_size": 0},
        {"max_concurrent_runs": 0},
    ],
)
def test_partition_selector_is_compact_rejects_giant_or_incomplete_selectors(
    over: dict[str, Any],
) -> None:
    assert not guard("partition_selector_is_compact", ctx(data=backfill_created(**over)))


def test_parent_backfill_is_finished() -> None:
    tables: Tables = {"backfills": {("P",): {"backfill_id": "P", "state": "FAILED"}}}
    assert guard("parent_backfill_is_finished", ctx(data=backfill_created(), tables=tables))
    assert guard(
        "parent_backfill_is_finished",
        ctx(data=backfill_created(parent_backfill_id="P"), tables=tables),
    )
    tables["backfills"][("P",)]["state"] = "RUNNING"
    assert not guard(
        "parent_backfill_is_finished",
        ctx(data=backfill_created(parent_backfill_id="P"), tables=tables),
    )
    assert not guard(
        "parent_backfill_is_finished", ctx(data=backfill_created(parent_backfill_id="X"))
    )


def test_record_backfill_writes_the_definition_at_state_version_zero() -> None:
    row = backfill_row()
    assert row["state_version"] == 0
    assert row["total_chunks"] == 3
    assert row["chunks_planned"] == 0
    assert row["in_flight_run_keys"] == []
    assert row["partition_selector"] == {"kind": "LIST", "keys": ["p0", "p1", "p2", "p3", "p4"]}
    assert set(row) | {"row_version"} == columns("backfills")


def test_state_version_is_next_rejects_wrong_version() -> None:
    """L2-INV-6: only current + 1 is accepted; a replayed or skipped version is not."""
    row = backfill_row(state_version=3)
    assert guard("state_version_is_next", ctx(row, state_change(4, "PENDING", "RUNNING")))
    for version in (2, 3, 5):
        assert not guard(
            "state_version_is_next", ctx(row, state_change(version, "PENDING", "RUNNING"))
        )


def test_from_state_matches() -> None:
    row = backfill_row(state="RUNNING")
    assert guard("from_state_matches", ctx(row, state_change(1, "RUNNING", "PAUSED")))
    assert not guard("from_state_matches", ctx(row, state_change(1, "PAUSED", "RUNNING")))


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("to_running", "RUNNING"),
        ("to_paused", "PAUSED"),
        ("to_succeeded", "SUCCEEDED"),
        ("to_failed", "FAILED"),
        ("to_cancelled", "CANCELLED"),
    ],
)
def test_target_state_guards(name: str, target: str) -> None:
    assert guard(name, ctx(backfill_row(), state_change(1, "RUNNING", target)))
    assert not guard(name, ctx(backfill_row(), state_change(1, "RUNNING", "PENDING")))


def test_all_chunks_planned() -> None:
    assert guard("all_chunks_planned", ctx(backfill_row(chunks_planned=3)))
    assert not guard("all_chunks_planned", ctx(backfill_row(chunks_planned=2)))


def test_record_backfill_state_change_adopts_the_version() -> None:
    row = backfill_row()
    effect("record_backfill_state_change", ctx(row, state_change(1, "PENDING", "RUNNING")))
    assert (row["state_version"], row["changed_by"]) == (1, "ops")


def test_chunk_is_new_rejects_a_planned_chunk_id() -> None:
    """L2-INV-7: the same chunk_id is planned once."""
    tables: Tables = {}
    assert guard("chunk_is_new", ctx(backfill_row(), chunk(0), tables))
    effect("record_chunk", ctx(backfill_row(), chunk(0), tables))
    assert not guard("chunk_is_new", ctx(backfill_row(), chunk(0), tables))


def test_chunk_within_selector_accepts_each_exact_chunk() -> None:
    for index in range(3):
        assert guard("chunk_within_selector", ctx(backfill_row(), chunk(index)))


@pytest.mark.parametrize(
    "data",
    [
        chunk(3, chunk_id="B1:3", partition_keys=["p5"]),
        chunk(0, chunk_id="B1:00"),
        chunk(0, run_key="backfill:B1:chunk:1"),
        chunk(0, partition_keys=["p0"]),
        chunk(2, partition_keys=["p4", "p5"]),
        chunk(0, partition_keys=["p1", "p0"]),
        chunk(0, partition_keys=["p0", "p0"]),
    ],
)
def test_chunk_within_selector_rejects_foreign_chunks(data: dict[str, Any]) -> None:
    assert not guard("chunk_within_selector", ctx(backfill_row(), data))


def test_chunk_within_selector_checks_only_count_for_range_selectors() -> None:
    row = backfill_row(partition_selector={"kind": "RANGE", "start": "a", "end": "z"})
    assert guard("chunk_within_selector", ctx(row, chunk(0, partition_keys=["x", "y"])))
    assert not guard("chunk_within_selector", ctx(row, chunk(0, partition_keys=["x"])))


def _bind(tables: Tables, run_key: str, run_state: str | None) -> None:
    run_id = run_id_of(run_key)
    tables.setdefault("run_keys", {})[(run_key,)] = {"run_key": run_key, "run_id": run_id}
    if run_state is not None:
        tables.setdefault("runs", {})[(run_id,)] = {"run_id": run_id, "state": run_state}


def test_under_max_concurrent_runs_counts_only_unfinished_chunk_runs() -> None:
    """L2-INV-9: max_concurrent_runs bounds the chunk runs in flight."""
    keys = ["backfill:B1:chunk:0", "backfill:B1:chunk:1"]
    row = backfill_row(in_flight_run_keys=keys)
    tables: Tables = {}
    assert not guard("under_max_concurrent_runs", ctx(row, chunk(2), tables))  # not even bound yet
    _bind(tables, keys[0], "RUNNING")
    _bind(tables, keys[1], None)
    assert not guard("under_max_concurrent_runs", ctx(row, chunk(2), tables))
    _bind(tables, keys[0], "FAILED")
    assert guard("under_max_concurrent_runs", ctx(row, chunk(2), tables))


def test_record_chunk_writes_the_chunk_and_prunes_finished_runs() -> None:
    tables: Tables = {}
    row = backfill_row(in_flight_run_keys=["backfill:B1:chunk:0"], chunks_planned=1)
    _bind(tables, "backfill:B1:chunk:0", "SUCCEEDED")
    effect("record_chunk", ctx(row, chunk(1), tables))
    assert tables["backfill_chunks"][("B1:1",)] == {
        "chunk_id": "B1:1",
        "backfill_id": "B1",
        "chunk_index": 1,
        "partition_keys": ["p2", "p3"],
        "run_key": "backfill:B1:chunk:1",
        "request_fingerprint": "fp-1",
        "row_version": EID,
    }
    assert set(tables["backfill_chunks"][("B1:1",)]) == columns("backfill_chunks")
    assert row["in_flight_run_keys"] == ["backfill:B1:chunk:1"]
    assert row["chunks_planned"] == 2


def test_paused_backfill_has_no_chunk_planning_row() -> None:
    """L2-INV-9: only RUNNING plans chunks, and only under max_concurrent_runs."""
    machine = SPEC.machines["backfill"]
    for state in ("PENDING", "PAUSED"):
        assert machine.rows(state, "BackfillChunkPlanned") == ()
    (row,) = machine.rows("RUNNING", "BackfillChunkPlanned")
    assert {"chunk_is_new", "under_max_concurrent_runs"} <= set(row.guards)


def test_every_backfill_state_change_row_checks_version_and_from_state() -> None:
    """L2-INV-6 in the table: no BackfillStateChanged row skips the version check."""
    rows = [r for r in SPEC.machines["backfill"].transitions if r.event == "BackfillStateChanged"]
    assert rows
    for row in rows:
        assert row.guards[:2] == ("state_version_is_next", "from_state_matches"), row.label


def test_backfill_lifecycle_through_the_rows() -> None:
    """Pause stops planning, a stale version is refused, resume plans again."""
    fold = _Fold()
    assert fold.apply("backfill", "BackfillCreated", backfill_created()) == "PENDING"
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(0)) is None
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(1, "PENDING", "RUNNING"))
        == "RUNNING"
    )
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(0)) == "RUNNING"
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(0)) is None  # same chunk_id
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(2, "RUNNING", "PAUSED"))
        == "PAUSED"
    )
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(1)) is None  # paused
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(2, "PAUSED", "RUNNING")) is None
    )
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(3, "PAUSED", "RUNNING"))
        == "RUNNING"
    )
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(1)) == "RUNNING"
    assert fold.apply("backfill", "BackfillChunkPlanned", chunk(2)) is None  # 2 runs in flight
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(4, "RUNNING", "SUCCEEDED"))
        is None
    )
    assert (
        fold.apply("backfill", "BackfillStateChanged", state_change(4, "RUNNING", "CANCELLED"))
        == "CANCELLED"
    )
    row = fold.row("backfills", "B1")
    assert (row["state_version"], row["chunks_planned"]) == (4, 2)
    assert set(row) == columns("backfills")


# ---------------------------------------------------------------- schedule --


def schedule_def(version: int = 1, enabled: bool = True, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schedule_id": "S1",
        "name": "nightly",
        "cron_expression": "0 0 * * *",
        "timezone": "Europe/Paris",
        "catchup_window_minutes": 60,
        "max_catchup_ticks": 3,
        "asset_selection": ["sales", "costs"],
        "enabled": enabled,
        "code_version": None,
        "definition_version": version,
    }
    data.update(over)
    return data


def tick(epoch: int = 1767225600, status: str = "TRIGGERED", **over: Any) -> dict[str, Any]:
    at = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    triggered = status == "TRIGGERED"
    data: dict[str, Any] = {
        "schedule_id": "S1",
        "tick_id": f"S1:{epoch}",
        "scheduled_for": at,
        "definition_version": 1,
        "asset_selection": ["sales"],
        "partition_selection": None,
        "status": status,
        "reason": None if triggered else "no new data",
        "run_key": f"sched:S1:{epoch}" if triggered else None,
        "request_fingerprint": "fp" if triggered else None,
    }
    data.update(over)
    return data


def schedule_row(**over: Any) -> Row:
    row: Row = {"schedule_id": "S1", "state": "ENABLED"}
    effect("record_schedule_definition", ctx(row, schedule_def()))
    row.update(over)
    return row


def test_definition_enabled() -> None:
    assert guard("definition_enabled", ctx(data=schedule_def(enabled=True)))
    assert not guard("definition_enabled", ctx(data=schedule_def(enabled=False)))


def test_definition_version_is_newer() -> None:
    row = schedule_row(definition_version=2)
    assert guard("definition_version_is_newer", ctx(row, schedule_def(version=3)))
    assert not guard("definition_version_is_newer", ctx(row, schedule_def(version=2)))
    assert not guard("definition_version_is_newer", ctx(row, schedule_def(version=1)))


def test_record_schedule_definition_keeps_tick_bookkeeping() -> None:
    row = schedule_row(last_tick_id="S1:60")
    effect(
        "record_schedule_definition", ctx(row, schedule_def(version=2, cron_expression="5 * * * *"))
    )
    assert (row["definition_version"], row["cron_expression"], row["last_tick_id"]) == (
        2,
        "5 * * * *",
        "S1:60",
    )
    assert set(row) | {"row_version"} == columns("schedules")


def test_tick_is_new_rejects_a_recorded_tick_id() -> None:
    """L2-INV-1: the same tick_id is a no-op."""
    tables: Tables = {}
    assert guard("tick_is_new", ctx(schedule_row(), tick(), tables))
    effect("record_tick", ctx(schedule_row(), tick(), tables))
    assert not guard("tick_is_new", ctx(schedule_row(), tick(status="SKIPPED"), tables))


def test_tick_id_matches() -> None:
    assert guard("tick_id_matches", ctx(schedule_row(), tick()))
    assert not guard("tick_id_matches", ctx(schedule_row(), tick(tick_id="S1:1767225601")))
    assert not guard("tick_id_matches", ctx(schedule_row(schedule_id="S2"), tick()))


@pytest.mark.parametrize("status", ["TRIGGERED", "SKIPPED", "FAILED"])
def test_tick_status_guards(status: str) -> None:
    for name in ("tick_status_triggered", "tick_status_skipped", "tick_status_failed"):
        assert guard(name, ctx(schedule_row(), tick(status=status))) == name.endswith(
            status.lower()
        )


def test_tick_run_key_matches() -> None:
    assert guard("tick_run_key_matches", ctx(schedule_row(), tick()))
    assert not guard("tick_run_key_matches", ctx(schedule_row(), tick(run_key="sched:S1:0")))
    assert not guard("tick_run_key_matches", ctx(schedule_row(), tick(request_fingerprint=None)))


def test_record_tick_uses_the_embedded_snapshot() -> None:
    """L2-INV-11: the tick history keeps the tick's definition snapshot, not the current one."""
    tables: Tables = {}
    row = schedule_row(definition_version=3)
    effect("record_tick", ctx(row, tick(definition_version=2, asset_selection=["sales"]), tables))
    recorded = tables["schedule_ticks"][("S1:1767225600",)]
    assert (recorded["definition_version"], recorded["asset_selection"]) == (2, ["sales"])
    assert (row["definition_version"], row["asset_selection"]) == (3, ["sales", "costs"])
    assert set(recorded) == columns("schedule_ticks")


def test_record_tick_keeps_the_latest_scheduled_for() -> None:
    tables: Tables = {}
    row = schedule_row()
    effect("record_tick", ctx(row, tick(1767225600), tables))
    effect("record_tick", ctx(row, tick(1767139200, status="SKIPPED"), tables))
    assert (row["last_tick_id"], row["last_tick_status"]) == ("S1:1767225600", "TRIGGERED")
    assert len(tables["schedule_ticks"]) == 2


def test_schedule_lifecycle_through_the_rows() -> None:
    fold = _Fold()
    assert (
        fold.apply("schedule_tick", "ScheduleDefinitionUpserted", schedule_def(1, enabled=False))
        == "DISABLED"
    )
    assert fold.apply("schedule_tick", "ScheduleDefinitionUpserted", schedule_def(2)) == "ENABLED"
    assert (
        fold.apply("schedule_tick", "ScheduleDefinitionUpserted", schedule_def(2, enabled=False))
        is None
    )
    assert fold.apply("schedule_tick", "ScheduleTicked", tick()) == "ENABLED"
    assert fold.apply("schedule_tick", "ScheduleTicked", tick()) is None
    assert (
        fold.apply("schedule_tick", "ScheduleTicked", tick(1767139200, run_key="sched:S1:1"))
        is None
    )
    assert (
        fold.apply("schedule_tick", "ScheduleTicked", tick(1767139200, status="FAILED"))
        == "ENABLED"
    )
    assert set(fold.row("schedules", "S1")) == columns("schedules")


# ------------------------------------------------------------------ sensor --


def sensor_def(kind: str = "POLL", version: int = 1, enabled: bool = True) -> dict[str, Any]:
    return {
        "sensor_id": "N1",
        "name": "new files",
        "kind": kind,
        "asset_selection": ["raw"],
        "poll_interval_sec": 30 if kind == "POLL" else None,
        "enabled": enabled,
        "definition_version": version,
    }


def run_request(run_key: str = "sensor:N1:a", fingerprint: str = "fp-a") -> dict[str, Any]:
    return {"run_key": run_key, "request_fingerprint": fingerprint, "asset_selection": ["raw"]}


def evaluation(
    eval_id: str = "E1",
    kind: str = "POLL",
    expected: int | None = 0,
    status: str = "TRIGGERED",
    **over: Any,
) -> dict[str, Any]:
    source: dict[str, Any] = {"kind": kind}
    source.update({"poll_epoch": 1767225600} if kind == "POLL" else {"message_id": "m-1"})
    data: dict[str, Any] = {
        "sensor_id": "N1",
        "eval_id": eval_id,
        "trigger_source": source,
        "cursor_before": None,
        "cursor_after": "c1" if kind == "POLL" else None,
        "expected_state_version": expected if kind == "POLL" else None,
        "run_requests": [run_request()] if status == "TRIGGERED" else [],
        "status": status,
    }
    data.update(over)
    return data


def sensor_row(kind: str = "POLL", **over: Any) -> Row:
    row: Row = {"sensor_id": "N1", "state": "ENABLED"}
    effect("record_sensor_definition", ctx(row, sensor_def(kind)))
    row.update(over)
    return row


def test_record_sensor_definition_keeps_the_cursor() -> None:
    row = sensor_row(cursor="c9", state_version=4)
    effect("record_sensor_definition", ctx(row, sensor_def(version=2, enabled=False)))
    assert (row["cursor"], row["state_version"], row["enabled"]) == ("c9", 4, False)
    assert set(row) | {"row_version"} == columns("sensors")


def test_eval_is_new() -> None:
    tables: Tables = {}
    assert guard("eval_is_new", ctx(sensor_row(), evaluation(), tables))
    effect("record_evaluation", ctx(sensor_row(), evaluation(), tables))
    assert not guard("eval_is_new", ctx(sensor_row(), evaluation(), tables))


def test_is_push_evaluation() -> None:
    assert guard("is_push_evaluation", ctx(sensor_row("PUSH"), evaluation(kind="PUSH")))
    assert not guard("is_push_evaluation", ctx(sensor_row("POLL"), evaluation(kind="PUSH")))
    assert not guard("is_push_evaluation", ctx(sensor_row("PUSH"), evaluation(kind="POLL")))
    no_message = evaluation(kind="PUSH", trigger_source={"kind": "PUSH", "message_id": None})
    assert not guard("is_push_evaluation", ctx(sensor_row("PUSH"), no_message))


def test_is_poll_evaluation() -> None:
    assert guard("is_poll_evaluation", ctx(sensor_row("POLL"), evaluation()))
    assert not guard("is_poll_evaluation", ctx(sensor_row("PUSH"), evaluation()))
    no_epoch = evaluation(trigger_source={"kind": "POLL", "poll_epoch": None})
    assert not guard("is_poll_evaluation", ctx(sensor_row("POLL"), no_epoch))


def test_stale_expected_state_version_is_dropped() -> None:
    """L2-INV-12: a poll computed from another state_version (or none) is dropped."""
    row = sensor_row(state_version=2)
    assert guard("expected_state_version_matches", ctx(row, evaluation(expected=2)))
    for stale in (0, 1, 3, None):
        assert not guard("expected_state_version_matches", ctx(row, evaluation(expected=stale)))
    moved = sensor_row(state_version=2, cursor="c5")
    assert not guard("expected_state_version_matches", ctx(moved, evaluation(expected=2)))
    assert guard(
        "expected_state_version_matches", ctx(moved, evaluation(expected=2, cursor_before="c5"))
    )


def test_replayed_poll_evaluation_is_dropped_by_cas() -> None:
    """L2-INV-3 / L2-INV-12: once a poll is accepted, the same poll (same cursor_before and
    epoch, even under another eval_id) no longer matches the sensor's state_version."""
    row = sensor_row()
    first = evaluation("E1", expected=0)
    assert guard("expected_state_version_matches", ctx(row, first))
    effect("advance_cursor", ctx(row, first))
    assert (row["cursor"], row["state_version"]) == ("c1", 1)
    assert not guard("expected_state_version_matches", ctx(row, evaluation("E2", expected=0)))


def test_run_requests_match_status() -> None:
    assert guard("run_requests_match_status", ctx(sensor_row(), evaluation()))
    assert guard("run_requests_match_status", ctx(sensor_row(), evaluation(status="NO_NEW_DATA")))
    assert not guard("run_requests_match_status", ctx(sensor_row(), evaluation(run_requests=[])))
    assert not guard(
        "run_requests_match_status",
        ctx(sensor_row(), evaluation(status="SKIPPED", run_requests=[run_request()])),
    )
    twice = evaluation(run_requests=[run_request(), run_request(fingerprint="fp-b")])
    assert not guard("run_requests_match_status", ctx(sensor_row(), twice))


def test_record_evaluation_writes_the_history_row() -> None:
    tables: Tables = {}
    row = sensor_row()
    effect("record_evaluation", ctx(row, evaluation(), tables))
    recorded = tables["sensor_evals"][("E1",)]
    assert recorded["trigger_kind"] == "POLL"
    assert recorded["poll_epoch"] == 1767225600
    assert recorded["run_requests"] == [run_request()]
    assert set(recorded) == columns("sensor_evals")
    assert (row["last_eval_id"], row["last_eval_status"]) == ("E1", "TRIGGERED")


def test_advance_cursor_keeps_the_cursor_when_none_is_given() -> None:
    row = sensor_row(cursor="c0", state_version=5)
    effect("advance_cursor", ctx(row, evaluation(status="ERROR", cursor_after=None, expected=5)))
    assert (row["cursor"], row["state_version"]) == ("c0", 6)


def test_sensor_evaluations_through_the_rows() -> None:
    fold = _Fold()
    assert fold.apply("sensor_eval", "SensorDefinitionUpserted", sensor_def()) == "ENABLED"
    assert fold.apply("sensor_eval", "SensorEvaluated", evaluation("E1", expected=0)) == "ENABLED"
    assert fold.apply("sensor_eval", "SensorEvaluated", evaluation("E2", expected=0)) is None
    assert fold.apply("sensor_eval", "SensorEvaluated", evaluation("E3", kind="PUSH")) is None
    assert (
        fold.apply("sensor_eval", "SensorDefinitionUpserted", sensor_def(enabled=False, version=2))
        == "DISABLED"
    )
    assert (
        fold.apply(
            "sensor_eval", "SensorEvaluated", evaluation("E2", expected=1, cursor_before="c1")
        )
        == "DISABLED"
    )
    sensor = fold.row("sensors", "N1")
    assert (sensor["state_version"], sensor["last_eval_id"]) == (2, "E2")
    assert set(sensor) == columns("sensors")


# ----------------------------------------------------------------- run key --


def run_requested(
    run_key: str = "sched:S1:1767225600",
    fingerprint: str = "fp",
    kind: str = "SCHEDULE",
    source_id: str = "S1",
    origin: str | None = "S1:1767225600",
    **over: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_key": run_key,
        "request_fingerprint": fingerprint,
        "asset_selection": ["sales"],
        "partition_selection": None,
        "source_ref": {"kind": kind, "id": source_id, "tick_or_eval_id": origin},
        "labels": {"team": "data"},
        "code_version": None,
    }
    data.update(over)
    return data


def ticked_tables() -> Tables:
    tables: Tables = {}
    effect("record_tick", ctx(schedule_row(), tick(), tables))
    return tables


def test_run_id_is_the_hmac_of_the_run_key() -> None:
    """L2-INV-4 / SPEC §3: the run_id depends only on tenant, workspace and run_key."""
    assert run_id_of("sched:01J:1767225600") == "run_pld2gkejnpskxkz3vbnut5sq74"
    assert run_id_from_run_key(SECRET, "acme", "dev", "sched:01J:1767225600") != run_id_of(
        "sched:01J:1767225600"
    )


def test_request_matches_source_for_a_triggered_tick() -> None:
    tables = ticked_tables()
    assert guard("request_matches_source", ctx(data=run_requested(), tables=tables))
    assert not guard(
        "request_matches_source", ctx(data=run_requested(fingerprint="other"), tables=tables)
    )
    assert not guard(
        "request_matches_source", ctx(data=run_requested(origin="S1:0"), tables=tables)
    )
    assert not guard(
        "request_matches_source", ctx(data=run_requested(source_id="S2"), tables=tables)
    )
    assert not guard("request_matches_source", ctx(data=run_requested(origin=None), tables=tables))


def test_run_request_must_use_the_tick_snapshot() -> None:
    """L2-INV-11: a request whose selection is not the tick's snapshot starts nothing."""
    tables = ticked_tables()
    current = run_requested(asset_selection=["sales", "costs"])  # the current definition
    assert not guard("request_matches_source", ctx(data=current, tables=tables))


def test_request_matches_source_for_a_skipped_tick_is_false() -> None:
    tables: Tables = {}
    effect(
        "record_tick",
        ctx(schedule_row(), tick(status="SKIPPED", run_key="sched:S1:1767225600"), tables),
    )
    assert not guard("request_matches_source", ctx(data=run_requested(), tables=tables))


def test_request_matches_source_for_a_sensor_evaluation() -> None:
    tables: Tables = {}
    effect("record_evaluation", ctx(sensor_row(), evaluation(), tables))
    request = run_requested("sensor:N1:a", "fp-a", "SENSOR", "N1", "E1", asset_selection=["raw"])
    assert guard("request_matches_source", ctx(data=request, tables=tables))
    dropped = run_requested("sensor:N1:a", "fp-a", "SENSOR", "N1", "E2", asset_selection=["raw"])
    assert not guard("request_matches_source", ctx(data=dropped, tables=tables))
    unknown_key = run_requested(
        "sensor:N1:b", "fp-a", "SENSOR", "N1", "E1", asset_selection=["raw"]
    )
    assert not guard("request_matches_source", ctx(data=unknown_key, tables=tables))


def test_request_matches_source_for_a_backfill_chunk() -> None:
    tables: Tables = {"backfills": {("B1",): backfill_row(state="RUNNING")}}
    request = run_requested(
        "backfill:B1:chunk:0", "fp-0", "BACKFILL", "B1", None, partition_selection=["p0", "p1"]
    )
    assert not guard("request_matches_source", ctx(data=request, tables=tables))  # not planned
    effect("record_chunk", ctx(tables["backfills"][("B1",)], chunk(0), tables))
    assert guard("request_matches_source", ctx(data=request, tables=tables))
    other_keys = {**request, "partition_selection": ["p0"]}
    assert not guard("request_matches_source", ctx(data=other_keys, tables=tables))


def test_manual_request_needs_no_recorded_source() -> None:
    manual = run_requested("manual:1", "fp", "MANUAL", "alice", None)
    assert guard("request_matches_source", ctx(data=manual))


def bound_row() -> Row:
    row: Row = {"run_key": "sched:S1:1767225600", "state": "BOUND"}
    effect("record_run_key", ctx(row, run_requested()))
    return row


def test_record_run_key_binds_run_id_fingerprint_and_source() -> None:
    row = bound_row()
    assert row["run_id"] == run_id_of("sched:S1:1767225600")
    assert (row["request_fingerprint"], row["source_kind"], row["source_id"]) == (
        "fp",
        "SCHEDULE",
        "S1",
    )
    assert (row["tick_or_eval_id"], row["labels"], row["conflict_count"]) == (
        "S1:1767225600",
        {"team": "data"},
        0,
    )
    assert set(row) | {"row_version"} == columns("run_keys")


def test_record_run_key_needs_the_tenant_run_id_function() -> None:
    c = L2Context(row={}, data=run_requested(), event_id=EID)
    with pytest.raises(ValueError, match="run_id_of"):
        effect("record_run_key", c)


def test_same_run_key_and_fingerprint_is_a_noop() -> None:
    """L2-INV-4: the same key and fingerprint match the bound row, whose row has no effect."""
    row = bound_row()
    before = dict(row)
    assert guard("fingerprint_matches", ctx(row, run_requested()))
    assert not guard("fingerprint_differs", ctx(row, run_requested()))
    (noop,) = [
        r
        for r in SPEC.machines["run_key"].rows("BOUND", "RunRequested")
        if "fingerprint_matches" in r.guards
    ]
    assert (noop.target, noop.effects) == ("BOUND", ())
    assert row == before


def test_different_fingerprint_records_a_conflict() -> None:
    """L2-INV-5: another fingerprint adds a run_key_conflicts row; the binding is kept."""
    row = bound_row()
    tables: Tables = {}
    conflicting = run_requested(fingerprint="fp-2")
    assert guard("fingerprint_differs", ctx(row, conflicting))
    assert not guard("fingerprint_matches", ctx(row, conflicting))
    effect("record_run_key_conflict", ctx(row, conflicting, tables))
    conflict = tables["run_key_conflicts"][("sched:S1:1767225600", "fp-2")]
    assert (conflict["bound_fingerprint"], conflict["bound_run_id"]) == ("fp", row["run_id"])
    assert set(conflict) == columns("run_key_conflicts")
    assert (row["request_fingerprint"], row["conflict_count"]) == ("fp", 1)


def test_tick_run_key_and_run_id_correlate() -> None:
    """L2-INV-10: tick -> run_key -> run_id is a join over schedule_ticks and run_keys."""
    fold = _Fold()
    fold.apply("schedule_tick", "ScheduleDefinitionUpserted", schedule_def())
    assert fold.apply("schedule_tick", "ScheduleTicked", tick()) == "ENABLED"
    assert fold.apply("run_key", "RunRequested", run_requested()) == "BOUND"
    assert fold.apply("run_key", "RunRequested", run_requested()) == "BOUND"
    assert fold.apply("run_key", "RunRequested", run_requested(fingerprint="fp-2")) == "BOUND"
    tick_row = fold.row("schedule_ticks", "S1:1767225600")
    binding = fold.row("run_keys", str(tick_row["run_key"]))
    assert binding["run_id"] == run_id_of("sched:S1:1767225600")
    assert binding["tick_or_eval_id"] == tick_row["tick_id"]
    assert list(fold.tables["run_key_conflicts"]) == [("sched:S1:1767225600", "fp-2")]


def test_unbacked_request_binds_nothing() -> None:
    fold = _Fold()
    assert fold.apply("run_key", "RunRequested", run_requested()) is None
    assert "run_keys" not in fold.tables or not fold.tables["run_keys"]


# -------------------------------------------------------- partition status --


def finished(outcome: str, run_id: str = "run_a", attempt: int = 1, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run_id": run_id,
        "task_key": "build_sales",
        "attempt": attempt,
        "attempt_id": f"A-{run_id}-{attempt}",
        "worker_id": "w-1",
        "outcome": outcome,
        "error_message": "boom" if outcome == "FAILED" else None,
        "materialization_id": f"m-{run_id}" if outcome == "SUCCEEDED" else None,
        "code_version": "v1",
        "asset_key": "sales",
        "partition_key": "2026-01-01",
    }
    data.update(over)
    return data


@pytest.mark.parametrize("outcome", ["SUCCEEDED", "FAILED", "CANCELLED"])
def test_partition_attempt_outcome_guards(outcome: str) -> None:
    for name in (
        "partition_attempt_succeeded",
        "partition_attempt_failed",
        "partition_attempt_cancelled",
    ):
        assert guard(name, ctx(data=finished(outcome))) == name.endswith(outcome.lower())


def test_record_attempt_writes_last_attempt_only() -> None:
    row: Row = {"asset_key": "sales", "partition_key": "2026-01-01", "state": "FAILED"}
    effect("record_attempt", ctx(row, finished("FAILED", attempt=2)))
    assert (
        row["last_attempt_outcome"],
        row["last_attempt_number"],
        row["last_attempt_error_message"],
    ) == (
        "FAILED",
        2,
        "boom",
    )
    assert (row["last_attempt_at"], row["last_attempt_event_id"]) == (AT, EID)
    assert row["last_materialization_run_id"] is None
    assert set(row) | {"row_version"} == columns("partition_status")


def test_record_materialization_writes_last_materialization() -> None:
    row: Row = {"asset_key": "sales", "partition_key": "2026-01-01", "state": "MATERIALIZED"}
    effect("record_materialization", ctx(row, finished("SUCCEEDED", code_version="v7")))
    assert row == {
        "asset_key": "sales",
        "partition_key": "2026-01-01",
        "state": "MATERIALIZED",
        "last_materialization_run_id": "run_a",
        "last_materialization_attempt": 1,
        "last_materialization_code_version": "v7",
        "last_materialization_id": "m-run_a",
        "last_materialization_event_id": EID,
        "last_materialization_at": AT,
    }


def test_failure_does_not_touch_last_materialization() -> None:
    """L2-INV-8: a failed attempt moves last_attempt_* and the state, never last_materialization_*."""
    for transition in SPEC.machines["partition_status"].transitions:
        assert ("record_materialization" in transition.effects) == (
            "partition_attempt_succeeded" in transition.guards
        )
        assert "record_attempt" in transition.effects
    fold = _Fold()
    assert (
        fold.apply("partition_status", "TaskFinished", finished("SUCCEEDED", "run_a"))
        == "MATERIALIZED"
    )
    assert fold.apply("partition_status", "TaskFinished", finished("FAILED", "run_b")) == "FAILED"
    row = fold.row("partition_status", "sales", "2026-01-01")
    assert (row["last_materialization_run_id"], row["last_attempt_run_id"]) == ("run_a", "run_b")
    assert row["last_attempt_outcome"] == "FAILED"


def test_later_materialization_wins() -> None:
    """L2-INV-8: between concurrent materializations, the later event (event_id order) wins."""
    fold = _Fold()
    fold.apply(
        "partition_status", "TaskFinished", finished("SUCCEEDED", "run_a", code_version="v1")
    )
    fold.apply(
        "partition_status", "TaskFinished", finished("SUCCEEDED", "run_b", code_version="v2")
    )
    row = fold.row("partition_status", "sales", "2026-01-01")
    assert (row["last_materialization_run_id"], row["last_materialization_code_version"]) == (
        "run_b",
        "v2",
    )
    assert str(row["last_materialization_event_id"]) == str(row["row_version"])


def test_cancelled_attempt_keeps_the_partition_state() -> None:
    fold = _Fold()
    assert (
        fold.apply("partition_status", "TaskFinished", finished("CANCELLED"))
        == "NEVER_MATERIALIZED"
    )
    assert (
        fold.apply("partition_status", "TaskFinished", finished("SUCCEEDED", "run_b"))
        == "MATERIALIZED"
    )
    assert (
        fold.apply("partition_status", "TaskFinished", finished("CANCELLED", "run_c"))
        == "MATERIALIZED"
    )
    row = fold.row("partition_status", "sales", "2026-01-01")
    assert (row["last_attempt_outcome"], row["last_materialization_run_id"]) == (
        "CANCELLED",
        "run_b",
    )
    assert set(row) == columns("partition_status")
