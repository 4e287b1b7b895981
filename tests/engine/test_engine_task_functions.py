"""What a task function may do: exit, raise anything, be async. Each attempt ends
with the outcome the function gave, and the run ends; nothing hangs or lies."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from servo.api import Pipeline, PipelineError, RetryPolicy, TaskContext
from servo.core.controllers import ProjectionView
from servo.engine import EmbeddedEngine, Home


def run(tmp_path: Path, pipeline: Pipeline) -> dict[str, tuple[str, int, str | None]]:
    outcome = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, poll_seconds=0.01).run(timeout=60)
    return {t["task_key"]: (t["state"], t["attempt"], t["error_message"]) for t in outcome.tasks}


def test_a_task_calling_sys_exit_or_raising_keyboard_interrupt_fails_that_attempt(tmp_path: Path) -> None:
    """Both used to escape the worker (BaseException) and leave `servo run` hanging."""
    pipeline = Pipeline("exits")

    @pipeline.task()
    def quits() -> None:
        sys.exit(3)

    @pipeline.task(max_attempts=2)
    def interrupted(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise KeyboardInterrupt

    @pipeline.task(depends_on=[quits])
    def after() -> None: ...

    states = run(tmp_path, pipeline)
    assert states["quits"][:2] == ("FAILED", 1)
    assert "sys.exit(3)" in (states["quits"][2] or "")
    assert "test_engine_task_functions.py" in (states["quits"][2] or "")  # where the user's code exited
    assert states["interrupted"][:2] == ("SUCCEEDED", 2)
    assert states["after"][:2] == ("SKIPPED", 0)


def test_async_task_functions_are_awaited(tmp_path: Path) -> None:
    """An `async def` task used to 'succeed' at once: its coroutine was never run."""
    pipeline = Pipeline("asyncs")
    ran: list[str] = []

    @pipeline.task()
    async def fine(ctx: TaskContext) -> None:
        await asyncio.sleep(0.01)
        ran.append(ctx.task_key)

    @pipeline.task()
    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("async failure")

    states = run(tmp_path, pipeline)
    assert states["fine"][:2] == ("SUCCEEDED", 1) and ran == ["fine"]
    assert states["broken"][0] == "FAILED" and "ValueError: async failure" in (states["broken"][2] or "")


def test_a_generator_task_is_refused_since_its_body_would_never_run() -> None:
    """Calling a generator function (a task that `yield`s, as ported from another
    orchestrator) only makes a generator: the body never ran, yet the attempt
    'succeeded'. It is refused at declaration, and a plain function that returns a
    generator fails its attempt instead of succeeding without doing its work."""
    pipeline = Pipeline("gens")

    def yields() -> Iterator[int]:
        yield 1

    async def async_yields() -> AsyncIterator[int]:
        yield 1

    for fn in (yields, async_yields):
        with pytest.raises(PipelineError, match=f"task {fn.__name__!r}.*generator.*never run"):
            pipeline.task(fn)
    assert pipeline.tasks == {}


def test_a_task_that_needs_more_than_ctx_is_refused_at_declaration(tmp_path: Path) -> None:
    """A task is called with nothing or with its context: one that needs more
    arguments would fail every attempt, so it is refused when declared."""
    pipeline = Pipeline("sigs")

    def two(ctx: TaskContext, other: int) -> None: ...

    def keyword_only(*, limit: int) -> None: ...

    for fn in (two, keyword_only):
        with pytest.raises(PipelineError, match=f"task {fn.__name__!r}.*takes nothing or the context"):
            pipeline.task(fn)

    def optional(ctx: TaskContext, other: int = 1, *rest: int, **named: int) -> None: ...

    def keyword_only_optional(*, limit: int = 3) -> None: ...

    def bare() -> None: ...

    pipeline.task(optional)
    pipeline.task(bare)
    pipeline.task(keyword_only_optional)
    pipeline.task(print, name="printer")  # a builtin: its signature is not checked
    assert list(pipeline.tasks) == ["optional", "bare", "keyword_only_optional", "printer"]
    del pipeline.tasks["printer"]
    states = run(tmp_path, pipeline)  # each is called with what it takes (no ctx where no positional)
    assert {k: s[0] for k, s in states.items()} == {"optional": "SUCCEEDED", "bare": "SUCCEEDED", "keyword_only_optional": "SUCCEEDED"}


def test_a_task_that_returns_a_generator_fails_its_attempt(tmp_path: Path) -> None:
    pipeline = Pipeline("returns_gen")
    ran: list[int] = []

    def body() -> Iterator[int]:
        ran.append(1)
        yield 1

    pipeline.task(lambda: body(), name="lazy")
    states = run(tmp_path, pipeline)
    assert states["lazy"][:2] == ("FAILED", 1)
    assert "returned a generator" in (states["lazy"][2] or "") and ran == []
    assert "never ran" not in (states["lazy"][2] or "")  # its own body did run


def test_a_pipeline_without_tasks_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="has no tasks"):
        EmbeddedEngine(Home.open(tmp_path / "home"), Pipeline("empty"))


def test_an_unfinished_run_planned_from_another_version_is_not_resumed_blindly(tmp_path: Path) -> None:
    """Kill `servo run`, edit the pipeline, run again: resuming the old plan used to
    dispatch tasks the file no longer has (they failed with a bare KeyError)."""
    from servo._errors import ServoError

    home = Home.open(tmp_path / "home")
    old = Pipeline("evolving")

    @old.task()
    def slow() -> None:
        import time

        time.sleep(5)

    @old.task(depends_on=[slow])
    def gone() -> None: ...

    with pytest.raises(TimeoutError):
        EmbeddedEngine(home, old, poll_seconds=0.01).run(timeout=0.5)

    new = Pipeline("evolving")

    @new.task(name="slow")
    def quick() -> None: ...

    @new.task(depends_on=["slow"])
    def added() -> None: ...

    with pytest.raises(ServoError, match=r"planned from another version.*only in the run: gone.*only in the file: added"):
        EmbeddedEngine(home, new, poll_seconds=0.01).run(timeout=30)
    separate = EmbeddedEngine(home, new, poll_seconds=0.01).run("v2", timeout=30)
    assert separate.state == "SUCCEEDED" and not separate.resumed


def test_a_run_is_not_resumed_under_changed_task_settings_and_the_error_names_them(tmp_path: Path) -> None:
    """The plan is every PlanCreated field: an unfinished run planned with other
    timeouts, queues or assets would otherwise go on under the old values while the
    file says otherwise. The refusal names each task and setting that changed."""
    from servo._errors import ServoError

    home = Home.open(tmp_path / "home")
    old = Pipeline("tuned")

    @old.task()
    def slow() -> None:
        import time

        time.sleep(5)

    @old.task(depends_on=[slow], asset_key="sales")
    def after() -> None: ...

    with pytest.raises(TimeoutError):
        EmbeddedEngine(home, old, poll_seconds=0.01).run(timeout=0.5)

    new = Pipeline("tuned")

    @new.task(name="slow", heartbeat_timeout_sec=60, max_attempts=2)
    def quick() -> None: ...

    @new.task(name="after", depends_on=["slow"], asset_key="sales", partition_key="2026-12-01", worker_queue="gpu")
    def after_again() -> None: ...

    with pytest.raises(ServoError) as refused:
        EmbeddedEngine(home, new, poll_seconds=0.01).run(timeout=30)
    message = str(refused.value)
    assert "planned from another version" in message
    assert "slow: heartbeat_timeout_sec 300 -> 60, max_attempts 1 -> 2" in message
    assert "after: partition_key None -> '2026-12-01', worker_queue 'default' -> 'gpu'" in message
    same = EmbeddedEngine(home, old, poll_seconds=0.01)  # the old file still resumes it
    assert same.pipeline.plan_id() != new.plan_id()


def test_a_run_past_its_sla_is_cancelled_when_asked(tmp_path: Path) -> None:
    import time

    from servo import obs

    pipeline = Pipeline("late", sla_sec=1, on_sla_miss="cancel")

    @pipeline.task()
    def slow() -> None:
        time.sleep(8)

    @pipeline.task(depends_on=[slow])
    def after() -> None: ...

    before = obs.RUN_SLA_MISSED.labels("cancel")._value.get()
    started = time.monotonic()
    home = Home.open(tmp_path / "home")
    outcome = EmbeddedEngine(home, pipeline, poll_seconds=0.01).run(timeout=60)
    assert outcome.state == "CANCELLED"
    assert time.monotonic() - started < 6  # cancelled at its SLA, not after the task
    assert {t["task_key"]: t["state"] for t in outcome.tasks} == {"slow": "CANCELLED", "after": "CANCELLED"}
    assert obs.RUN_SLA_MISSED.labels("cancel")._value.get() == before + 1
    from servo.compactor import ProjectionReader, StateView
    from servo.core.rules import default_spec

    timers = ProjectionReader(StateView(home.store), default_spec()).read().tables["timers"]
    # Fired, or cancelled with the run (the cancel may fold first): never left scheduled.
    # A check delivered before the watermark reached its time rescheduled itself
    # (INV-9), so under load there may be more than one.
    checks = [t["state"] for t in timers if t["timer_type"] == "SLA_CHECK"]
    assert checks and all(state in ("FIRED", "CANCELLED") for state in checks), checks


def test_a_heartbeating_task_of_a_cancelled_run_stops_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ctx.heartbeat() raises once the attempt has ended; that is no task failure, and
    the worker does not report a result nobody will take."""
    import logging
    import time

    pipeline = Pipeline("late", sla_sec=1, on_sla_miss="cancel")
    beats_after_cancel: list[float] = []

    @pipeline.task()
    def beating(ctx: TaskContext) -> None:
        for _ in range(80):
            ctx.heartbeat()
            time.sleep(0.1)
        beats_after_cancel.append(time.monotonic())  # never reached: the heartbeat raised

    caplog.set_level(logging.INFO, logger="servo")
    outcome = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, poll_seconds=0.01).run(timeout=60)
    assert outcome.state == "CANCELLED"
    assert beats_after_cancel == []
    worker = [r for r in caplog.records if r.name == "servo.worker"]
    assert not [r.getMessage() for r in worker if r.levelno >= logging.WARNING]
    assert any("ended while running" in r.getMessage() for r in worker)
    assert not any(r.getMessage().startswith("finished callback refused") for r in worker)


def test_a_run_past_its_sla_is_reported_and_goes_on_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    pipeline = Pipeline("late_alert", sla_sec=0.5)

    @pipeline.task()
    def slowish() -> None:
        time.sleep(2.5)

    with caplog.at_level(logging.WARNING, logger="servo.engine"):
        outcome = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, poll_seconds=0.01).run(timeout=60)
    assert outcome.state == "SUCCEEDED"
    assert any("missed its SLA of 0.5 s" in r.getMessage() for r in caplog.records)


def test_an_attempt_timed_out_is_logged_and_counted_as_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §6: every error has a structured log line and a metric. A task that raises
    had both; one that hung until its heartbeat timeout had neither (found by a
    black-box pass: only the summary said HEARTBEAT_TIMEOUT)."""
    import logging
    import threading

    from servo.obs import REGISTRY

    release = threading.Event()
    pipeline = Pipeline("hangs")

    @pipeline.task(heartbeat_timeout_sec=1)
    def stuck() -> None:
        release.wait(30)  # silent: no heartbeat

    def errors() -> float:
        value = REGISTRY.get_sample_value("servo_errors_total", {"component": "engine", "error_type": "HeartbeatTimeout"})
        return value or 0.0

    before = errors()
    with caplog.at_level(logging.WARNING, logger="servo.engine"):
        outcome = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, poll_seconds=0.01).run(timeout=60)
    release.set()
    assert outcome.state == "FAILED"
    assert errors() == before + 1
    (line,) = [r for r in caplog.records if "HEARTBEAT_TIMEOUT" in r.getMessage()]
    assert line.levelno == logging.WARNING and "stuck" in line.getMessage()
    assert line.__dict__["run_id"] == outcome.run["run_id"] and line.__dict__["task_key"] == "stuck"
    assert line.__dict__["attempt_id"] and line.__dict__["attempt"] == 1 and line.__dict__["error_type"] == "HeartbeatTimeout"


def test_bad_sla_settings_are_refused() -> None:
    with pytest.raises(PipelineError, match="sla_sec"):
        Pipeline("bad", sla_sec=0)
    with pytest.raises(PipelineError, match="on_sla_miss"):
        Pipeline("bad", sla_sec=5, on_sla_miss="panic")
    with pytest.raises(PipelineError, match="sla_sec"):  # past any date a timer can name
        Pipeline("bad", sla_sec=1e300)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("max_attempts", 0),
        ("max_attempts", 2**70),  # past what the ledger's integers hold
        ("heartbeat_timeout_sec", 1.5),
        ("heartbeat_timeout_sec", 2**63),  # past any date a timer can name
        ("heartbeat_timeout_sec", "60"),
        ("worker_queue", 5),
        ("worker_queue", "a/b"),
        ("asset_key", ""),
        ("partition_key", 7),
    ],
)
def test_bad_task_options_are_refused_at_declaration_naming_the_task(option: str, value: object) -> None:
    pipeline = Pipeline("p")
    with pytest.raises(PipelineError, match=f"task 'extract'.*{option}"):
        pipeline.task(name="extract", **{option: value})(lambda: None)


def test_an_attempt_that_ends_before_its_submit_returns_is_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the replica fuzz: a `servo run` whose run had FAILED looped forever. A
    worker thread finished an attempt (a refused, stale one returns at once) before the
    driver stored its future under the queue task's name, so the name stayed 'running'
    and the driver waited for it. Here every attempt may end inside `submit`."""
    import threading
    from concurrent.futures import Future

    import servo.engine._driver as driver

    class EagerExecutor:
        """Runs each attempt on its own thread and gives it up to 0.5 s to end before
        `submit` returns (a driver that stores the future first holds it up)."""

        def __init__(self, *args: object, **kwargs: object) -> None: ...

        def submit(self, fn: Callable[..., None], *args: object) -> Future[None]:
            future: Future[None] = Future()

            def work() -> None:
                fn(*args)
                future.set_result(None)

            thread = threading.Thread(target=work)
            thread.start()
            thread.join(0.5)
            return future

        def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...

    monkeypatch.setattr(driver, "ThreadPoolExecutor", EagerExecutor)
    pipeline = Pipeline("inline")
    pipeline.task(lambda: None, name="a")
    pipeline.task(lambda: None, name="b", depends_on=["a"])
    engine = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, poll_seconds=0.01)
    assert engine.run(timeout=30).state == "SUCCEEDED"
    assert engine._running == {}


def test_each_task_retries_with_its_own_policy(tmp_path: Path) -> None:
    """RetryPolicy is per task: a task asking for a 3 s backoff waits ~3 s (jittered to
    [1.5, 3] s) even beside a task retrying after 0.1 s, and the policy travels with the
    run (its labels), so any engine that leads the home applies it."""
    import json

    from servo.core.events import parse_timestamp
    from servo.storage import Ledger

    pipeline = Pipeline("backoff")

    @pipeline.task(max_attempts=2, retry=RetryPolicy(base_sec=3, factor=1, cap_sec=3))
    def patient(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("busy")

    @pipeline.task(max_attempts=2, retry=RetryPolicy(base_sec=0.1, cap_sec=0.1))
    def eager(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("busy")

    assert json.loads(pipeline.run_labels()["servo.retry"]) == {"eager": [0.1, 2.0, 0.1], "patient": [3.0, 1.0, 3.0]}
    home = Home.open(tmp_path / "home")
    outcome = EmbeddedEngine(home, pipeline, poll_seconds=0.01).run(timeout=60)
    assert outcome.state == "SUCCEEDED"
    ledger = Ledger(home.store)
    timers = {}
    for event_id in ledger.list_event_ids().event_ids:
        event = json.loads(ledger.read(event_id))
        if event["event_type"] == "TimerRequested" and event["data"]["timer_type"] == "RETRY":
            # the first request: on a loaded box the watermark may lag its fire_at, and
            # the timer is then asked again a second or more later (INV-9)
            timers.setdefault(event["data"]["task_key"], event)
    finished = {t["task_key"]: t for t in outcome.tasks}
    assert set(timers) == {"patient", "eager"}
    assert finished["patient"]["attempt"] == finished["eager"]["attempt"] == 2

    def delay(key: str) -> float:
        """fire_at minus the retry request's time (which follows the failure within a loop)."""
        event = timers[key]
        fire_at = parse_timestamp(event["data"]["fire_at"], "fire_at")
        return (fire_at - parse_timestamp(event["occurred_at"], "occurred_at")).total_seconds()

    assert 1.2 <= delay("patient") <= 3.0
    assert delay("eager") <= 0.1


def test_a_retry_due_while_its_loop_runs_fires_on_the_next_loop_not_a_second_later(tmp_path: Path) -> None:
    """The leading engine's watermark is the cut of its last compaction, taken before it
    leases due timers. A retry that falls due after that cut but before the lease (a slow
    loop on a loaded box) used to be rescheduled: a second TimerRequested, and the retry
    a second or more later than the task asked. It waits for the next loop's cut instead."""
    import json
    import time

    from servo.storage import Ledger

    pipeline = Pipeline("due-mid-loop")

    @pipeline.task(max_attempts=2, retry=RetryPolicy(base_sec=0.1, cap_sec=0.1))
    def eager(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("busy")

    home = Home.open(tmp_path / "home")
    engine = EmbeddedEngine(home, pipeline, poll_seconds=0.01)
    read_view, slept = engine.reader.view, []

    def slow_read() -> ProjectionView:
        """A slow read right after the cut that first sees the retry timer: it falls due
        before the loop looks at the queue."""
        view = read_view()
        if not slept and any(t.timer_type == "RETRY" for t in view.timers.values()):
            slept.append(True)
            time.sleep(0.3)
        return view

    engine.reader.view = slow_read  # type: ignore[method-assign]
    outcome = engine.run(timeout=60)
    assert outcome.state == "SUCCEEDED"
    ledger = Ledger(home.store)
    events = [json.loads(ledger.read(i)) for i in ledger.list_event_ids().event_ids]
    retries = [e for e in events if e["event_type"] == "TimerRequested" and e["data"]["timer_type"] == "RETRY"]
    assert len(retries) == 1, [e["data"]["timer_id"] for e in retries]
    fired = [e for e in events if e["event_type"] == "TimerFired"]
    assert [e["data"]["timer_id"] for e in fired] == [retries[0]["data"]["timer_id"]]


@pytest.mark.parametrize(
    "options",
    [
        {"base_sec": -1},
        {"factor": 0.5},
        {"cap_sec": float("inf")},
        {"base_sec": float("nan")},
        {"factor": "2"},
        {"base_sec": 1e300, "cap_sec": 1e300},  # past any date a timer can name
        {"cap_sec": 1e10},
    ],
)
def test_bad_retry_policies_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(PipelineError, match="RetryPolicy"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_attempts_waiting_for_a_busy_worker_are_not_timed_out(tmp_path: Path) -> None:
    """With one worker, tasks dispatched ahead wait in the queue longer than their
    heartbeat timeout; they are waiting, not lost, so none ends DISPATCH_TIMEOUT."""
    import time

    pipeline = Pipeline("wide")
    for i in range(8):
        pipeline.task(lambda: time.sleep(0.6), name=f"t{i}", heartbeat_timeout_sec=1)
    outcome = EmbeddedEngine(Home.open(tmp_path / "home"), pipeline, workers=1, poll_seconds=0.01).run(timeout=120)
    assert {t["task_key"]: (t["state"], t["attempt"], t["error_message"]) for t in outcome.tasks} == {
        f"t{i}": ("SUCCEEDED", 1, None) for i in range(8)
    }


def test_heartbeat_progress_is_a_percentage_and_a_bad_one_is_the_tasks_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ctx.heartbeat(55.5) reports 56 and 150 reports 100 (a percentage); a value that is
    no number fails the task with a TypeError naming ctx.heartbeat, not an internal
    InvalidEvent logged as a callback failure."""
    import json
    import logging

    from servo.storage import Ledger

    pipeline = Pipeline("progress")

    @pipeline.task()
    def fractional(ctx: TaskContext) -> None:
        ctx.heartbeat(55.5)
        ctx.heartbeat(150)
        ctx.heartbeat(-3)
        ctx.heartbeat(float("inf"))  # a number too: held to 100 (and -inf to 0)
        ctx.heartbeat(float("-inf"))

    @pipeline.task()
    def not_a_number(ctx: TaskContext) -> None:
        ctx.heartbeat(float("nan"))

    @pipeline.task()
    def wrong(ctx: TaskContext) -> None:
        ctx.heartbeat("half")  # type: ignore[arg-type]

    caplog.set_level(logging.INFO, logger="servo")
    home = Home.open(tmp_path / "home")
    outcome = EmbeddedEngine(home, pipeline, poll_seconds=0.01).run(timeout=60)
    states = {t["task_key"]: (t["state"], t["error_message"] or "") for t in outcome.tasks}
    assert states["fractional"] == ("SUCCEEDED", "")
    assert states["wrong"][0] == "FAILED" and states["wrong"][1].startswith("TypeError: ctx.heartbeat(progress_pct)")
    assert f"(at {__file__}:" in states["wrong"][1]  # the task's line that called it, not servo's
    ledger = Ledger(home.store)
    beats = [
        json.loads(ledger.read(i)) for i in ledger.list_event_ids().event_ids
    ]
    assert sorted(e["data"]["progress_pct"] for e in beats if e["event_type"] == "TaskHeartbeat") == [0, 0, 56, 100, 100]
    assert states["not_a_number"][0] == "FAILED" and states["not_a_number"][1].startswith("ValueError: ctx.heartbeat")
    assert not [r for r in caplog.records if "callback failed" in r.getMessage()]


def test_a_finished_asset_task_names_its_asset_partition_in_the_ledger(tmp_path: Path) -> None:
    """SPEC §7: partition status is folded from TaskFinished events that carry
    asset_key/partition_key, so a task declared with them reports them on every
    finish (from the plan, not from the worker), and a success names its
    materialization (the attempt id)."""
    import json

    from servo.storage import Ledger

    pipeline = Pipeline("assets")

    @pipeline.task(asset_key="sales", partition_key="2026-01-01", max_attempts=2)
    def sales(ctx: TaskContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("busy")

    @pipeline.task(depends_on=[sales])
    def plain() -> None: ...

    home = Home.open(tmp_path / "home")
    outcome = EmbeddedEngine(home, pipeline, poll_seconds=0.01).run(timeout=60)
    assert outcome.state == "SUCCEEDED"
    ledger = Ledger(home.store)
    finished = [
        e["data"]
        for e in (json.loads(ledger.read(i)) for i in ledger.list_event_ids().event_ids)
        if e["event_type"] == "TaskFinished"
    ]
    by_attempt = {(d["task_key"], d["attempt"]): d for d in finished}
    failed, succeeded = by_attempt[("sales", 1)], by_attempt[("sales", 2)]
    assert (failed["asset_key"], failed["partition_key"]) == ("sales", "2026-01-01")
    assert "materialization_id" not in failed
    assert (succeeded["asset_key"], succeeded["partition_key"]) == ("sales", "2026-01-01")
    assert succeeded["materialization_id"] == succeeded["attempt_id"]
    assert "asset_key" not in by_attempt[("plain", 1)]


def test_depends_on_takes_one_task_as_well_as_a_list() -> None:
    """`depends_on="extract"` (or the function itself) means that one task, not its
    letters."""
    pipeline = Pipeline("p")

    @pipeline.task
    def extract() -> None: ...

    @pipeline.task(depends_on="extract")
    def by_name() -> None: ...

    @pipeline.task(depends_on=extract)
    def by_function() -> None: ...

    assert pipeline.tasks["by_name"].depends_on == ("extract",)
    assert pipeline.tasks["by_function"].depends_on == ("extract",)


def test_an_exception_that_cannot_be_printed_still_fails_its_attempt_once(tmp_path: Path) -> None:
    """An exception whose str() raises is reported by type (and repr if that works), the
    attempt fails, and the run ends: it is not re-run forever as a worker failure."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    pipeline = Pipeline("weird")
    runs: list[int] = []

    @pipeline.task()
    def weird() -> None:
        runs.append(1)
        raise Unprintable()

    class Interrupting(Exception):  # str() raises a BaseException (hung the attempt)
        def __str__(self) -> str:
            raise KeyboardInterrupt

    class Exiting(Exception):
        def __str__(self) -> str:
            raise ValueError("no str")

        def __repr__(self) -> str:
            raise SystemExit(4)

    class ExitingBase(BaseException):  # a BaseException that cannot be shown at all
        def __repr__(self) -> str:
            raise SystemExit(5)

    def raising(kind: type[BaseException]) -> Callable[[], None]:
        def task() -> None:
            raise kind()

        return task

    for name, kind in (("interrupting", Interrupting), ("exiting", Exiting), ("exiting_base", ExitingBase)):
        pipeline.task(raising(kind), name=name)

    states = run(tmp_path, pipeline)
    assert states["weird"][0] == "FAILED" and states["weird"][1] == 1
    assert (states["weird"][2] or "").startswith("Unprintable")
    assert len(runs) == 1
    for name, shown in (("interrupting", "Interrupting: Interrupting()"), ("exiting", "Exiting"), ("exiting_base", "ExitingBase")):
        assert states[name][:2] == ("FAILED", 1), (name, states[name])
        assert shown in (states[name][2] or ""), (name, states[name])


def test_a_huge_error_is_cut_visibly_keeping_where_it_was_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A task's error text is kept to 4,000 characters in the ledger: its start, a
    marker saying how much was cut, and its end, which names the task's line. The log
    line is cut the same way instead of carrying megabytes."""
    import logging

    pipeline = Pipeline("loud")

    @pipeline.task()
    def shouts() -> None:
        raise ValueError("begin " + "x" * 1_000_000 + " end")

    caplog.set_level(logging.WARNING, logger="servo")
    message = run(tmp_path, pipeline)["shouts"][2] or ""
    assert len(message) <= 4000
    assert message.startswith("ValueError: begin xxx")
    assert "characters cut" in message
    assert message.endswith(")") and f"end (at {__file__}:" in message
    logged = [r.getMessage() for r in caplog.records if "shouts" in r.getMessage()]
    assert logged and all(len(line) < 5000 for line in logged)


def test_an_error_text_with_a_lone_surrogate_fails_its_attempt_once(tmp_path: Path) -> None:
    """`os.fsdecode` of a non-UTF-8 file name yields lone surrogates; an exception naming
    such a file could not be written to the ledger, so the attempt never ended and the
    run hung. The text is kept, with the bad code point escaped."""
    import os

    pipeline = Pipeline("surrogates")

    @pipeline.task()
    def opens() -> None:
        name = os.fsdecode(b"report-\xff.csv")
        raise FileNotFoundError(f"cannot open {name}")

    states = run(tmp_path, pipeline)
    assert states["opens"][:2] == ("FAILED", 1)
    assert "cannot open report-\\udcff.csv" in (states["opens"][2] or "")


def test_a_base_exception_from_a_task_fails_that_attempt_like_any_other(tmp_path: Path) -> None:
    """A BaseException that is not an Exception (a library's own "abort" class) ends the
    attempt FAILED (TaskExited) instead of escaping the worker and being re-run."""

    class Abort(BaseException):
        pass

    pipeline = Pipeline("abort")
    runs: list[int] = []

    @pipeline.task()
    def aborting() -> None:
        runs.append(1)
        raise Abort("stop everything")

    states = run(tmp_path, pipeline)
    assert states["aborting"][0] == "FAILED" and states["aborting"][1] == 1
    assert "Abort" in (states["aborting"][2] or "") and len(runs) == 1


def test_a_task_without_a_usable_name_asks_for_one() -> None:
    import functools

    pipeline = Pipeline("p")
    with pytest.raises(PipelineError, match="pass name="):
        pipeline.task(functools.partial(print, 1))
    with pytest.raises(PipelineError, match="pass name="):
        pipeline.task(lambda: None)
    pipeline.task(functools.partial(print, 1), name="printer")
    assert list(pipeline.tasks) == ["printer"]
    with pytest.raises(PipelineError, match="task name '' must be"):  # not the function's name instead
        pipeline.task(lambda: None, name="")
    with pytest.raises(PipelineError, match=r"'\.\.' .*not '\.' or '\.\.'"):
        pipeline.task(lambda: None, name="..")


def test_an_attempts_facts_sort_in_the_order_they_happened_on_a_fast_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold orders events by event_id, whose time part is a millisecond. On storage
    where an append takes microseconds (tmpfs, a fast SSD), a no-op task's TaskStarted,
    heartbeat and TaskFinished fall in one millisecond, and ids minted from the clock
    alone sorted the finish before the start half the time: the start was then refused
    as STALE_ATTEMPT and the task had no started_at. Each fact of an attempt must sort
    after the one before it."""

    import servo.storage._local as local
    from servo.core.fold import fold_lines
    from servo.core.rules import default_spec, registry
    from servo.storage import Ledger

    monkeypatch.setattr(local, "_sync", lambda path: None)  # an append costs microseconds now
    monkeypatch.setattr(local, "_fsync_dir", lambda path: None)
    pipeline = Pipeline("fast-disk")
    root = pipeline.task(lambda: None, name="root")

    def beat(ctx: TaskContext) -> None:
        ctx.heartbeat(50)

    for index in range(60):
        pipeline.task(beat, name=f"leaf{index}", depends_on=root)
    home = Home.open(tmp_path / "home")
    assert EmbeddedEngine(home, pipeline).run(timeout=60).state == "SUCCEEDED"
    ledger = Ledger(home.store)
    tables = fold_lines([ledger.read(i) for i in ledger.list_event_ids().event_ids], default_spec(), registry()).tables()
    assert tables["rejected_events"] == []
    assert all(t["started_at"] is not None for t in tables["tasks"])
