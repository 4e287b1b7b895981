"""The Layer 1 fold as a Hypothesis state machine whose event rules come from the spec.

`build_fold_machine(spec, registry)` makes one rule per Layer 1 catalog event that is
not derived: it is enabled when some instance of the event's primary machine (in the
lagging projection) is in a state with a row for that event, or when the event can
create an instance (`created_by`); it picks a target and fills the payload with the
builder from `fold_strategies.PAYLOADS`. A controller reacts once to each row it sees;
fault rules add the rest: `redeliver` (an exact copy, or a replay under a new event_id
minted now or in the past), `replica` (a second controller, its clock possibly behind,
emits its own event for any candidate: a second attempt_id for one attempt, an event
sorting before folded ones), `stale_worker_fact` (a worker fact for a replaced, ended
or unknown attempt), compaction lag (events wait in `pending` unless a rule folds at
once; `compact` folds a random part) and `crash` (the projection is rebuilt from every
delivered event, shuffled, in random batches). Rules choose targets from the lagging
projection, as controllers do.

After every step the invariants of SPEC §4 are checked on the incremental projection
(INV-1, 2, 3, 6, 8, 10) and every transition the engine took is replayed on the
generated reference classes (`servo.reference`): the runtime fold and the reference
must agree on every (state, event, guard facts) they meet.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from fold_strategies import CREATORS, LIVE, PAYLOADS, RUN_IDS, Row, check_coverage, plans
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from statemachine.exceptions import TransitionNotAllowed

from servo.core._registry import Registry
from servo.core.builders import EPOCH, EventBuilder, TaskDef
from servo.core.events import Catalog, Event
from servo.core.fold import Projection, fold
from servo.core.fold._engine import Step
from servo.reference import MACHINES
from servo.spec import Spec

__all__ = ["FoldMachine", "build_fold_machine"]

Tables = dict[str, list[dict[str, Any]]]
TERMINAL = frozenset({"SKIPPED", "CANCELLED", "FAILED", "SUCCEEDED"})
NOT_SUCCESS = frozenset({"SKIPPED", "CANCELLED", "FAILED"})
PAST_READY = frozenset({"READY", "DISPATCHED", "RUNNING", "RETRY_WAIT", "SUCCEEDED"})
RUN_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
RESOLUTION = {
    "SUCCEEDED": "SUCCESS",
    "FAILED": "FAILED",
    "SKIPPED": "SKIPPED",
    "CANCELLED": "CANCELLED",
}
PICK = st.integers(0, 15)
VARIANT = st.integers(0, 15)
NOW = st.sampled_from([True, True, False])  # fold at once, or leave pending (compaction lag)

_REFERENCE: dict[tuple[str, str, str, tuple[tuple[str, bool], ...]], str | None] = {}
"""(machine, state, event, facts) -> the reference's new state (None: refused); memoised."""


def _reference(step: Step) -> str | None:
    key = (step.machine, step.source, step.event, tuple(sorted(step.facts.items())))
    if key not in _REFERENCE:
        machine = MACHINES[step.machine](start_value=step.source)
        try:
            _REFERENCE[key] = machine.fire(step.event, step.facts)
        except TransitionNotAllowed:
            _REFERENCE[key] = None
    return _REFERENCE[key]


def _seen(event_type: str, row: Row) -> str:
    """What a controller remembers having reacted to: the event and the row it saw."""
    shown = {k: v for k, v in row.items() if k != "row_version"}
    return event_type + json.dumps(shown, sort_keys=True, default=str)


def _diff(label: str, got: Tables, want: Tables) -> str:
    """Name the first table that differs and a few rows on each side."""
    for name in want:
        if got.get(name) != want[name]:
            have = {json.dumps(r, sort_keys=True) for r in got.get(name, [])}
            need = {json.dumps(r, sort_keys=True) for r in want[name]}
            return (
                f"{label}: table {name!r} differs\n"
                f"  only in the incremental projection: {sorted(have - need)[:3]}\n"
                f"  only in the reference fold: {sorted(need - have)[:3]}"
            )
    return f"{label}: tables differ"


class FoldMachine(RuleBasedStateMachine):
    """Shared state, fault rules and invariants; event rules are added per spec."""

    spec: ClassVar[Spec]
    registry: ClassVar[Registry]
    state_columns: ClassVar[dict[str, str]]

    def __init__(self) -> None:
        super().__init__()
        self.catalog = Catalog(self.spec)
        self.builder = EventBuilder(self.catalog)
        self.plans: dict[str, list[TaskDef]] = {}
        self.rng = random.Random(0)
        self.emitted: dict[str, Event] = {}
        self.pending: list[Event] = []
        self.folded: dict[str, Event] = {}
        self.stale: dict[str, Event] = {}
        self.unchecked_stale: list[str] = []
        self.attempts: dict[tuple[str, str, str], Row] = {}
        self.steps: list[Step] = []
        self.projection = self._new_projection()
        self.version = 0
        self._tables: tuple[int, Tables] | None = None
        self._fresh: tuple[int, tuple[dict[tuple[str, str], int], Tables, str]] | None = None
        self._candidates: dict[str, list[Row]] = {}
        self._candidates_version = -1
        self.reacted: set[str] = set()
        self._checked: dict[str, int] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.rewritten = False
        self.max_folded = ""
        self.crashed_at = -1
        self.recheck_stale = False

    # ---------------------------------------------------------- the world --

    def _new_projection(self) -> Projection:
        projection = Projection(self.spec, self.registry, keep_history=True)
        projection.engine.trace = self.steps.append
        return projection

    def tables(self) -> Tables:
        """The incremental projection's tables (cached until the next fold)."""
        if self._tables is None or self._tables[0] != self.version:
            self._tables = (self.version, self.projection.tables())
        return self._tables[1]

    def instances(self, machine: str) -> list[Row]:
        """Rows of `machine`'s table in the lagging projection, with `state` set."""
        column = self.state_columns[machine]
        table = self.spec.machines[machine].table
        return [{**row, "state": row[column]} for row in self.tables()[table]]

    def fresh_id(self) -> str:
        """A unique ULID at the current instant (the clock does not move)."""
        return self.builder.next_id(self.builder.now)[0]

    def clock(self) -> datetime:
        """The event clock."""
        return self.builder.now

    def candidates(self, event_type: str) -> list[Row]:
        """Targets for `event_type`: instances whose state has a row for it, or the
        instances it can create (`created_by`)."""
        if self._candidates_version != self.version:
            self._candidates, self._candidates_version = {}, self.version
        if event_type not in self._candidates:
            machine = self.spec.machines[self.spec.events[event_type].machine]
            rows = [r for r in self.instances(machine.name) if machine.rows(r["state"], event_type)]
            if event_type in machine.created_by:
                rows += CREATORS[event_type](self)
            self._candidates[event_type] = rows
        return self._candidates[event_type]

    def fresh_candidates(self, event_type: str) -> list[Row]:
        """Candidates this controller has not reacted to yet in the state it sees them
        (a second replica, `replica`, does not know and may emit again)."""
        return [r for r in self.candidates(event_type) if _seen(event_type, r) not in self.reacted]

    def stale_candidates(self, event_type: str) -> list[Row]:
        """Attempts that are not the task's current live one in the lagging projection:
        every attempt ever requested that was replaced, ended or never accepted, and a
        zombie worker's unknown attempt_id for each live task."""
        tasks = {(t["run_id"], t["task_key"]): t for t in self.instances("task")}
        facts = [fact for _, fact in sorted(self.attempts.items())]
        for (run, key), task in sorted(tasks.items()):
            if task["state"] in LIVE:
                zombie = f"zombie-{task['attempt_id']}"
                facts.append(
                    {
                        "run_id": run,
                        "task_key": key,
                        "attempt": task["attempt"],
                        "attempt_id": zombie,
                    }
                )
        out = []
        for fact in facts:
            seen = tasks.get((fact["run_id"], fact["task_key"]))
            if (
                seen is not None
                and (seen["attempt_id"] != fact["attempt_id"] or seen["state"] not in LIVE)
                and _seen(event_type, fact) not in self.reacted
            ):
                out.append(fact)
        return out

    # ------------------------------------------------------------ delivery --

    def emit(self, event: Event, now: bool) -> None:
        """Send an event to the ledger; `now` folds everything pending at once."""
        self.emitted.setdefault(event.event_id, event)
        if event.event_type == "DispatchRequested":
            d = event.data
            self.attempts[(d["run_id"], d["task_key"], d["attempt_id"])] = {
                k: d[k] for k in ("run_id", "task_key", "attempt", "attempt_id")
            }
        self.pending.append(event)
        if now:
            self.deliver(self.pending)
            self.pending = []

    def deliver(self, events: Iterable[Event]) -> None:
        """Fold events into the projection and remember them as delivered."""
        events = list(events)
        if any(e.event_id < self.max_folded for e in events if e.event_id not in self.folded):
            self.rewritten = True  # a late event may rewrite history (INV-1 allows it)
            self.recheck_stale = True
        self.projection.apply(events)
        for event in events:
            self.folded.setdefault(event.event_id, event)
            self.max_folded = max(self.max_folded, event.event_id)
        self.version += 1

    def sorted_folded(self) -> list[Event]:
        """The delivered set in fold order."""
        return sorted(self.folded.values(), key=lambda e: e.event_id)

    def fresh_fold(self) -> tuple[dict[tuple[str, str], int], Tables, str]:
        """A fresh fold of the delivered set, applied (in event_id order) as a random
        prefix and then the rest: the prefix's deps_satisfied_count per task, the
        tables, and the prefix's last event_id. Cached until the next fold."""
        if self._fresh is None or self._fresh[0] != self.version:
            events = self.sorted_folded()
            cut = self.rng.randrange(len(events)) if events else 0
            projection = Projection(self.spec, self.registry, keep_history=False)
            projection.apply(events[:cut])
            prefix = {
                (x["run_id"], x["task_key"]): x["deps_satisfied_count"]
                for x in projection.rows("tasks")
            }
            projection.apply(events[cut:])
            last = events[cut - 1].event_id if cut else ""
            self._fresh = (self.version, (prefix, projection.tables(), last))
        return self._fresh[1]

    def fold(self, events: Iterable[Event]) -> Tables:
        """A fresh fold (no history, no trace) of a collection of events."""
        return fold(events, self.spec, self.registry).tables()

    def _changed(self, name: str) -> bool:
        if self._checked.get(name) == self.version:
            return False
        self._checked[name] = self.version
        return True

    # --------------------------------------------------------- fault rules --

    @precondition(lambda self: bool(self.emitted))
    @rule(
        how=st.sampled_from(["same_event_id", "new_event_id", "new_event_id_in_the_past"]),
        pick=st.integers(0, 255),
        now=NOW,
    )
    def redeliver(self, how: str, pick: int, now: bool) -> None:
        """Deliver an emitted event again: a byte-identical copy (INV-2), or its payload
        under a new event_id with the same idempotency key, minted now or in the past
        (then the replay may win the key)."""
        events = sorted(self.emitted)
        original = self.emitted[events[pick % len(events)]]
        if how == "same_event_id":
            self.emit(self.catalog.parse(json.loads(original.to_json())), now)
            return
        at = None
        if how == "new_event_id_in_the_past":
            at = max(EPOCH, self.builder.now - timedelta(milliseconds=1 + pick % 40))
        self.emit(self.builder.event(original.event_type, original.data, at=at), now)

    @precondition(lambda self: bool(self.folded) and self.version != self.crashed_at)
    @rule(seed=st.integers(0, 2**16), batches=st.integers(1, 4))
    def crash(self, seed: int, batches: int) -> None:
        """Lose the incremental projection; rebuild it from every delivered event,
        shuffled and split into random batches."""
        events = list(self.folded.values())
        rng = random.Random(seed)
        rng.shuffle(events)
        cuts = sorted(rng.sample(range(1, len(events)), min(batches - 1, max(len(events) - 1, 0))))
        self.projection = self._new_projection()
        for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
            self.projection.apply(events[lo:hi])
        self.version += 1
        self.crashed_at = self.version

    @precondition(lambda self: bool(self.pending))
    @rule(seed=st.integers(0, 2**16), how=st.sampled_from(["all", "oldest", "newest", "random"]))
    def compact(self, seed: int, how: str) -> None:
        """Fold part of the pending events, shuffled, in two apply calls."""
        rng = random.Random(seed)
        n = len(self.pending)
        k = rng.randint(1, n)
        if how == "all":
            chosen = list(range(n))
        elif how == "oldest":
            chosen = list(range(k))
        elif how == "newest":
            chosen = list(range(n - k, n))
        else:
            chosen = sorted(rng.sample(range(n), k))
        batch = [self.pending[i] for i in chosen]
        taken = set(chosen)
        self.pending = [e for i, e in enumerate(self.pending) if i not in taken]
        rng.shuffle(batch)
        cut = rng.randint(0, len(batch))
        self.deliver(batch[:cut])
        self.deliver(batch[cut:])

    # ---------------------------------------------------------- invariants --

    @invariant()
    def inv01_projection_is_a_function_of_the_set(self) -> None:
        """INV-1: the incremental tables == a fresh fold of the delivered set."""
        if not self._changed("inv01"):
            return
        got = self.tables()
        want = self.fresh_fold()[1]
        assert got == want, _diff("INV-1 (fresh fold)", got, want)

    @invariant()
    def inv02_any_order_any_split_any_copies(self) -> None:
        """INV-1 and INV-2: the delivered set, shuffled, with exact copies of some events,
        applied in two batches to a new projection gives the same tables."""
        if not self._changed("inv02") or not self.folded:
            return
        events = list(self.folded.values())
        copies = [
            self.catalog.parse(json.loads(e.to_json())) for e in events if self.rng.random() < 0.25
        ]
        mixed = events + copies
        self.rng.shuffle(mixed)
        got = self.tables()
        want = self._fold_in_two(mixed)
        if got != want:
            # Say which law broke: order/split alone (INV-1) or the copies (INV-2).
            self.rng.shuffle(events)
            label = (
                "INV-1 (shuffled, two batches)"
                if got != self._fold_in_two(events)
                else "INV-2 (copies)"
            )
            raise AssertionError(_diff(label, got, want))

    def _fold_in_two(self, events: list[Event]) -> Tables:
        projection = Projection(self.spec, self.registry, keep_history=True)
        cut = self.rng.randint(0, len(events))
        projection.apply(events[:cut])
        projection.apply(events[cut:])
        return projection.tables()

    @invariant()
    def inv03_one_outbox_row_per_attempt(self) -> None:
        """INV-3: one outbox row per (run, task, attempt); the current attempt's row
        carries the task's attempt_id."""
        if not self._changed("inv03"):
            return
        t = self.tables()
        rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        for row in t["dispatch_outbox"]:
            key = (row["run_id"], row["task_key"], row["attempt"])
            assert key not in rows, f"INV-3: two outbox rows for attempt {key}"
            rows[key] = row
        for task in t["tasks"]:
            if task["attempt"] == 0:
                continue
            key = (task["run_id"], task["task_key"], task["attempt"])
            assert key in rows, f"INV-3: task {key} has no outbox row for its current attempt"
            assert rows[key]["attempt_id"] == task["attempt_id"], (
                f"INV-3: outbox row {key} has attempt_id {rows[key]['attempt_id']}, "
                f"the task {task['attempt_id']}"
            )
        for key in rows:
            task_attempt = next(
                (x["attempt"] for x in t["tasks"] if (x["run_id"], x["task_key"]) == key[:2]), 0
            )
            assert key[2] <= task_attempt, f"INV-3: outbox row {key} is ahead of its task"

    @invariant()
    def inv06_dependency_counts(self) -> None:
        """INV-6: deps_satisfied_count == SUCCESS edges; READY and later imply all
        satisfied; BLOCKED implies not; the count never decreases."""
        if not self._changed("inv06"):
            return
        t = self.tables()
        state = {(x["run_id"], x["task_key"]): x["state"] for x in t["tasks"]}
        into: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for edge in t["dep_satisfaction"]:
            run, up = edge["run_id"], edge["upstream_task_key"]
            into[(run, edge["downstream_task_key"])].append(edge)
            want = RESOLUTION.get(state[(run, up)])
            assert edge["resolution"] == want, (
                f"INV-6: edge {run}:{up}->{edge['downstream_task_key']} resolved "
                f"{edge['resolution']} while its upstream is {state[(run, up)]}"
            )
            assert edge["satisfied"] == (want == "SUCCESS"), f"INV-6: edge {edge} satisfied flag"
        for task in t["tasks"]:
            key = (task["run_id"], task["task_key"])
            edges = into[key]
            count, total = task["deps_satisfied_count"], task["deps_total"]
            successes = sum(e["resolution"] == "SUCCESS" for e in edges)
            where = f"task {key} in {task['state']}"
            assert total == len(edges), f"INV-6: {where}: deps_total {total}, {len(edges)} edges"
            assert count == successes, (
                f"INV-6: {where}: deps_satisfied_count {count} != {successes} SUCCESS edges"
            )
            if task["state"] in PAST_READY:
                assert count == total, f"INV-6: {where} with {count}/{total} upstreams satisfied"
            if task["state"] == "BLOCKED":
                assert count < total, f"INV-6: {where} although every upstream succeeded"
            previous = self.counts.get(key)
            if previous is not None and not self.rewritten:
                assert count >= previous, f"INV-6: {where}: count went {previous} -> {count}"
        self.counts = {(x["run_id"], x["task_key"]): x["deps_satisfied_count"] for x in t["tasks"]}
        self.rewritten = False
        self._prefix_counts_only_grow(t)

    def _prefix_counts_only_grow(self, t: Tables) -> None:
        """Within one fold the count only grows: a prefix (by event_id) never has more."""
        prefix, _, last = self.fresh_fold()
        full = {(x["run_id"], x["task_key"]): x["deps_satisfied_count"] for x in t["tasks"]}
        for key, before in prefix.items():
            after = full.get(key, 0)
            assert before <= after, (
                f"INV-6: task {key}: deps_satisfied_count {before} after event {last} "
                f"but {after} once every event is folded (a decrement)"
            )

    @invariant()
    def inv08_stale_attempt_changes_nothing(self) -> None:
        """INV-8: a worker fact for an ended or replaced attempt is rejected and folding
        the set without it gives the same tables minus its rejected_events row."""
        if not self._changed("inv08"):
            return
        # Newly folded ones first (at most 3 a step); once a late event may have
        # rewritten history, one already checked at random.
        todo = [i for i in self.unchecked_stale if i in self.folded][:3]
        self.unchecked_stale = [i for i in self.unchecked_stale if i not in todo]
        checked = [i for i in self.stale if i in self.folded and i not in self.unchecked_stale]
        if not todo and checked and self.recheck_stale:
            todo = [self.rng.choice(checked)]
        self.recheck_stale = False
        for event_id in todo:
            self._check_stale(self.stale[event_id])

    def _check_stale(self, stale: Event) -> None:
        events = self.sorted_folded()
        before = [e for e in events if e.event_id < stale.event_id]
        d = stale.data
        task = next(
            (
                x
                for x in self.fold(before)["tasks"]
                if (x["run_id"], x["task_key"]) == (d["run_id"], d["task_key"])
            ),
            None,
        )
        if task is None:
            return  # its run or plan sorts after it: UNKNOWN_RUN / UNKNOWN_TASK, not INV-8
        current = task["state"] in LIVE and (task["attempt_id"], task["attempt"]) == (
            d["attempt_id"],
            d["attempt"],
        )
        if current:
            return  # a late event made this attempt current again at its position
        got = self.tables()
        reasons = {r["event_id"]: r["reason"] for r in got["rejected_events"]}
        taken = any(e.idempotency_key == stale.idempotency_key for e in before)
        want = "DUPLICATE" if taken else "STALE_ATTEMPT"
        assert reasons.get(stale.event_id) == want, (
            f"INV-8: {stale.event_type} {stale.event_id} for attempt {d['attempt']} "
            f"({d['attempt_id']}) of {d['run_id']}:{d['task_key']}, while the task is "
            f"{task['state']} on attempt {task['attempt']} ({task['attempt_id']}): "
            f"recorded as {reasons.get(stale.event_id)!r}, expected {want}"
        )
        if not taken and any(
            e.idempotency_key == stale.idempotency_key and e.event_id > stale.event_id
            for e in events
        ):
            return  # it wins its key against a later copy, so removing it is not a no-op
        without = self.fold(e for e in events if e.event_id != stale.event_id)
        want_tables = {
            **got,
            "rejected_events": [
                r for r in got["rejected_events"] if r["event_id"] != stale.event_id
            ],
        }
        assert without == want_tables, _diff(
            f"INV-8 (removing stale {stale.event_type} {stale.event_id})", want_tables, without
        )

    @invariant()
    def inv10_failure_propagation_and_run_outcome(self) -> None:
        """INV-10: non-success upstreams skip or cancel their downstreams; a run is
        terminal exactly when all its tasks are, with the right outcome."""
        if not self._changed("inv10"):
            return
        t = self.tables()
        rejected = {r["event_id"] for r in t["rejected_events"]}
        cancelled_runs = {
            e.data["run_id"]
            for e in self.folded.values()
            if e.event_type == "RunCancelRequested" and e.event_id not in rejected
        }
        runs = {r["run_id"]: r for r in t["runs"]}
        tasks: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for task in t["tasks"]:
            tasks[task["run_id"]][task["task_key"]] = task
        for edge in t["dep_satisfaction"]:
            run = edge["run_id"]
            up = tasks[run][edge["upstream_task_key"]]["state"]
            down = tasks[run][edge["downstream_task_key"]]["state"]
            arrow = f"{run}:{edge['upstream_task_key']} ({up}) -> {edge['downstream_task_key']} ({down})"
            if up in NOT_SUCCESS:
                assert down in ("SKIPPED", "CANCELLED"), f"INV-10: {arrow}: downstream not skipped"
            if up == "FAILED" and run not in cancelled_runs:
                assert down != "CANCELLED", f"INV-10: {arrow}: cancelled but the run was not"
        for run_id, run in runs.items():
            states = [x["state"] for x in tasks[run_id].values()]
            if run_id in cancelled_runs:
                assert run["state"] == "CANCELLED", (
                    f"INV-10: run {run_id} was cancelled: {run['state']}"
                )
            if not states:
                continue
            for state in (
                "PLANNED",
                "BLOCKED",
                "READY",
                "DISPATCHED",
                "RUNNING",
                "RETRY_WAIT",
                *TERMINAL,
            ):
                count = states.count(state)
                assert run[f"tasks_{state.lower()}"] == count, (
                    f"INV-10: run {run_id} counts {state}"
                )
            assert run["tasks_total"] == len(states), f"INV-10: run {run_id} tasks_total"
            done = all(s in TERMINAL for s in states)
            assert (run["state"] in RUN_TERMINAL) == done, (
                f"INV-10: run {run_id} is {run['state']} with tasks {sorted(states)}"
            )
            if not done:
                continue
            if run_id in cancelled_runs or ("FAILED" not in states and "CANCELLED" in states):
                want = "CANCELLED"
            elif "FAILED" in states:
                want = "FAILED"
            else:
                want = "SUCCEEDED"
                assert set(states) == {"SUCCEEDED"}, (
                    f"INV-10: run {run_id} ended with {sorted(states)}"
                )
            assert run["state"] == want, f"INV-10: run {run_id} is {run['state']}, expected {want}"

    @invariant()
    def differential_fold_agrees_with_reference(self) -> None:
        """Differential: every transition the fold took (or refused) is the reference's."""
        steps = list(self.steps)
        self.steps.clear()
        for step in steps:
            want = _reference(step)
            assert want == step.target, (
                f"fold vs reference: {step.machine} in {step.source} meets {step.event} with "
                f"facts {step.facts}: fold -> {step.target}, reference -> "
                f"{want if want is not None else 'TransitionNotAllowed'}"
            )


# ------------------------------------------------------------- generation --


def _state_column(spec: Spec, machine: str) -> str:
    """The enum column of the machine's table whose values are the machine's states."""
    states = {s.name for s in spec.machines[machine].states}
    table = spec.tables[spec.machines[machine].table]
    columns = [c.name for c in table.columns if c.type == "enum" and set(c.enum) == states]
    assert len(columns) == 1, f"{table.name}: no single enum column holds the {machine} states"
    return columns[0]


def _emit_for(
    self: FoldMachine,
    event_type: str,
    targets: list[Row],
    pick: int,
    variant: int,
    at: Any,
    now: bool,
) -> Event | None:
    target = targets[pick % len(targets)]
    data = PAYLOADS[event_type](self, target, variant)
    if data is None:
        return None
    self.reacted.add(_seen(event_type, target))
    event = self.builder.event(event_type, data, at=at)
    self.emit(event, now)
    return event


def _event_rule(event_type: str) -> Callable[..., None]:
    def fire(self: FoldMachine, pick: int, variant: int, now: bool) -> None:
        _emit_for(self, event_type, self.fresh_candidates(event_type), pick, variant, None, now)

    def enabled(self: FoldMachine) -> bool:
        return bool(self.fresh_candidates(event_type))

    fire.__name__ = fire.__qualname__ = event_type
    fire.__doc__ = f"Emit {event_type} for an instance whose state has a row for it."
    enabled.__name__ = enabled.__qualname__ = f"can_emit_{event_type}"
    return precondition(enabled)(rule(pick=PICK, variant=VARIANT, now=NOW)(fire))


def _replica_rule(event_types: list[str]) -> Callable[..., None]:
    def replica(
        self: FoldMachine, event_type: str, pick: int, variant: int, back: int, now: bool
    ) -> None:
        """A second controller replica, its clock `back` ms behind, reads the same
        lagging projection and emits its own event (new ids: another attempt_id for the
        same attempt, an event_id sorting before ones already folded, ...)."""
        start = event_types.index(event_type)
        at = max(EPOCH, self.builder.now - timedelta(milliseconds=back)) if back else None
        for name in event_types[start:] + event_types[:start]:
            targets = self.candidates(name)
            if targets:
                _emit_for(self, name, targets, pick, variant, at, now)
                return

    return rule(
        event_type=st.sampled_from(event_types),
        pick=PICK,
        variant=VARIANT,
        back=st.integers(0, 40),
        now=NOW,
    )(replica)


def _stale_rule(worker_facts: list[str]) -> Callable[..., None]:
    def stale_worker_fact(
        self: FoldMachine, event_type: str, pick: int, variant: int, now: bool
    ) -> None:
        """A worker reports late on an attempt that is not the task's live one."""
        start = worker_facts.index(event_type)
        for name in worker_facts[start:] + worker_facts[:start]:
            targets = self.stale_candidates(name)
            if targets:
                event = _emit_for(self, name, targets, pick, variant, None, now)
                assert event is not None
                self.stale[event.event_id] = event
                self.unchecked_stale.append(event.event_id)
                return

    def has_stale(self: FoldMachine) -> bool:
        return any(self.stale_candidates(name) for name in worker_facts)

    fact = st.sampled_from(worker_facts)
    rule_ = rule(event_type=fact, pick=PICK, variant=VARIANT, now=NOW)
    return precondition(has_stale)(rule_(stale_worker_fact))


def _plan_rule(max_tasks: int, max_runs: int) -> Callable[..., None]:
    def plan_runs(self: FoldMachine, runs: list[list[TaskDef]], seed: int) -> None:
        """Choose the DAG plan of each run (the runs are triggered by rules)."""
        self.plans = dict(zip(RUN_IDS, runs, strict=False))
        self.rng.seed(seed)

    return initialize(
        runs=st.lists(plans(max_tasks), min_size=1, max_size=max_runs),
        seed=st.integers(0, 2**32 - 1),
    )(plan_runs)


def build_fold_machine(
    spec: Spec, registry: Registry, *, max_tasks: int = 12, max_runs: int = 2
) -> type[FoldMachine]:
    """A state machine class for these spec tables: one rule per Layer 1 event."""
    layer1 = [n for n, e in spec.events.items() if e.layer == 1 and not e.derived]
    check_coverage(spec, layer1)
    machines = sorted(
        {spec.events[n].machine for n in layer1} | {m for n in layer1 for m in spec.events[n].also}
    )
    worker_facts = [n for n in layer1 if spec.events[n].category == "worker_fact"]
    assert worker_facts, "the catalog has no worker_fact events to replay late"
    attrs: dict[str, Any] = {
        "spec": spec,
        "registry": registry,
        "state_columns": {m: _state_column(spec, m) for m in machines},
        "plan_runs": _plan_rule(max_tasks, min(max_runs, len(RUN_IDS))),
        "replica": _replica_rule(layer1),
        "stale_worker_fact": _stale_rule(worker_facts),
    }
    for name in layer1:
        attrs[name] = _event_rule(name)
    return type("Layer1FoldMachine", (FoldMachine,), attrs)
