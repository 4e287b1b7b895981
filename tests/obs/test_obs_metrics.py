"""Prometheus metrics: every family has samples after a real embedded run; errors count by type."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from obs_support import ObservedRun, sample

from servo.compactor import Compactor
from servo.core._registry import Registry
from servo.core.builders import EventBuilder, TaskDef
from servo.core.events import Catalog
from servo.obs import REGISTRY
from servo.queue import QueueError, SqliteQueue
from servo.spec import Spec
from servo.storage import Ledger, MemoryStore, ScopedStore

HISTOGRAMS = {
    "servo_compaction_seconds": {},
    "servo_manifest_publish_seconds": {},
    "servo_ledger_append_seconds": {},
    "servo_reconcile_seconds": {},
    "servo_task_execution_seconds": {"outcome": "SUCCEEDED"},
    "servo_finish_to_dispatch_seconds": {},
    "servo_queue_operation_seconds": {"backend": "sqlite", "operation": "create"},
}

REASONS = ("DUPLICATE", "INVALID_TRANSITION", "STALE_ATTEMPT", "INVALID", "UNKNOWN_EVENT_TYPE", "UNKNOWN_RUN", "UNKNOWN_TASK")


@pytest.mark.parametrize("family", sorted(HISTOGRAMS))
def test_each_latency_histogram_has_samples_after_a_run(observed_run: ObservedRun, family: str) -> None:
    assert sample(f"{family}_count", **HISTOGRAMS[family]) > 0
    assert sample(f"{family}_sum", **HISTOGRAMS[family]) > 0


@pytest.mark.parametrize("operation", ["create", "lease", "ack"])
def test_queue_operations_are_timed_per_operation(observed_run: ObservedRun, operation: str) -> None:
    assert sample("servo_queue_operation_seconds_count", backend="sqlite", operation=operation) > 0


@pytest.mark.parametrize("callback", ["started", "heartbeat", "finished"])
def test_callbacks_are_timed_per_kind(observed_run: ObservedRun, callback: str) -> None:
    assert sample("servo_callback_seconds_count", callback=callback) > 0


def test_failed_attempts_are_timed_with_their_outcome(observed_run: ObservedRun) -> None:
    assert sample("servo_task_execution_seconds_count", outcome="FAILED") > 0


def test_queue_depth_gauge_has_every_state_and_saw_the_running_task_leased(observed_run: ObservedRun) -> None:
    for state in ("ready", "leased", "scheduled"):
        assert REGISTRY.get_sample_value("servo_queue_depth", {"state": state}) is not None
    assert max(observed_run.leased_seen) >= 1


def test_injected_task_error_increments_the_error_counter_with_its_type(observed_run: ObservedRun) -> None:
    after = sample("servo_errors_total", component="task", error_type="InjectedError")
    assert after - observed_run.before["injected"] == 1


def test_appended_events_are_counted_by_type(observed_run: ObservedRun) -> None:
    assert sample("servo_events_appended_total", event_type="RunTriggered") >= 1
    assert sample("servo_events_appended_total", event_type="TaskFinished") >= 3
    assert sample("servo_events_appended_total", event_type="DispatchRequested") >= 3


def test_queue_errors_are_counted_by_component_and_type() -> None:
    queue = SqliteQueue(":memory:")
    queue.close()
    before = sample("servo_errors_total", component="queue", error_type="QueueError")
    with pytest.raises(QueueError):
        queue.create_task("t1", "dispatch", b"{}", datetime.now(UTC))
    assert sample("servo_errors_total", component="queue", error_type="QueueError") - before == 1


def test_rejected_events_are_counted_by_reason_once(spec: Spec, rules: Registry, catalog: Catalog) -> None:
    store = ScopedStore(MemoryStore(), "acme", "prod")
    ledger = Ledger(store)
    compactor = Compactor(store, spec, rules)
    compactor.start()
    b = EventBuilder(catalog)
    events = [b.run_triggered("run_r"), b.plan_created("run_r", [TaskDef("a")])]
    stale = b.heartbeat("run_r", "a", 1, "no-such-attempt")  # no attempt yet: rejected
    before = {r: sample("servo_events_rejected_total", reason=r) for r in REASONS}
    ledger.append_many([(e.event_id, e.to_json().encode()) for e in [*events, stale]])
    compactor.notify([e.event_id for e in [*events, stale]])
    compactor.compact()
    compactor.compact()  # nothing new: nothing counted again
    rejected = {r["event_id"]: r["reason"] for r in compactor.projection.tables()["rejected_events"]}
    reason = rejected[stale.event_id]
    assert sample("servo_events_rejected_total", reason=reason) - before[reason] == 1
