"""The guards, effects and locators that the Layer 2 machines name (spec/machines/).

Each function is registered in `REGISTRY` under its own name, which is the name a row of
`backfill`, `schedule_tick`, `sensor_eval`, `run_key` or `partition_status` uses. Guards
take an `L2Context` and return a bool; effects take one and write into `ctx.row` or into
`ctx.tables`; locators take an event payload and return the primary key of the instance
the event concerns (None: the event does not concern this machine). The fold itself sets
`state` and stamps `row_version` on the instance row; rows that effects write into other
tables carry `row_version` (the event_id that wrote them) themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

from servo.core import ids
from servo.core._registry import REGISTRY
from servo.core.layer2._context import (
    Key,
    L2Context,
    Row,
    epoch_seconds,
    get_int,
    get_opt_int,
    get_opt_str,
    get_opt_strs,
    get_record,
    get_records,
    get_str,
    get_strs,
)

__all__ = ["MAX_LIST_KEYS", "RUN_TERMINAL_STATES"]

MAX_LIST_KEYS = 1000
"""A LIST partition selector names at most this many keys (larger sets use RANGE/FILTER)."""

RUN_TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
"""Terminal states of the Layer 1 run machine (spec/machines/run.toml)."""

BACKFILL_TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


# ================================================================= locators ==


@REGISTRY.locator()
def backfill_of_event(data: Mapping[str, object]) -> Key | None:
    """Backfill events concern the backfill named by `backfill_id`."""
    return (get_str(data, "backfill_id"),)


@REGISTRY.locator()
def schedule_of_event(data: Mapping[str, object]) -> Key | None:
    """Schedule definitions and ticks concern the schedule named by `schedule_id`."""
    return (get_str(data, "schedule_id"),)


@REGISTRY.locator()
def sensor_of_event(data: Mapping[str, object]) -> Key | None:
    """Sensor definitions and evaluations concern the sensor named by `sensor_id`."""
    return (get_str(data, "sensor_id"),)


@REGISTRY.locator()
def run_key_of_event(data: Mapping[str, object]) -> Key | None:
    """A run request concerns its `run_key`."""
    return (get_str(data, "run_key"),)


@REGISTRY.locator()
def partition_of_event(data: Mapping[str, object]) -> Key | None:
    """A TaskFinished concerns (asset_key, partition_key) when it names an asset.

    An unpartitioned asset is the single partition "" (primary keys are never null);
    a task that materializes no asset concerns no partition.
    """
    asset_key = get_opt_str(data, "asset_key")
    if asset_key is None:
        return None
    return (asset_key, get_opt_str(data, "partition_key") or "")


# ================================================================= backfill ==


@REGISTRY.guard(rejects="DUPLICATE")
def backfill_is_new(ctx: L2Context) -> bool:
    """No earlier BackfillCreated recorded this backfill_id."""
    return ctx.row.get("client_request_id") is None


@REGISTRY.guard(rejects="INVALID")
def partition_selector_is_compact(ctx: L2Context) -> bool:
    """The selector is complete for its kind, LIST names at most 1000 distinct keys (all
    of total_partitions), and chunk_size / max_concurrent_runs are positive."""
    data = ctx.data
    if get_int(data, "chunk_size") < 1 or get_int(data, "max_concurrent_runs") < 1:
        return False
    total = get_int(data, "total_partitions")
    if total < 0:
        return False
    selector = get_record(data, "partition_selector")
    kind = get_str(selector, "kind")
    if kind == "RANGE":
        return (
            get_opt_str(selector, "start") is not None and get_opt_str(selector, "end") is not None
        )
    if kind == "LIST":
        keys = get_opt_strs(selector, "keys")
        return (
            keys is not None and len(keys) <= MAX_LIST_KEYS and len(set(keys)) == len(keys) == total
        )
    if kind == "FILTER":
        return get_opt_str(selector, "filter") is not None
    return False


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def parent_backfill_is_finished(ctx: L2Context) -> bool:
    """A retry-failed child names a parent backfill that exists and is terminal."""
    parent_id = get_opt_str(ctx.data, "parent_backfill_id")
    if parent_id is None:
        return True
    parent = ctx.lookup("backfills", (parent_id,))
    return parent is not None and parent.get("state") in BACKFILL_TERMINAL_STATES


@REGISTRY.effect()
def record_backfill(ctx: L2Context) -> None:
    """Write the backfill's definition; state_version starts at 0, no chunk planned."""
    data = ctx.data
    total = get_int(data, "total_partitions")
    chunk_size = get_int(data, "chunk_size")
    ctx.row.update(
        client_request_id=get_str(data, "client_request_id"),
        asset_selection=get_strs(data, "asset_selection"),
        partition_selector=dict(get_record(data, "partition_selector")),
        total_partitions=total,
        chunk_size=chunk_size,
        total_chunks=-(-total // chunk_size),
        max_concurrent_runs=get_int(data, "max_concurrent_runs"),
        parent_backfill_id=get_opt_str(data, "parent_backfill_id"),
        code_version=get_opt_str(data, "code_version"),
        state_version=0,
        changed_by=None,
        chunks_planned=0,
        in_flight_run_keys=[],
    )


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def state_version_is_next(ctx: L2Context) -> bool:
    """The change carries exactly the current state_version + 1 (L2-INV-6)."""
    return get_int(ctx.data, "state_version") == get_int(ctx.row, "state_version") + 1


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def from_state_matches(ctx: L2Context) -> bool:
    """The change was computed from the state the backfill is in."""
    return get_str(ctx.data, "from_state") == ctx.row.get("state")


def _to_state(ctx: L2Context, state: str) -> bool:
    return get_str(ctx.data, "to_state") == state


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def to_running(ctx: L2Context) -> bool:
    """The change asks for RUNNING (start or resume)."""
    return _to_state(ctx, "RUNNING")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def to_paused(ctx: L2Context) -> bool:
    """The change asks for PAUSED."""
    return _to_state(ctx, "PAUSED")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def to_succeeded(ctx: L2Context) -> bool:
    """The change asks for SUCCEEDED."""
    return _to_state(ctx, "SUCCEEDED")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def to_failed(ctx: L2Context) -> bool:
    """The change asks for FAILED."""
    return _to_state(ctx, "FAILED")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def to_cancelled(ctx: L2Context) -> bool:
    """The change asks for CANCELLED."""
    return _to_state(ctx, "CANCELLED")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def all_chunks_planned(ctx: L2Context) -> bool:
    """Every chunk of the backfill was planned (a backfill cannot succeed before)."""
    return get_int(ctx.row, "chunks_planned") >= get_int(ctx.row, "total_chunks")


@REGISTRY.effect()
def record_backfill_state_change(ctx: L2Context) -> None:
    """Adopt the change's state_version (the fold sets `state` from the row's target)."""
    ctx.row["state_version"] = get_int(ctx.data, "state_version")
    ctx.row["changed_by"] = get_opt_str(ctx.data, "changed_by")


@REGISTRY.guard(rejects="DUPLICATE")
def chunk_is_new(ctx: L2Context) -> bool:
    """No chunk with this chunk_id was planned (L2-INV-7)."""
    return ctx.lookup("backfill_chunks", (get_str(ctx.data, "chunk_id"),)) is None


@REGISTRY.guard(rejects="INVALID")
def chunk_within_selector(ctx: L2Context) -> bool:
    """The chunk is one of the backfill's: its ids follow the templates, its index is in
    range, it holds exactly its share of distinct partitions, and for a LIST selector
    they are that slice of the list. RANGE and FILTER keys are resolved per chunk by the
    controller; the fold checks their count and identity only."""
    data, row = ctx.data, ctx.row
    backfill_id = get_str(row, "backfill_id")
    index = get_int(data, "chunk_index")
    if not 0 <= index < get_int(row, "total_chunks"):
        return False
    if get_str(data, "chunk_id") != ids.chunk_id(backfill_id, index):
        return False
    if get_str(data, "run_key") != ids.backfill_run_key(backfill_id, index):
        return False
    keys = get_strs(data, "partition_keys")
    chunk_size = get_int(row, "chunk_size")
    expected = min(chunk_size, get_int(row, "total_partitions") - index * chunk_size)
    if len(keys) != expected or len(set(keys)) != len(keys):
        return False
    selector = row.get("partition_selector")
    if isinstance(selector, Mapping) and selector.get("kind") == "LIST":
        listed = get_strs(selector, "keys")
        return keys == listed[index * chunk_size : (index + 1) * chunk_size]
    return True


def _run_in_flight(ctx: L2Context, run_key: str) -> bool:
    """A chunk's run is in flight until its run (via run_keys) is terminal."""
    binding = ctx.lookup("run_keys", (run_key,))
    run_id = None if binding is None else binding.get("run_id")
    if not isinstance(run_id, str):
        return True
    run = ctx.lookup("runs", (run_id,))
    return run is None or run.get("state") not in RUN_TERMINAL_STATES


def _in_flight(ctx: L2Context) -> list[str]:
    return [k for k in get_strs(ctx.row, "in_flight_run_keys") if _run_in_flight(ctx, k)]


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def under_max_concurrent_runs(ctx: L2Context) -> bool:
    """Fewer than max_concurrent_runs chunk runs are in flight (L2-INV-9).

    Only the row's `in_flight_run_keys` (never more than max_concurrent_runs) are
    re-checked against run_keys and runs, so the cost does not grow with the backfill.
    """
    return len(_in_flight(ctx)) < get_int(ctx.row, "max_concurrent_runs")


@REGISTRY.effect()
def record_chunk(ctx: L2Context) -> None:
    """Write the backfill_chunks row; count it and add its run to the in-flight set."""
    data = ctx.data
    chunk_id = get_str(data, "chunk_id")
    run_key = get_str(data, "run_key")
    ctx.table("backfill_chunks")[(chunk_id,)] = {
        "chunk_id": chunk_id,
        "backfill_id": get_str(data, "backfill_id"),
        "chunk_index": get_int(data, "chunk_index"),
        "partition_keys": get_strs(data, "partition_keys"),
        "run_key": run_key,
        "request_fingerprint": get_str(data, "request_fingerprint"),
        "row_version": ctx.event_id,
    }
    ctx.row["in_flight_run_keys"] = [*_in_flight(ctx), run_key]
    ctx.row["chunks_planned"] = get_int(ctx.row, "chunks_planned") + 1


# ======================================================= schedules, sensors ==


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def definition_enabled(ctx: L2Context) -> bool:
    """The upserted schedule or sensor definition is enabled."""
    return ctx.data.get("enabled") is True


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def definition_version_is_newer(ctx: L2Context) -> bool:
    """The upserted definition_version is above the current one (an older one is stale)."""
    return get_int(ctx.data, "definition_version") > get_int(ctx.row, "definition_version")


@REGISTRY.effect()
def record_schedule_definition(ctx: L2Context) -> None:
    """Replace the schedule's definition; tick bookkeeping survives the upsert."""
    data = ctx.data
    ctx.row.update(
        name=get_str(data, "name"),
        cron_expression=get_str(data, "cron_expression"),
        timezone=get_str(data, "timezone"),
        catchup_window_minutes=get_int(data, "catchup_window_minutes"),
        max_catchup_ticks=get_int(data, "max_catchup_ticks"),
        asset_selection=get_strs(data, "asset_selection"),
        enabled=data.get("enabled") is True,
        code_version=get_opt_str(data, "code_version"),
        definition_version=get_int(data, "definition_version"),
    )
    for column in ("last_tick_id", "last_tick_status", "last_scheduled_for"):
        ctx.row.setdefault(column, None)


@REGISTRY.guard(rejects="DUPLICATE")
def tick_is_new(ctx: L2Context) -> bool:
    """No tick with this tick_id was recorded (L2-INV-1)."""
    return ctx.lookup("schedule_ticks", (get_str(ctx.data, "tick_id"),)) is None


@REGISTRY.guard(rejects="INVALID")
def tick_id_matches(ctx: L2Context) -> bool:
    """tick_id is `{schedule_id}:{scheduled_for_epoch}`."""
    epoch = epoch_seconds(ctx.data.get("scheduled_for"))
    return get_str(ctx.data, "tick_id") == ids.tick_id(get_str(ctx.row, "schedule_id"), epoch)


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def tick_status_triggered(ctx: L2Context) -> bool:
    """The tick triggered a run request."""
    return get_str(ctx.data, "status") == "TRIGGERED"


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def tick_status_skipped(ctx: L2Context) -> bool:
    """The tick was evaluated and skipped."""
    return get_str(ctx.data, "status") == "SKIPPED"


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def tick_status_failed(ctx: L2Context) -> bool:
    """The tick's evaluation failed."""
    return get_str(ctx.data, "status") == "FAILED"


@REGISTRY.guard(rejects="INVALID")
def tick_run_key_matches(ctx: L2Context) -> bool:
    """A triggered tick carries run_key `sched:{schedule_id}:{epoch}` and a fingerprint."""
    epoch = epoch_seconds(ctx.data.get("scheduled_for"))
    expected = ids.schedule_run_key(get_str(ctx.row, "schedule_id"), epoch)
    return (
        get_opt_str(ctx.data, "run_key") == expected
        and get_opt_str(ctx.data, "request_fingerprint") is not None
    )


@REGISTRY.effect()
def record_tick(ctx: L2Context) -> None:
    """Write the schedule_ticks row with the tick's own definition snapshot (L2-INV-11)."""
    data = ctx.data
    tick_id = get_str(data, "tick_id")
    status = get_str(data, "status")
    ctx.table("schedule_ticks")[(tick_id,)] = {
        "tick_id": tick_id,
        "schedule_id": get_str(data, "schedule_id"),
        "scheduled_for": data.get("scheduled_for"),
        "definition_version": get_int(data, "definition_version"),
        "asset_selection": get_strs(data, "asset_selection"),
        "partition_selection": get_opt_strs(data, "partition_selection"),
        "status": status,
        "reason": get_opt_str(data, "reason"),
        "run_key": get_opt_str(data, "run_key"),
        "request_fingerprint": get_opt_str(data, "request_fingerprint"),
        "row_version": ctx.event_id,
    }
    previous = ctx.row.get("last_scheduled_for")
    if previous is None or epoch_seconds(data.get("scheduled_for")) > epoch_seconds(previous):
        ctx.row["last_tick_id"] = tick_id
        ctx.row["last_tick_status"] = status
        ctx.row["last_scheduled_for"] = data.get("scheduled_for")


@REGISTRY.effect()
def record_sensor_definition(ctx: L2Context) -> None:
    """Replace the sensor's definition; the cursor and its state_version survive."""
    data = ctx.data
    ctx.row.update(
        name=get_str(data, "name"),
        kind=get_str(data, "kind"),
        asset_selection=get_strs(data, "asset_selection"),
        poll_interval_sec=get_opt_int(data, "poll_interval_sec"),
        enabled=data.get("enabled") is True,
        definition_version=get_int(data, "definition_version"),
    )
    ctx.row.setdefault("cursor", None)
    ctx.row.setdefault("state_version", 0)
    ctx.row.setdefault("last_eval_id", None)
    ctx.row.setdefault("last_eval_status", None)


@REGISTRY.guard(rejects="DUPLICATE")
def eval_is_new(ctx: L2Context) -> bool:
    """No evaluation with this eval_id was recorded."""
    return ctx.lookup("sensor_evals", (get_str(ctx.data, "eval_id"),)) is None


def _trigger_source(ctx: L2Context) -> Mapping[str, object]:
    return get_record(ctx.data, "trigger_source")


@REGISTRY.guard(rejects="INVALID")
def is_push_evaluation(ctx: L2Context) -> bool:
    """A push evaluation (with its message_id) of a PUSH sensor."""
    source = _trigger_source(ctx)
    return (
        get_str(source, "kind") == "PUSH"
        and get_opt_str(source, "message_id") is not None
        and ctx.row.get("kind") == "PUSH"
    )


@REGISTRY.guard(rejects="INVALID")
def is_poll_evaluation(ctx: L2Context) -> bool:
    """A poll evaluation (with its poll_epoch) of a POLL sensor."""
    source = _trigger_source(ctx)
    return (
        get_str(source, "kind") == "POLL"
        and get_opt_int(source, "poll_epoch") is not None
        and ctx.row.get("kind") == "POLL"
    )


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def expected_state_version_matches(ctx: L2Context) -> bool:
    """CAS on the cursor: the poll was computed from the sensor's current state_version
    and cursor (L2-INV-12); a stale or missing expected_state_version, or a cursor_before
    that is not the sensor's cursor, drops the evaluation."""
    expected = get_opt_int(ctx.data, "expected_state_version")
    return (
        expected is not None
        and expected == get_int(ctx.row, "state_version")
        and get_opt_str(ctx.data, "cursor_before") == get_opt_str(ctx.row, "cursor")
    )


@REGISTRY.guard(rejects="INVALID")
def run_requests_match_status(ctx: L2Context) -> bool:
    """TRIGGERED evaluations (and only they) request runs, each run_key once."""
    run_keys = [get_str(r, "run_key") for r in get_records(ctx.data, "run_requests")]
    if len(set(run_keys)) != len(run_keys):
        return False
    return (get_str(ctx.data, "status") == "TRIGGERED") == bool(run_keys)


@REGISTRY.effect()
def record_evaluation(ctx: L2Context) -> None:
    """Write the sensor_evals row with its run requests (the eval -> run_key link)."""
    data = ctx.data
    eval_id = get_str(data, "eval_id")
    source = _trigger_source(ctx)
    status = get_str(data, "status")
    ctx.table("sensor_evals")[(eval_id,)] = {
        "eval_id": eval_id,
        "sensor_id": get_str(data, "sensor_id"),
        "trigger_kind": get_str(source, "kind"),
        "message_id": get_opt_str(source, "message_id"),
        "poll_epoch": get_opt_int(source, "poll_epoch"),
        "cursor_before": get_opt_str(data, "cursor_before"),
        "cursor_after": get_opt_str(data, "cursor_after"),
        "expected_state_version": get_opt_int(data, "expected_state_version"),
        "status": status,
        "run_requests": [dict(r) for r in get_records(data, "run_requests")],
        "row_version": ctx.event_id,
    }
    ctx.row["last_eval_id"] = eval_id
    ctx.row["last_eval_status"] = status


@REGISTRY.effect()
def advance_cursor(ctx: L2Context) -> None:
    """Consume the CAS slot: bump state_version and move the cursor if one is given."""
    cursor_after = get_opt_str(ctx.data, "cursor_after")
    if cursor_after is not None:
        ctx.row["cursor"] = cursor_after
    ctx.row["state_version"] = get_int(ctx.row, "state_version") + 1


# ================================================================== run keys ==


def _source_backs(ctx: L2Context) -> Row | None:
    """The recorded tick, evaluation run request or chunk that backs this request."""
    data = ctx.data
    source = get_record(data, "source_ref")
    kind, source_id = get_str(source, "kind"), get_str(source, "id")
    run_key = get_str(data, "run_key")
    if kind == "BACKFILL":
        prefix = f"backfill:{source_id}:chunk:"
        if not run_key.startswith(prefix):
            return None
        chunk = ctx.lookup("backfill_chunks", (f"{source_id}:{run_key[len(prefix) :]}",))
        backfill = ctx.lookup("backfills", (source_id,))
        if chunk is None or backfill is None or chunk.get("run_key") != run_key:
            return None
        return {
            "request_fingerprint": chunk.get("request_fingerprint"),
            "asset_selection": backfill.get("asset_selection"),
            "partition_selection": chunk.get("partition_keys"),
        }
    origin = get_opt_str(source, "tick_or_eval_id")
    if origin is None:
        return None
    if kind == "SCHEDULE":
        tick = ctx.lookup("schedule_ticks", (origin,))
        if (
            tick is None
            or tick.get("schedule_id") != source_id
            or tick.get("status") != "TRIGGERED"
        ):
            return None
        return tick if tick.get("run_key") == run_key else None
    if kind == "SENSOR":
        evaluation = ctx.lookup("sensor_evals", (origin,))
        if evaluation is None or evaluation.get("sensor_id") != source_id:
            return None
        if evaluation.get("status") != "TRIGGERED":
            return None
        for request in get_records(evaluation, "run_requests"):
            if request.get("run_key") == run_key:
                return dict(request)
    return None


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def request_matches_source(ctx: L2Context) -> bool:
    """The request is backed by its accepted source with the same fingerprint and
    selection (so a tick's run uses the tick's snapshot, L2-INV-11); MANUAL requests
    have no recorded source."""
    if get_str(get_record(ctx.data, "source_ref"), "kind") == "MANUAL":
        return True
    backing = _source_backs(ctx)
    return (
        backing is not None
        and backing.get("request_fingerprint") == get_str(ctx.data, "request_fingerprint")
        and backing.get("asset_selection") == get_strs(ctx.data, "asset_selection")
        and backing.get("partition_selection") == get_opt_strs(ctx.data, "partition_selection")
    )


@REGISTRY.guard(rejects="DUPLICATE")
def fingerprint_matches(ctx: L2Context) -> bool:
    """The same run_key with the same fingerprint: the same run, nothing to do (L2-INV-4)."""
    return get_str(ctx.data, "request_fingerprint") == ctx.row.get("request_fingerprint")


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def fingerprint_differs(ctx: L2Context) -> bool:
    """The same run_key with another fingerprint: a conflict (L2-INV-5)."""
    return get_str(ctx.data, "request_fingerprint") != ctx.row.get("request_fingerprint")


@REGISTRY.effect()
def record_run_key(ctx: L2Context) -> None:
    """Bind the run_key to its run_id, fingerprint and source (tick/eval -> run_id)."""
    if ctx.run_id_of is None:
        raise ValueError("record_run_key needs ctx.run_id_of (the tenant's run_id function)")
    data = ctx.data
    source = get_record(data, "source_ref")
    labels = get_record(data, "labels")
    ctx.row.update(
        run_id=ctx.run_id_of(get_str(data, "run_key")),
        request_fingerprint=get_str(data, "request_fingerprint"),
        source_kind=get_str(source, "kind"),
        source_id=get_str(source, "id"),
        tick_or_eval_id=get_opt_str(source, "tick_or_eval_id"),
        asset_selection=get_strs(data, "asset_selection"),
        partition_selection=get_opt_strs(data, "partition_selection"),
        labels=dict(labels),
        code_version=get_opt_str(data, "code_version"),
        conflict_count=0,
    )


@REGISTRY.effect()
def record_run_key_conflict(ctx: L2Context) -> None:
    """Write a run_key_conflicts row (one per conflicting fingerprint); start nothing."""
    data = ctx.data
    run_key = get_str(data, "run_key")
    fingerprint = get_str(data, "request_fingerprint")
    source = get_record(data, "source_ref")
    ctx.table("run_key_conflicts")[(run_key, fingerprint)] = {
        "run_key": run_key,
        "request_fingerprint": fingerprint,
        "bound_fingerprint": ctx.row.get("request_fingerprint"),
        "bound_run_id": ctx.row.get("run_id"),
        "source_kind": get_str(source, "kind"),
        "source_id": get_str(source, "id"),
        "tick_or_eval_id": get_opt_str(source, "tick_or_eval_id"),
        "row_version": ctx.event_id,
    }
    ctx.row["conflict_count"] = get_int(ctx.row, "conflict_count") + 1


# ========================================================= partition status ==


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def partition_attempt_succeeded(ctx: L2Context) -> bool:
    """The attempt materialized the partition."""
    return get_str(ctx.data, "outcome") == "SUCCEEDED"


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def partition_attempt_failed(ctx: L2Context) -> bool:
    """The attempt failed to materialize the partition."""
    return get_str(ctx.data, "outcome") == "FAILED"


@REGISTRY.guard(rejects="INVALID_TRANSITION")
def partition_attempt_cancelled(ctx: L2Context) -> bool:
    """The attempt was cancelled (it says nothing about the data)."""
    return get_str(ctx.data, "outcome") == "CANCELLED"


_MATERIALIZATION_COLUMNS = (
    "last_materialization_run_id",
    "last_materialization_attempt",
    "last_materialization_code_version",
    "last_materialization_id",
    "last_materialization_event_id",
    "last_materialization_at",
)


@REGISTRY.effect()
def record_attempt(ctx: L2Context) -> None:
    """last_attempt_* := this attempt, whatever its outcome (L2-INV-8)."""
    data = ctx.data
    ctx.row.update(
        last_attempt_run_id=get_str(data, "run_id"),
        last_attempt_task_key=get_str(data, "task_key"),
        last_attempt_number=get_int(data, "attempt"),
        last_attempt_id=get_str(data, "attempt_id"),
        last_attempt_outcome=get_str(data, "outcome"),
        last_attempt_error_message=get_opt_str(data, "error_message"),
        last_attempt_event_id=ctx.event_id,
        last_attempt_at=ctx.occurred_at,
    )
    for column in _MATERIALIZATION_COLUMNS:
        ctx.row.setdefault(column, None)


@REGISTRY.effect()
def record_materialization(ctx: L2Context) -> None:
    """last_materialization_* := this successful attempt (rows call it on success only;
    the fold applies events in event_id order, so the later event wins, L2-INV-8)."""
    data = ctx.data
    ctx.row.update(
        last_materialization_run_id=get_str(data, "run_id"),
        last_materialization_attempt=get_int(data, "attempt"),
        last_materialization_code_version=get_opt_str(data, "code_version"),
        last_materialization_id=get_opt_str(data, "materialization_id"),
        last_materialization_event_id=ctx.event_id,
        last_materialization_at=ctx.occurred_at,
    )
