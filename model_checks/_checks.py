"""The invariants, checked against oracles that do not reuse the fold's own decisions.

- `check_fold`: per distinct folded event set (INV-1, 2, 6, 7, 8, 10 and the ledger's
  validity); the oracle works from the plan's graph and the set of accepted events.
- `check_timeout`: when a controller times an attempt out, against the *ledger*
  (ground truth, compacted or not): no sign of life in the checked window (INV-9).
- `check_quiescent`: at an end state (INV-5, INV-10): every task terminal, the run
  ended with the outcome its tasks and the cancel imply, every success backed by a
  worker's report for the task's current attempt.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from model_checks._universe import RUN, WORKER_FACTS, FoldEntry, Violation, bits, fingerprint, ms_of
from servo.core.events import Event
from servo.core.fold import Projection
from servo.core.ids import ulid_timestamp

if TYPE_CHECKING:
    from model_checks._universe import Universe

__all__ = ["check_fold", "check_quiescent", "check_timeout", "expected_run_state"]

TERMINAL = frozenset({"SKIPPED", "CANCELLED", "FAILED", "SUCCEEDED"})
NON_SUCCESS = frozenset({"SKIPPED", "CANCELLED", "FAILED"})
NEEDS_ALL_UPSTREAM = frozenset({"READY", "DISPATCHED", "RUNNING", "RETRY_WAIT", "SUCCEEDED", "FAILED"})


def expected_run_state(task_states: list[str], cancelled: bool) -> str:
    """The run outcome INV-10 requires once every task is terminal."""
    if cancelled:
        return "CANCELLED"
    if "FAILED" in task_states:
        return "FAILED"
    if "CANCELLED" in task_states:
        return "CANCELLED"
    return "SUCCEEDED"


def check_fold(u: Universe, entry: FoldEntry, incremental: Projection, full: Projection) -> Violation | None:
    """Every per-projection invariant of one folded set; the first broken one."""
    # Rows compare field by field (dataclass equality); only if they differ is the
    # published form compared, so an internal-only difference is not reported.
    same = incremental.partitions == full.partitions and incremental.invalid == full.invalid
    if not same and fingerprint(incremental) != fingerprint(full) and incremental.tables() != full.tables():
        return ("INV-1", "the incrementally folded projection differs from a full refold of the same events")
    if entry.published is not None and entry.view != entry.published:
        return ("INV-7", "the view of the published tables differs from the projection's rows")
    rejected = u.rejected_ids(full)
    entry.accepted = frozenset(i for i in bits(entry.mask) if u.events[i].event.event_id not in rejected)
    for index in bits(entry.mask):
        info = u.events[index]
        if info.valid is not None:
            return info.valid
        reason = rejected.get(info.event.event_id)
        if reason in ("INVALID", "UNKNOWN_EVENT_TYPE"):
            return ("LEDGER", f"{info.event.event_type} {info.event.event_id} rejected {reason}")
    events = sorted({u.events[i].event.event_id: u.events[i].event for i in bits(entry.mask)}.values(), key=lambda e: e.event_id)
    accepted = [e for e in events if e.event_id not in rejected]
    return _duplicates(accepted) or _attempts(events, rejected) or _dependencies(u, full, accepted)


def _duplicates(accepted: list[Event]) -> Violation | None:
    seen: dict[str, str] = {}
    for event in accepted:
        first = seen.setdefault(event.idempotency_key, event.event_id)
        if first != event.event_id:
            return ("INV-2", f"two events with idempotency key {event.idempotency_key!r} both took effect")
    return None


def _attempts(events: list[Event], rejected: dict[str, str]) -> Violation | None:
    """Replay the attempt lifecycle from accepted events: a worker fact takes effect
    exactly when it names the task's live attempt and is not a repeat (INV-8)."""
    current: dict[str, tuple[int, str, bool]] = {}
    cancelled = False
    used: set[str] = set()
    for event in events:
        d = event.data
        ok = event.event_id not in rejected
        if event.event_type in WORKER_FACTS:
            attempt = current.get(d["task_key"])
            live = (
                not cancelled
                and attempt is not None
                and attempt[2]
                and (attempt[0], attempt[1]) == (d["attempt"], d["attempt_id"])
            )
            if ok and not live:
                return ("INV-8", f"{event.event_type} of {d['task_key']} attempt {d['attempt']} ({d['attempt_id']}) "
                        "took effect but that attempt is not the task's live one")
            if not ok and live and event.idempotency_key not in used:
                return ("INV-8", f"{event.event_type} of the live attempt {d['attempt_id']} of {d['task_key']} was "
                        f"rejected ({rejected[event.event_id]})")
        if not ok:
            continue
        used.add(event.idempotency_key)
        if event.event_type == "DispatchRequested":
            current[d["task_key"]] = (d["attempt"], d["attempt_id"], True)
        elif event.event_type in ("TaskFinished", "AttemptTimedOut"):
            attempt = current.get(d["task_key"])
            if attempt is not None and attempt[1] == d["attempt_id"]:
                current[d["task_key"]] = (attempt[0], attempt[1], False)
        elif event.event_type == "RunCancelRequested":
            cancelled = True
    return None


def _dependencies(u: Universe, full: Projection, accepted: list[Event]) -> Violation | None:
    """INV-6 and INV-10 from the plan's graph (not the fold's edge bookkeeping)."""
    part = full.partitions.get(RUN)
    if part is None or part.run is None:
        return ("INV-10", "the model's run is missing from the projection")
    rows = part.tasks
    for down, ups in u.deps.items():
        row = rows[down]
        succeeded = [up for up in ups if rows[up].state == "SUCCEEDED"]
        success_edges = sum(1 for up in ups if part.edges[(up, down)].resolution == "SUCCESS")
        if not row.deps_satisfied_count == len(succeeded) == success_edges:
            return ("INV-6", f"{down}: deps_satisfied_count={row.deps_satisfied_count} but {len(succeeded)} of its "
                    f"upstream tasks SUCCEEDED ({success_edges} edges resolved SUCCESS)")
        if row.state in NEEDS_ALL_UPSTREAM and len(succeeded) != len(ups):
            missing = sorted(set(ups) - set(succeeded))
            return ("INV-6", f"{down} is {row.state} but upstream {missing} did not succeed")
        if row.state == "BLOCKED" and len(succeeded) == len(ups):
            return ("INV-6", f"every upstream of {down} SUCCEEDED but it is still BLOCKED")
        failed_up = [up for up in ups if rows[up].state in NON_SUCCESS]
        if failed_up and row.state not in ("SKIPPED", "CANCELLED"):
            return ("INV-10", f"upstream {failed_up[0]} is {rows[failed_up[0]].state} but {down} is {row.state}, not SKIPPED")
    states = [rows[k].state for k in u.deps]
    cancelled = any(e.event_type == "RunCancelRequested" for e in accepted)
    all_terminal = all(s in TERMINAL for s in states)
    run_state = part.run.state
    if cancelled and not all_terminal:
        open_ = [k for k in u.deps if rows[k].state not in TERMINAL]
        return ("INV-10", f"the run was cancelled but {open_[0]} is still {rows[open_[0]].state}")
    if all_terminal:
        want = expected_run_state(states, cancelled)
        if run_state != want:
            return ("INV-10", f"every task is terminal ({', '.join(states)}) but the run is {run_state}, not {want}")
    elif run_state in ("SUCCEEDED", "FAILED", "CANCELLED"):
        return ("INV-10", f"the run is {run_state} while tasks are still open")
    return None


def check_timeout(u: Universe, event_index: int, fire_ms: int, ledger: int) -> Violation | None:
    """An AttemptTimedOut decided by a check due at `fire_ms` is false if the ledger
    holds a sign of life of that attempt in (fire_ms - timeout, fire_ms] (INV-9)."""
    event = u.events[event_index].event
    if event.event_type != "AttemptTimedOut":
        return None
    d = event.data
    timeout_ms = u.timeouts[d["task_key"]] * 1000
    low, high = fire_ms - timeout_ms, fire_ms
    signs: list[tuple[int, str]] = []
    with contextlib.suppress(ValueError):
        signs.append((ms_of(ulid_timestamp(d["attempt_id"])), "its dispatch"))
    first_start: dict[str, tuple[str, int]] = {}
    for index in bits(u.evidence.get(d["attempt_id"], 0) & ledger):
        info = u.events[index]
        assert info.evidence_ms is not None
        if info.event.event_type == "TaskStarted":
            known = first_start.get(info.event.idempotency_key)
            if known is None or info.event.event_id < known[0]:
                first_start[info.event.idempotency_key] = (info.event.event_id, info.evidence_ms)
        else:
            signs.append((info.evidence_ms, f"a heartbeat at {info.evidence_ms} ms"))
    signs.extend((ms, f"TaskStarted at {ms} ms") for _, ms in first_start.values())
    for ms, what in signs:
        if low < ms <= high:
            return ("INV-9", f"{d['task_key']} attempt {d['attempt']} timed out by the check due at {fire_ms} ms "
                    f"although the ledger holds {what} (within the {timeout_ms} ms window)")
    return None


def check_quiescent(u: Universe, entry: FoldEntry) -> Violation | None:
    """Nothing left to do: every task must be terminal with a justified state (INV-5)."""
    view = entry.view
    open_tasks = [t for t in view.tasks.values() if not t.is_terminal]
    if open_tasks:
        t = open_tasks[0]
        return ("INV-5", f"no action is left but {t.task_key} is {t.state} (attempt {t.attempt}): lost work")
    accepted = [u.events[i].event for i in entry.accepted]
    cancelled = any(e.event_type == "RunCancelRequested" for e in accepted)
    for t in view.tasks.values():
        if t.state == "SUCCEEDED" and not any(
            e.event_type == "TaskFinished" and e.data["outcome"] == "SUCCEEDED" and e.data["attempt_id"] == t.attempt_id
            for e in accepted
        ):
            return ("INV-8", f"{t.task_key} SUCCEEDED without a worker reporting success for attempt {t.attempt_id}")
        if t.state == "CANCELLED" and not cancelled:
            return ("INV-10", f"{t.task_key} is CANCELLED but the run was never cancelled")
    want = expected_run_state([t.state for t in view.tasks.values()], cancelled)
    if entry.run_state != want:
        return ("INV-10", f"the run ended {entry.run_state}, expected {want}")
    return None
