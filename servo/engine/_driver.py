"""The embedded engine: one process drives the whole loop on local files.

    ledger (LocalStore) --notify--> compactor --manifest--> reader --view--> controllers
         ^                                                                     |
         |---- worker facts (CallbackService) <-- local worker pool <-- SQLite queue

The driver is the thin I/O shell around the pure parts (SPEC §6): read the published
projection, call `reconcile`, append what it returns, create queue tasks for PENDING
outbox rows and SCHEDULED timers, hand delivered queue tasks to the worker pool or to
`on_timer_fired`, and compact. Killed at any moment, a new driver resumes the same
run: the ledger is durable, the queue redelivers what was never acked, and every
event it may repeat carries the same idempotency key.

Replicas, anti-entropy and Cloud Tasks (ADR 010): several drivers may run on one
home. Starting a compactor fences the older one, so one replica leads (folds and
publishes); a fenced one keeps driving from the published projection and posts its
appends as notices, and takes the epoch over if the manifest stops moving. Every
`repair_seconds` anti-entropy re-emits intents for stuck work and sweeps the ledger.
The queue is any `TaskQueue`: the SQLite queue is leased here, any other (Cloud
Tasks) pushes to the engine's worker endpoint. `faults` is a test-only seam called
at named points ("after_dispatch_create", "after_timer_create").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from servo import obs
from servo._errors import CorruptState, FencedOut, RunKeyConflict, ServoError
from servo.api import Pipeline
from servo.compactor import GC_GRACE_SEC, Compactor, ProjectionReader, StateView
from servo.core.controllers import (
    TERMINAL_RUN_STATES,
    ControllerConfig,
    CreateStatus,
    Emitter,
    OutboxRecord,
    ProjectionView,
    RunRecord,
    TaskRecord,
    TimerRecord,
    dispatch_outcome_events,
    on_timer_fired,
    pending_dispatches,
    reconcile,
    repair,
)
from servo.core.events import Catalog, Event
from servo.core.ids import dispatch_cloud_task_id, dispatch_id, new_ulid, run_id_from_run_key
from servo.core.rules import default_spec, registry
from servo.engine import _observe
from servo.engine._gate import AppendGate
from servo.engine._home import Home
from servo.engine._notices import Notices
from servo.engine._notify import NotifySpool
from servo.engine._push import PushEndpoint
from servo.queue import HeldLeases, NewTask, SqliteQueue, TaskQueue, create_all
from servo.queue._protocol import Lease
from servo.storage import EventConflict, Ledger
from servo.worker import (
    DISPATCH,
    CallbackRejected,
    CallbackService,
    Delivery,
    FactClock,
    StaleAttemptRejected,
    describe_error,
    dispatch_target,
    progress_percent,
)

__all__ = ["EmbeddedEngine", "RunOutcome"]

_LOG = logging.getLogger("servo.engine")
TIMER: Final = "timer"
IN_FLIGHT_PER_WORKER: Final = 16
STRAGGLER_SECONDS = 2.0
"""How long an ended run waits for attempts that are still running (to ack them)."""
STUCK_INTENT_SECONDS = 60.0
"""How long an intent may stay unreflected in the projection before the engine says so."""
PUBLISH_WAIT_SECONDS = 10.0
"""How long a run just triggered waits, holding the home's start lock, to be published."""
QUIET_EVENTS = frozenset({"TaskStarted", "TaskHeartbeat", "TimerRequested", "DispatchEnqueued"})
"""Events no controller acts on at once: appending them does not wake the loop, the
next loop folds them whatever wakes it (at the latest `poll_seconds` later). A no-op
task's TaskFinished follows its TaskStarted at once, and a dispatch's heartbeat-check
timer fires minutes later: folding them with the next fact saves a loop per task."""
FaultHook = Callable[[str, str], None]
"""(point, dispatch_id or timer_id) -> None; raise to simulate a crash there (tests)."""


def _no_faults(point: str, key: str) -> None:
    return None


@dataclass
class _Asked:
    """An intent this engine appended: when, and whether it was reported stuck."""

    at: float
    warned: bool = False


@dataclass
class RunOutcome:
    """How a run ended, with its rows."""

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    resumed: bool
    seconds: float

    @property
    def state(self) -> str:
        """The run's terminal state."""
        return str(self.run["state"])


_PLANNED_SETTINGS = ("heartbeat_timeout_sec", "max_attempts", "asset_key", "partition_key", "worker_queue")


def _plan_diff(planned: Mapping[str, Any], declared: Mapping[str, Any]) -> str:
    """How a task's row (as planned) differs from its declaration, setting by setting
    ("max_attempts 1 -> 2, ..."); dependencies by their count (the row's deps_total)."""
    diffs = [
        f"{name} {planned.get(name)!r} -> {declared.get(name)!r}"
        for name in _PLANNED_SETTINGS
        if planned.get(name) != declared.get(name)
    ]
    if planned.get("deps_total") != len(declared["depends_on"]):
        diffs.insert(0, f"dependencies {planned.get('deps_total')} -> {len(declared['depends_on'])}")
    return ", ".join(diffs)


class RunTimedOut(TimeoutError):
    """`run(timeout=...)` gave up waiting; the run is unfinished (a later `run` resumes
    it) and `outcome` holds its rows as they stood."""

    def __init__(self, message: str, outcome: RunOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class _TaskContext:
    """What a task function sees (servo.api.TaskContext)."""

    delivery: Delivery
    callbacks: CallbackService
    worker_id: str
    run_id: str = field(init=False)
    task_key: str = field(init=False)
    attempt: int = field(init=False)
    attempt_id: str = field(init=False)

    def __post_init__(self) -> None:
        d = self.delivery
        self.run_id, self.task_key, self.attempt, self.attempt_id = d.run_id, d.task_key, d.attempt, d.attempt_id

    def heartbeat(self, progress_pct: float | None = None) -> None:
        """Report the attempt alive."""
        progress = progress_percent(progress_pct)
        self.callbacks.heartbeat(self.delivery, self.worker_id, datetime.now(UTC), progress)


class EmbeddedEngine:
    """Runs a pipeline on the embedded default: local files, SQLite queue, thread pool."""

    def __init__(
        self,
        home: Home,
        pipeline: Pipeline,
        *,
        workers: int = 4,
        poll_seconds: float = 0.02,
        lease_seconds: float = 5.0,
        on_progress: Callable[[Mapping[str, int], str], None] | None = None,
        callback_base: str | None = None,
        sweep_seconds: float = 5.0,
        full_sweep_seconds: float = 300.0,
        queue: TaskQueue | None = None,
        replica: str = "embedded",
        repair_seconds: float = 10.0,
        repair_grace_sec: int = 60,
        push_port: int = 0,
        faults: FaultHook = _no_faults,
        gc_grace_sec: float | None = GC_GRACE_SEC,
    ) -> None:
        if workers < 1:
            raise ServoError(f"an engine needs at least 1 worker thread (got {workers})")
        pipeline.plan()  # a PipelineError (e.g. no tasks) before anything starts
        self.home = home
        self.pipeline = pipeline
        self.spec = default_spec()
        self.catalog = Catalog(self.spec)
        self.store = home.store
        self.gc_grace_sec = gc_grace_sec
        self.compactor = self._new_compactor()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._gate = AppendGate()  # worker facts never straddle a compaction's cut
        self._fact_clock = FactClock()  # an attempt's facts sort in the order they happened
        self.ledger = Ledger(self.store, on_append=self._appended)
        self._traces = _observe.RunTraces(self.ledger)
        self.reader = ProjectionReader(StateView(self.store), self.spec, ProjectionView.TABLES)
        self._owns_queue = queue is None
        self.queue: TaskQueue = queue if queue is not None else SqliteQueue(home.queue_path, replace_damaged=True)
        # The SQLite queue is leased by this loop; any other queue pushes to _on_push.
        self._leasing = self.queue if isinstance(self.queue, SqliteQueue) else None
        self._push: PushEndpoint | None = None
        self.push_port = push_port
        self.replica = replica
        self.notices = Notices(self.store)
        self.leading = False
        """Whether this replica holds the compactor epoch (folds and publishes)."""
        self._unpublished: list[str] = []
        self._leader_fd: int | None = None  # the home's leader lock, while held
        self.repair_seconds = repair_seconds
        self.faults = faults
        self._timers_enqueued: set[str] = set()
        self.config = ControllerConfig(
            catalog=self.catalog,
            source=replica,
            repair_grace_sec=repair_grace_sec,
            # A bounded backlog per run (ADR 012): deep enough that a loop has a batch
            # to fold, shallow enough not to flood the queue. Waiting attempts are not
            # timed out while the queue holds them (ADR 021).
            max_in_flight=max(1, workers) * IN_FLIGHT_PER_WORKER,
        )
        self.callbacks = CallbackService(
            home.secret, home.tenant, home.workspace, self._task, self._gated_fact
        )
        self.workers = workers
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.on_progress = on_progress
        self._view = ProjectionView.from_tables({})
        self._watermark = datetime.min.replace(tzinfo=UTC)
        self._running: dict[str, Future[None]] = {}
        # Held while a future is stored and while a finished attempt removes it: an
        # attempt can end before `submit` returns, and must not be stored after.
        self._running_lock = threading.Lock()
        # Leases of running attempts, extended while they run (SQLite queue only).
        self._held = HeldLeases(self._leasing, lease_seconds) if self._leasing is not None else None
        self._repaired_at = datetime.min.replace(tzinfo=UTC)
        # External workers (`servo worker` via `servo serve`): dispatch, run nothing here.
        self.callback_base = callback_base
        self.spool = NotifySpool.for_home(home)
        self.sweep_seconds = sweep_seconds
        self.full_sweep_seconds = full_sweep_seconds
        self._full_swept_at = time.monotonic()  # _lead's catch-up listing was a full one
        self._swept_at = time.monotonic()
        self.run_id: str | None = None
        """The run being driven, once `run` has started or resumed it."""
        self._damage_seen: str | None = None  # the damaged published state a follower last warned of
        # Idempotency keys of the intents this engine appended -> (when, warned): an intent
        # the view does not reflect yet is durable, so it is never appended again.
        self._intents: dict[str, _Asked] = {}
        self._released_at: datetime | None = None  # when leases of dead holders were last freed
        self._stop: BaseException | None = None  # raised at the loop's next safe point (`stop`)

    # ----------------------------------------------------------------- I/O --

    def _appended(self, event_ids: list[str]) -> None:
        with self._lock:
            if self.leading:
                self.compactor.notify(event_ids)
                self._unpublished.extend(event_ids)
            else:
                self.notices.post(event_ids)  # the leader's compactor folds them

    def _lead(self) -> None:
        """Take the home's leader lock and the compactor epoch (fencing any older
        replica), and catch up by one sweep.

        Only one live engine leads: the leader lock is an exclusive flock, let go when
        its holder ends or dies. Without it two engines starting together both took an
        epoch and both emitted intents before either saw the other (attempt ids come
        from each one's clock, so one dispatch got two). A replica that does not get
        the lock, or loses a racing start, stays a follower. Caller holds the lock.
        """
        if self._leader_fd is None:
            self._leader_fd = self.home.try_lead()
            if self._leader_fd is None:
                self.leading = False
                return
        compactor = self._new_compactor()
        self.notices.start_reading()  # the sweep below covers everything before this
        try:
            compactor.start()
        except FencedOut:
            self._step_down()
            return
        compactor.repair()  # notifications died with any previous process
        self.compactor, self.leading = compactor, True
        self._unpublished.clear()

    def _compact(self) -> datetime | None:
        """Fold what is new if this replica leads: its time caught up, else None."""
        if not self.leading:
            return None
        self.compactor.notify(self.notices.take())
        try:
            self.compactor.compact()
        except FencedOut:  # a newer replica leads now: hand it what we never published
            self._step_down()
            self.notices.post(self._unpublished)
            return None
        self._unpublished.clear()
        return self.compactor.caught_up_at

    def _new_compactor(self) -> Compactor:
        return Compactor(self.store, self.spec, registry(), merge_every=64, gc_grace_sec=self.gc_grace_sec)

    def _release_leader_lock(self) -> None:
        """Let a follower (or the next `servo run`) lead. Caller holds the lock."""
        if self._leader_fd is not None:
            os.close(self._leader_fd)
            self._leader_fd = None

    def _step_down(self) -> None:
        """Stop leading: follow, and let another engine take the leader lock."""
        self.leading = False
        self._release_leader_lock()

    def _watch_leader(self) -> None:
        """A follower leads once the leader lock is free: the leader ended or died (the
        OS lets go of a dead process's flock). A live leader keeps it however slow it
        is, so two engines never emit intents at once."""
        self._leader_fd = self.home.try_lead()
        if self._leader_fd is not None:
            with self._lock:
                self._lead()

    def _append(self, events: list[Event]) -> None:
        """Append durably, and wake the loop unless every event is a QUIET_EVENTS one."""
        if events:
            events = self._traces.stamp(events)  # obs: the run's trace; ids and keys unchanged
            items = [(e.event_id, e.to_json().encode()) for e in events]
            try:
                created = self.ledger.append_many(items)
            except EventConflict as conflict:
                # Another replica emitted the same event in the same millisecond (an id
                # is ULID(now, hash of the idempotency key)) and named itself as source:
                # its copy is the event. Fold that one (read back from the ledger).
                created = conflict.created
                _LOG.debug("events already appended by another writer: %s", ", ".join(conflict.event_ids))
                self._appended(conflict.event_ids)
            if self.leading:
                with self._lock:  # the compactor folds these bytes instead of reading them back
                    self.compactor.remember(item for item, new in zip(items, created, strict=True) if new)
            _observe.record_appended(events, created)
            if any(e.event_type not in QUIET_EVENTS for e in events):
                self._wake.set()

    def _append_intents(self, events: list[Event]) -> None:
        """Append the controllers' intents, each idempotency key once per engine.

        The controllers ask again for what the view does not show yet. Usually the
        view is only behind, and the copy already in the ledger gets folded. But if the
        fold rejected it (the ledger lost the plan it needed, say), a new copy would be
        a DUPLICATE of it (SPEC §3), and appending one each loop would only fill the
        ledger. So an intent is appended once; if it stays unreflected for
        STUCK_INTENT_SECONDS, the engine says so, once.
        """
        fresh: list[Event] = []
        now = time.monotonic()
        for event in events:
            asked = self._intents.get(event.idempotency_key)
            if asked is None:
                fresh.append(event)
            elif not asked.warned and now - asked.at >= STUCK_INTENT_SECONDS:
                asked.warned = True
                run_id = event.data.get("run_id", "?")
                _LOG.warning(
                    "run %s looks stuck: %s %r was appended %.0f s ago and the projection still does not "
                    "reflect it (the fold rejected it: `servo fold` lists why in rejected_events); "
                    "end the run with `servo runs cancel %s`",
                    run_id, event.event_type, event.idempotency_key, now - asked.at, run_id,
                )
        self._append(fresh)
        for event in fresh:
            self._intents[event.idempotency_key] = _Asked(now)
        _observe.attempts_timed_out(fresh)

    def _gated_fact(self, event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
        with self._gate.append():  # the fact's timestamp is taken inside the gate
            self._append_fact(event_type, data, traceparent)

    def _append_fact(self, event_type: str, data: Mapping[str, Any], traceparent: str | None) -> None:
        # Inside the gate (the cut's rule), and after the attempt's previous fact.
        now = self._fact_clock.at(str(data.get("attempt_id", "")), last=event_type == "TaskFinished")
        emit = Emitter(self.config, self.home.tenant, self.home.workspace, now, f"worker:{self.replica}")
        event = emit.emit(event_type, data)._replace(traceparent=traceparent)
        if event_type == "TaskHeartbeat":  # many per attempt: make each id unique in time
            event = event._replace(event_id=new_ulid(now, event.event_id[-16:].encode()[:10]))
        self._append([event])

    def _pick_up_external(self) -> None:
        """Fold what other processes appended (`servo serve`'s worker facts): their ids
        arrive through the notify spool; a periodic ledger sweep is the fallback (SPEC §6)."""
        self.compactor.notify(self.spool.drain())
        if time.monotonic() - self._swept_at >= self.sweep_seconds:
            self._sweep()

    def _sweep(self) -> None:
        """List the ledger for events whose notification was lost: the days around
        today on every sweep, the whole ledger every `full_sweep_seconds` (an event
        filed under an older day is rare: its producer's clock was behind). Caller
        holds the lock."""
        now = time.monotonic()
        if now - self._full_swept_at >= self.full_sweep_seconds:
            self._full_swept_at = now
            self.compactor.repair()
            self.compactor.collect_orphans()
        else:
            today = datetime.now(UTC).date()
            self.compactor.repair([today - timedelta(days=1), today, today + timedelta(days=1)])
        self._swept_at = now

    def _task(self, run_id: str, task_key: str) -> TaskRecord | None:
        """The task as the last view has it (the callbacks' judge)."""
        return self._view.task(run_id, task_key)

    def _refresh(self) -> tuple[ProjectionView, datetime]:
        """Compact, read the published projection, and the watermark timers may trust.

        The compactor runs in this process: right after `compact()` every event
        notified before its cut is folded and published, so the cut is the watermark
        (the manifest's watermark only moves once per idle second).
        """
        with self._gate.cut(), self._lock:
            if self.leading:
                self._pick_up_external()
            caught_up = self._compact()
        try:
            manifest = self.reader.refresh()
        except CorruptState as exc:
            if not self.leading:
                # Only the leader's compactor can rewrite it (ADR 015, 022): drive on from
                # the last view meanwhile, and lead (and rebuild) once the leader is gone.
                if str(exc) != self._damage_seen:  # once, not every loop
                    self._damage_seen = str(exc)
                    _LOG.warning("%s; waiting for the leading engine to rebuild it", exc)
                self._watch_leader()
                return self._view, self._watermark
            # Derived state: the compactor's projection was folded from the ledger, so
            # a new base replaces whatever file is unreadable (ADR 015).
            _LOG.warning("%s; writing a new base from the ledger's events", exc)
            with self._lock:
                self.compactor.merge()
            manifest = self.reader.refresh()
        if not self.leading:
            self._watch_leader()
        self._view = self.reader.view()  # kept per row by the reader: O(new rows) per read
        published = datetime.fromisoformat(manifest.watermark) if manifest is not None and manifest.watermark else None
        candidates = [t for t in (caught_up, published) if t is not None]
        watermark = max(candidates) if candidates else datetime.now(UTC) if self.leading else self._watermark
        self._watermark = watermark
        return self._view, watermark

    # ---------------------------------------------------------------- run --

    def stop(self, reason: BaseException) -> None:
        """Have `run` raise `reason` at its next safe point (the top of its loop, or
        while it waits to start), not in the middle of a write: for a signal handler
        (`servo run`'s Ctrl-C and SIGTERM). Safe to call from any thread."""
        self._stop = reason
        self._wake.set()

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise self._stop

    def run(self, run_key: str | None = None, *, timeout: float | None = None) -> RunOutcome:
        """Run the pipeline to completion (resuming an unfinished run of it)."""
        with self.home.driving():  # `servo runs cancel` then hands us its event
            return self._run(run_key, timeout)

    def _run(self, run_key: str | None, timeout: float | None) -> RunOutcome:
        started = time.monotonic()
        with self._lock:
            self._lead()
        if self._leasing is None:
            self._push = PushEndpoint(self._on_push, port=self.push_port)
        try:
            run_id, resumed = self._start_or_resume_when_readable(run_key, started, timeout)
        except BaseException:
            self._close_io()
            raise
        self.run_id = run_id
        bound = obs.bind(tenant_id=self.home.tenant, run_id=run_id, trace_id=obs.trace_id_of(self._traces.get(run_id)))
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="servo-worker")
        finished = False
        ended_at: float | None = None
        try:
            while True:
                self._wake.clear()  # before reading: an append from now on runs the loop again
                self._check_stop()
                view, watermark = self._refresh()
                run = view.runs.get(run_id)
                if run is not None and not resumed:  # another engine may have won the key
                    self._check_run_key_owner(run, run_key or "")
                if run is not None and run.state in TERMINAL_RUN_STATES:
                    # Every task of an ended run is terminal: an attempt still running
                    # (cancelled, or timed out, while it ran) can only be refused as
                    # stale when it reports. Attempts that already reported get a
                    # moment to ack; user code still running is not waited for.
                    ended_at = time.monotonic() if ended_at is None else ended_at
                    if not self._running or time.monotonic() - ended_at >= STRAGGLER_SECONDS:
                        finished = not self._running
                        break
                if timeout is not None and time.monotonic() - started > timeout:
                    where = self._outcome(run_id, resumed, started)
                    raise RunTimedOut(f"run {run_id} did not finish within {timeout} s", where)
                self._step(view, watermark, run_id, pool)
                self._progress(view, run_id)
                self._wake.wait(self.poll_seconds)
        except Exception as exc:
            _observe.run_failed(run_id, exc)
            raise
        finally:
            # Interrupted (Ctrl-C, timeout, error) or ended with attempts still running:
            # do not wait for them; the run is durable, and a later `run` resumes it or
            # refuses their late reports (their leases run out).
            pool.shutdown(wait=finished, cancel_futures=not finished)
            self._close_io()
            obs.unbind(bound)
        self._refresh()
        outcome = self._outcome(run_id, resumed, started)
        _observe.run_finished(outcome.run, outcome.seconds)
        return outcome

    def _outcome(self, run_id: str, resumed: bool, started: float) -> RunOutcome:
        """The run's rows in the published projection, as they stand."""
        tables = self.reader.read().tables
        # Not yet folded (a timeout within the first compaction): triggered, so PENDING.
        run_row = next((r for r in tables["runs"] if r["run_id"] == run_id), {"run_id": run_id, "state": "PENDING"})
        tasks = [t for t in tables["tasks"] if t["run_id"] == run_id]
        return RunOutcome(run_row, tasks, resumed, time.monotonic() - started)

    def _start_or_resume_when_readable(
        self, run_key: str | None, started: float, timeout: float | None
    ) -> tuple[str, bool]:
        """Start or resume the run once the published tables can be read: a follower
        that finds them damaged waits for the leader to rebuild them (or leads itself
        once the leader lock is free, and rebuilds them)."""
        while True:
            self._check_stop()
            self.faults("before_start", run_key or "")
            with self.home.starting(self._folding_wait):  # one starter at a time, until its run is published
                view, _ = self._refresh()
                try:
                    run_id, resumed = self._start_or_resume(view, run_key)
                except CorruptState:
                    # A leader's next refresh rewrites it (and raises if that fails too).
                    if timeout is not None and time.monotonic() - started > timeout:
                        raise
                else:
                    if not resumed:
                        self._await_published(run_id)
                    return run_id, resumed
            self._wake.wait(self.poll_seconds)

    def _await_published(self, run_id: str) -> None:
        """Wait until the run just triggered is in the published tables, where the next
        starter finds it: at once for a leader (its refresh folds it); a follower waits
        for the leader's next fold of its notices (or leads, if the leader is gone).
        Given up after PUBLISH_WAIT_SECONDS: the run goes on either way."""
        deadline = time.monotonic() + PUBLISH_WAIT_SECONDS
        while run_id not in self._refresh()[0].runs and time.monotonic() < deadline:
            self._stopping_wait(self.poll_seconds)

    def _folding_wait(self, seconds: float) -> None:
        """Wait for the start lock: a leader folds meanwhile, so that the starter holding
        it, which waits for its run to be published, is not left waiting for us."""
        if self.leading:
            self._refresh()
        self._stopping_wait(seconds)

    def _stopping_wait(self, seconds: float) -> None:
        """Wait up to `seconds` (less if woken); raise if asked to stop (`stop`)."""
        self._check_stop()
        self._wake.wait(seconds)
        self._check_stop()

    def _start_or_resume(self, view: ProjectionView, run_key: str | None) -> tuple[str, bool]:
        tables = self.reader.read().tables
        for row in sorted(tables["runs"], key=lambda r: str(r["created_at"]), reverse=True):
            labels = row.get("labels") or {}
            mine = labels.get("servo.pipeline") == self.pipeline.name and row["state"] not in TERMINAL_RUN_STATES
            if mine and (run_key is None or row.get("run_key") == run_key):
                self._check_same_plan(row, tables["tasks"])
                self._traces.resume(row)
                if self._lost_its_plan(str(row["run_id"]), tables["tasks"]):
                    self._plan_again(row)
                return str(row["run_id"]), True
        now = datetime.now(UTC)
        key = run_key or f"{self.pipeline.name}:{now.isoformat()}"
        run_id = run_id_from_run_key(self.home.secret, self.home.tenant, self.home.workspace, key)
        existing = view.runs.get(run_id)
        if existing is not None:
            self._check_run_key_owner(existing, key)
        emit = Emitter(self.config, self.home.tenant, self.home.workspace, now, "cli:run")
        plan_id = self.pipeline.plan_id()
        self._traces.trigger(run_id, self.pipeline.name)  # RunTriggered and PlanCreated carry it
        self._append(
            [
                emit.emit(
                    "RunTriggered",
                    {
                        "run_id": run_id,
                        "plan_id": plan_id,
                        "trigger": {"kind": "MANUAL"},
                        "root_assets": [],
                        "run_key": key,
                        "labels": self.pipeline.run_labels(),
                    },
                ),
                # Ids come from (now, key): one millisecond later keeps the plan after its run.
                self._plan_event(run_id, now + timedelta(milliseconds=1)),
            ]
        )
        self.faults("after_trigger", run_id)
        return run_id, False

    def _plan_event(self, run_id: str, now: datetime) -> Event:
        emit = Emitter(self.config, self.home.tenant, self.home.workspace, now, "cli:run")
        return emit.emit("PlanCreated", {"run_id": run_id, "plan_id": self.pipeline.plan_id(), "tasks": self.pipeline.plan()})

    def _lost_its_plan(self, run_id: str, tasks: list[dict[str, Any]]) -> bool:
        """Whether a run to resume has no tasks, in the published tables or (leading) in
        the compactor's fold of the ledger, which a torn PlanCreated leaves without them."""
        if self.leading:
            with self._lock:
                return not self.compactor.has_tasks(run_id)
        return not any(t["run_id"] == run_id for t in tasks)

    def _plan_again(self, run: Mapping[str, Any]) -> None:
        """A resumed run with no tasks has lost its PlanCreated (an unreadable ledger
        file; the fold rejected it): without it the run would wait forever. Its plan is
        this pipeline's (`_check_same_plan`), so append it again, under the same
        idempotency key: if the first copy is ever folded, one of them is a DUPLICATE."""
        _LOG.warning(
            "run %s has no tasks: its PlanCreated is missing from the ledger or unreadable; planning it again",
            run["run_id"],
        )
        self._append([self._plan_event(str(run["run_id"]), datetime.now(UTC))])

    def _check_run_key_owner(self, run: RunRecord, run_key: str) -> None:
        """A run key names one run per workspace; another pipeline's run is refused."""
        if run.pipeline is not None and run.pipeline != self.pipeline.name:
            raise RunKeyConflict(
                f"run key {run_key!r} already names run {run.run_id} of pipeline {run.pipeline!r}, "
                f"not {self.pipeline.name!r}; pass another --run-key"
            )

    def _close_io(self) -> None:
        with self._lock:
            self._release_leader_lock()
        if self._push is not None:
            self._push.close()
            self._push = None
        if self._owns_queue and self._leasing is not None:
            self._leasing.close()

    def _check_same_plan(self, run: Mapping[str, Any], tasks: list[dict[str, Any]]) -> None:
        """An unfinished run is resumed only if it was planned from this declaration:
        otherwise it would dispatch tasks the pipeline no longer has."""
        if run.get("plan_id") == self.pipeline.plan_id():
            return
        planned = {t["task_key"]: t for t in tasks if t["run_id"] == run["run_id"]}
        declared = {entry["task_key"]: entry for entry in self.pipeline.plan()}
        only_run, only_file = sorted(planned.keys() - declared), sorted(declared.keys() - planned)
        if only_run or only_file:
            what = f"tasks only in the run: {', '.join(only_run) or '-'}; only in the file: {', '.join(only_file) or '-'}"
        else:
            changed = [f"{key}: {diff}" for key in sorted(declared) if (diff := _plan_diff(planned[key], declared[key]))]
            what = "; ".join(changed) or (
                "the same tasks and settings under another plan id: dependencies moved between tasks, "
                "or the run was planned by an earlier servo version"
            )
        raise ServoError(
            f"unfinished run {run['run_id']} of pipeline {self.pipeline.name!r} was planned from another version "
            f"of it ({what}); cancel it (`servo runs cancel {run['run_id']}`) or restore that version to finish it, "
            "or start a separate run with --run-key KEY"
        )

    def _step(self, view: ProjectionView, watermark: datetime, run_id: str, pool: ThreadPoolExecutor) -> None:
        now = datetime.now(UTC)
        tenant, workspace, config = self.home.tenant, self.home.workspace, self.config
        # One intent emitter, the epoch holder (ADR 010): attempt ids are minted from `now`,
        # so a follower's late duplicate with a lower id would re-pick a dispatched attempt.
        if self.leading:
            self.faults("before_intents", run_id)
            with obs.observe(obs.RECONCILE_SECONDS, "reconcile"):
                events = reconcile(view, now, watermark, tenant=tenant, workspace=workspace, config=config)
            self._append_intents(events)
        if self._leasing is not None and (self._released_at is None or now - self._released_at >= timedelta(seconds=self.repair_seconds)):
            # At start, then every repair tick: a crashed engine's or `servo worker`'s
            # attempts are delivered again now, not once their leases run out.
            self._released_at = now
            self._leasing.release_dead_leases(now)
        if self.leading and now - self._repaired_at >= timedelta(seconds=self.repair_seconds):  # INV-5
            self._repaired_at = now
            with self._lock:
                self._sweep()  # events whose notice was lost (P6: listing here only)
            self._append_intents(repair(view, now, watermark, tenant=tenant, workspace=workspace, config=config))
        # One queue transaction for the step's creates and one group commit for their
        # acknowledgements, not one of each per row.
        rows = pending_dispatches(view)
        timers = [
            t
            for t in view.timers.values()
            if t.state == "SCHEDULED" and t.run_id == run_id and t.timer_id not in self._timers_enqueued
        ]
        deliveries = [self._delivery(row, view) for row in rows]
        creates: list[NewTask] = [
            (row.cloud_task_id, self._target(dispatch_target(d.pipeline)), d.to_json(), now)
            for row, d in zip(rows, deliveries, strict=True)
        ]
        creates += [(t.cloud_task_id, self._target(TIMER), t.timer_id.encode(), t.fire_at) for t in timers]

        def after_create(index: int) -> None:
            if index < len(rows):
                self.faults("after_dispatch_create", rows[index].dispatch_id)
            else:
                self._timers_enqueued.add(timers[index - len(rows)].timer_id)  # once; a lost one is repair's
                self.faults("after_timer_create", timers[index - len(rows)].timer_id)

        created = create_all(self.queue, creates, after_create)
        enqueued: list[Event] = []
        for row, new in zip(rows, created[: len(rows)], strict=True):  # the timers come after
            status = CreateStatus.CREATED if new else CreateStatus.ALREADY_EXISTS
            if new:
                _observe.observe_dispatch(view, row, now)
            enqueued += dispatch_outcome_events(row, status, now, tenant=tenant, workspace=workspace, config=config)
        self._append(enqueued)
        if self._leasing is None:
            return  # pushed to _on_push
        if self._held is not None:
            self._held.keep(now)
        # Timers if this replica leads, and the dispatches of this pipeline's runs (all for
        # `servo worker` if external): another pipeline's attempts are for an engine or
        # worker running its code. A follower's watermark is the published manifest's,
        # which lags the leader's cut: judged by it a due timer only rescheduled itself,
        # seconds later, again and again. The leader's is its own cut: it fires them.
        kinds = (TIMER,) if self.leading else ()
        only = kinds if self.callback_base is not None else (*kinds, DISPATCH, dispatch_target(self.pipeline.name))
        leases = self._leasing.lease(now, max_tasks=self.workers * 4, lease_seconds=self.lease_seconds, target=only) if only else []
        for lease in leases:
            self._deliver(lease, view, watermark, now, pool)
        _observe.observe_queue_depth(self._leasing, now)

    def _delivery(self, row: OutboxRecord, view: ProjectionView) -> Delivery:
        run = view.runs.get(row.run_id)
        return Delivery(
            tenant=self.home.tenant,
            workspace=self.home.workspace,
            run_id=row.run_id,
            task_key=row.task_key,
            attempt=row.attempt,
            attempt_id=row.attempt_id,
            token=self.callbacks.token_for(row.run_id, row.task_key, row.attempt_id),
            callback_base=self.callback_base or "",
            traceparent=self._traces.delivery(row),
            pipeline=None if run is None else run.pipeline,
        )

    def _target(self, kind: str) -> str:
        if self._push is not None:  # a URL of this engine's push endpoint
            return f"{self._push.url}/{DISPATCH if kind.startswith(DISPATCH) else kind}"
        return kind

    def _runs_here(self, view: ProjectionView, payload: bytes) -> bool:
        """Whether this engine's pipeline may run a delivered attempt: a home holds the
        runs of every pipeline run in it, and only a run's own pipeline has its code."""
        try:
            delivery = Delivery.from_json(payload)
        except CallbackRejected:
            return True  # the contract refuses it
        run = view.runs.get(delivery.run_id)
        if delivery.pipeline is None and run is not None:  # an older delivery: its run says
            delivery = replace(delivery, pipeline=run.pipeline)
        return delivery.runs_on(self.pipeline.name)

    @staticmethod
    def _knows(view: ProjectionView, payload: bytes) -> bool:
        """Whether `view` has the attempt a delivery names: a replica's view may lag the
        one that dispatched it, and must not refuse that attempt as stale."""
        try:
            delivery = Delivery.from_json(payload)
        except CallbackRejected:
            return True  # the contract refuses it
        task = view.task(delivery.run_id, delivery.task_key)
        return task is not None and task.attempt >= delivery.attempt

    def _on_push(self, kind: str, name: str, body: bytes) -> int:
        """A Cloud Tasks push: run the attempt or the timer handler; 503 asks for a retry."""
        view, watermark, now = self._view, self._watermark, datetime.now(UTC)
        if kind == TIMER:
            timer = view.timers.get(body.decode())
            if timer is None or (self.leading and watermark < timer.fire_at <= now):
                return 503  # not folded yet, or due after the last cut (see `_deliver`)
            tenant, workspace = self.home.tenant, self.home.workspace
            events = on_timer_fired(view, timer, now, watermark, tenant=tenant, workspace=workspace, config=self.config)
            self._append_intents(events)
            _observe.timer_handled(view, timer, events)
            return 200
        if kind != DISPATCH:
            return 404
        if not self._knows(view, body) or not self._runs_here(view, body):
            return 503
        self._attempt(Delivery.from_json(body), f"push:{self.replica}")
        return 200

    def _deliver(self, lease: Lease, view: ProjectionView, watermark: datetime, now: datetime, pool: ThreadPoolExecutor) -> None:
        task = lease.task
        if task.target == TIMER:
            timer = view.timers.get(task.payload.decode())
            if timer is None:
                self._nack(lease, now + timedelta(seconds=1))  # not folded yet
                return
            if self.leading and watermark < timer.fire_at <= now:
                # Due after this loop's cut: the next loop's cut passes fire_at, so it
                # fires then, not a rescheduled second or more later (INV-9 either way).
                self._nack(lease, now)
                return
            events = on_timer_fired(
                view, timer, now, watermark, tenant=self.home.tenant, workspace=self.home.workspace, config=self.config,
                waiting=self._waiting(view, timer),
            )
            self._append_intents(events)
            _observe.timer_handled(view, timer, events)
            self._ack(lease)
            return
        if task.name in self._running:
            return
        if not self._knows(view, task.payload):
            self._nack(lease, now + timedelta(seconds=0.1))
            return
        if not self._runs_here(view, task.payload):  # another pipeline's (an older queue row)
            self._nack(lease, now + timedelta(seconds=5))
            return
        if self._held is not None:
            self._held.hold(lease)
        with self._running_lock:
            self._running[task.name] = pool.submit(self._work, lease)

    def _waiting(self, view: ProjectionView, timer: TimerRecord) -> frozenset[str]:
        """The attempt a heartbeat check watches, if it never started and its dispatch is
        still pending in this engine's queue (not yet delivered, or leased by a live
        worker, whose lease otherwise runs out and frees it): it waits for a worker and
        is not lost. A dispatch whose queue task is gone (or names another attempt id)
        is, and the check ends it DISPATCH_TIMEOUT as before."""
        if timer.timer_type != "HEARTBEAT_CHECK" or self._leasing is None or timer.attempt is None:
            return frozenset()
        task = view.task(timer.run_id or "", timer.task_key or "")
        if task is None or task.state != "DISPATCHED" or task.attempt != timer.attempt or task.attempt_id is None:
            return frozenset()
        queued = self._leasing.get_task(dispatch_cloud_task_id(dispatch_id(task.run_id, task.task_key, task.attempt)))
        try:
            same = queued is not None and Delivery.from_json(queued.payload).attempt_id == task.attempt_id
        except CallbackRejected:
            same = False
        return frozenset({task.attempt_id}) if same else frozenset()

    def _ack(self, lease: Lease) -> None:
        assert self._leasing is not None
        self._leasing.ack(lease)

    def _nack(self, lease: Lease, retry_at: datetime) -> None:
        assert self._leasing is not None
        self._leasing.nack(lease, retry_at)

    def _work(self, lease: Lease) -> None:
        """Run one leased attempt through the worker contract, then ack."""
        try:
            self._attempt(Delivery.from_json(lease.task.payload), threading.current_thread().name)
            self._ack(lease)
        finally:
            if self._held is not None:
                self._held.release(lease.task.name)
            with self._running_lock:
                self._running.pop(lease.task.name, None)
            self._wake.set()

    def _attempt(self, delivery: Delivery, worker_id: str) -> None:
        """Run one delivered attempt through the worker contract (a stale one: nothing)."""
        scope = ExitStack()  # obs: the worker's span and log ids for this attempt
        delivery = scope.enter_context(_observe.attempt_scope(delivery))
        try:
            try:
                self.callbacks.started(delivery, worker_id)
            except Exception:
                return  # stale or forged: nothing to run
            context = _TaskContext(delivery, self.callbacks, worker_id)
            began = time.perf_counter()
            try:
                self.pipeline.call(delivery.task_key, context)
            except StaleAttemptRejected:
                raise  # ctx.heartbeat() found the attempt ended (cancelled, timed out): see below
            except Exception as exc:
                _observe.task_finished(delivery, time.perf_counter() - began, exc)
                self.callbacks.finished(delivery, worker_id, "FAILED", describe_error(exc))
            else:
                _observe.task_finished(delivery, time.perf_counter() - began)
                self.callbacks.finished(delivery, worker_id, "SUCCEEDED")
        except StaleAttemptRejected as exc:  # cancelled or timed out while it ran: done
            _observe.attempt_superseded(delivery, exc)
        except Exception as exc:  # logged and counted; the queue redelivers the attempt
            _observe.worker_failed(delivery, exc)
            raise
        finally:
            scope.close()

    def _progress(self, view: ProjectionView, run_id: str) -> None:
        if self.on_progress is None:
            return
        counts: dict[str, int] = {}
        for (rid, _), task in view.tasks.items():
            if rid == run_id:
                counts[task.state] = counts.get(task.state, 0) + 1
        run = view.runs.get(run_id)
        self.on_progress(counts, run.state if run else "PENDING")
