"""W3C trace context: created at trigger, carried on dispatch, continued by the worker."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from obs_support import ObservedRun
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from servo.api import Pipeline, TaskContext
from servo.core.events import Catalog
from servo.engine import EmbeddedEngine, Home
from servo.obs import _trace as trace_module
from servo.obs import child_traceparent, new_run_traceparent, task_span, trace_id_of
from servo.storage import Ledger

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")


def _span_id(traceparent: str) -> str:
    match = TRACEPARENT.match(traceparent)
    assert match, traceparent
    return match.group(2)


def test_a_run_traceparent_is_valid_w3c_and_new_each_time() -> None:
    a, b = new_run_traceparent(), new_run_traceparent()
    assert TRACEPARENT.match(a) and TRACEPARENT.match(b)
    assert trace_id_of(a) != trace_id_of(b)


def test_a_run_triggered_inside_a_caller_span_joins_the_callers_trace() -> None:
    parent = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        traceparent = new_run_traceparent()
    finally:
        otel_context.detach(token)
    assert trace_id_of(traceparent) == "0af7651916cd43dd8448eb211c80319c"
    assert _span_id(traceparent) != "b7ad6b7169203331"


def test_children_keep_the_trace_and_are_deterministic_without_an_sdk() -> None:
    parent = new_run_traceparent()
    child = child_traceparent(parent, "servo.dispatch", "dispatch:run_1:a:1")
    assert child is not None and trace_id_of(child) == trace_id_of(parent)
    assert _span_id(child) != _span_id(parent)
    assert child == child_traceparent(parent, "servo.dispatch", "dispatch:run_1:a:1")
    assert child != child_traceparent(parent, "servo.dispatch", "dispatch:run_1:a:2")
    assert child_traceparent(None, "servo.dispatch", "x") is None
    assert child_traceparent("garbage", "servo.dispatch", "x") is None


def test_one_trace_id_from_trigger_through_dispatch_delivery_and_callbacks(observed_run: ObservedRun) -> None:
    run_id = observed_run.outcome.run["run_id"]
    events = [e for e in observed_run.ledger if e["data"].get("run_id") == run_id]
    (triggered,) = [e for e in events if e["event_type"] == "RunTriggered"]
    trace_id = trace_id_of(triggered["traceparent"])
    assert trace_id is not None
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["event_type"], []).append(event)
    for kind in ("DispatchRequested", "TaskStarted", "TaskHeartbeat", "TaskFinished"):
        assert by_type[kind], kind
        assert {trace_id_of(e.get("traceparent")) for e in by_type[kind]} == {trace_id}, kind
    assert {d.task_key for d in observed_run.deliveries} == {"extract", "load", "broken"}
    assert {trace_id_of(d.traceparent) for d in observed_run.deliveries} == {trace_id}


def test_the_worker_continues_the_delivery_with_a_child_span(observed_run: ObservedRun) -> None:
    delivered = {d.attempt_id: d.traceparent for d in observed_run.deliveries}
    started = [e for e in observed_run.ledger if e["event_type"] == "TaskStarted"]
    for event in started:
        parent = delivered[event["data"]["attempt_id"]]
        assert parent is not None
        assert _span_id(event["traceparent"]) != _span_id(parent)


def test_traceparent_changes_no_idempotency_key_or_event_id(catalog: Catalog) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    data = {"run_id": "run_1", "task_key": "a", "attempt": 1, "attempt_id": "01A", "worker_id": "w"}
    common: dict[str, Any] = {"event_id": "01JD0000000000000000000000", "tenant_id": "acme", "workspace_id": "prod", "occurred_at": now}
    plain = catalog.make("TaskStarted", data, **common)
    traced = catalog.make("TaskStarted", data, traceparent=new_run_traceparent(), **common)
    assert traced.idempotency_key == plain.idempotency_key == "started:run_1:a:01A"
    assert traced.event_id == plain.event_id


def test_controller_events_of_a_run_keep_their_catalog_keys(observed_run: ObservedRun) -> None:
    for event in observed_run.ledger:
        if event["event_type"] == "DispatchRequested":
            d = event["data"]
            assert event["idempotency_key"] == f"dispatch:{d['run_id']}:{d['task_key']}:{d['attempt']}"


def test_a_resumed_run_keeps_its_trace(tmp_path: Path) -> None:
    pipeline = Pipeline("obs_resume")

    @pipeline.task
    def slow(ctx: TaskContext) -> None:
        time.sleep(0.8)

    @pipeline.task(depends_on=[slow])
    def after(ctx: TaskContext) -> None:
        return None

    home = tmp_path / ".servo"
    with pytest.raises(TimeoutError):
        EmbeddedEngine(Home.open(home), pipeline).run(timeout=0.3)
    outcome = EmbeddedEngine(Home.open(home), pipeline).run(timeout=60)
    assert outcome.resumed and outcome.state == "SUCCEEDED"
    ledger = Ledger(Home.open(home, create=False).store)
    events = [ledger.read(i) for i in ledger.list_event_ids().event_ids]
    import json

    parsed = [json.loads(e) for e in events]
    (triggered,) = [e for e in parsed if e["event_type"] == "RunTriggered"]
    after_started = [e for e in parsed if e["event_type"] == "TaskStarted" and e["data"]["task_key"] == "after"]
    assert after_started
    assert {trace_id_of(e["traceparent"]) for e in after_started} == {trace_id_of(triggered["traceparent"])}


class _Span(NonRecordingSpan):
    def __init__(self, ctx: SpanContext, name: str, parent: SpanContext | None, log: list[tuple[str, Any]]) -> None:
        super().__init__(ctx)
        self.name, self.parent, self.log = name, parent, log

    def end(self, end_time: int | None = None) -> None:
        self.log.append(("end", self.name))

    def is_recording(self) -> bool:
        return True


class _RecordingTracer(trace.Tracer):
    """A stand-in for an SDK tracer: real ids, and a log of what was started."""

    def __init__(self) -> None:
        self.started: list[_Span] = []
        self.log: list[tuple[str, Any]] = []
        self._next = 0x1000

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        self._next += 1
        trace_id = parent.trace_id if parent.is_valid else 0xABC0000000000000000000000000DEF
        span = _Span(SpanContext(trace_id, self._next, False, TraceFlags(1)), name, parent if parent.is_valid else None, self.log)
        self.started.append(span)
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        raise NotImplementedError


def _ids(ctx: SpanContext | None) -> tuple[int, int] | None:
    return None if ctx is None else (ctx.trace_id, ctx.span_id)


def test_with_an_sdk_tracer_servo_opens_real_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = _RecordingTracer()
    monkeypatch.setattr(trace_module, "_tracer", tracer)
    run = new_run_traceparent()
    dispatch = child_traceparent(run, "servo.dispatch", "dispatch:r:a:1")
    with task_span(dispatch, "servo.task", "01ATTEMPT", {"servo.task_key": "a"}) as worker:
        inner = trace.get_current_span().get_span_context()
    names = [s.name for s in tracer.started]
    assert names == ["servo.run", "servo.dispatch", "servo.task"]
    run_span, dispatch_span, task = tracer.started
    assert _ids(dispatch_span.parent) == _ids(run_span.get_span_context())
    assert _ids(task.parent) == _ids(dispatch_span.get_span_context())
    assert worker is not None and _span_id(worker) == f"{task.get_span_context().span_id:016x}"
    assert inner == task.get_span_context()  # user code inside the task nests under it
    assert ("end", "servo.task") in tracer.log
