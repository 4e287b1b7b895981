"""The model: states of the whole system and the actions that move between them.

A state is a tuple of small values (hashable, canonical):

    (sec, ledger, folded, watermark, queued, done, sessions, stalled, budget)

- `sec`: the wall clock in whole seconds. Producers mint event ids from a clock that
  is never behind what they have seen (a hybrid logical clock): the driver at
  `max(sec * 1000, newest folded event + 1 ms)`, a worker at `max(sec * 1000, its
  previous event + 1 ms)` starting from its attempt's dispatch instant. So an event
  sorts after every event that caused it, and what a producer emits depends only on
  what it saw and the second: replaying the same view gives the same events.
- `ledger`: bitmask of appended (durable) events; `folded`: the subset the compactor
  has folded and published; `watermark` (ms): every event minted before it is folded
  (a compaction at second `sec` cuts at `sec * 1000 - 1`, ADR 009). Controllers and
  timer handlers see only the published fold of `folded` (P5).
- `queued` / `done`: bitmasks of queue tasks (name + payload) waiting or delivered;
  a delivered name stays reserved (a create answers 409) until its reservation
  expires. The queue is keyed by name: a second create of a name is one task (INV-4).
- `sessions`: workers holding a delivery: (queue task, heartbeats sent, instant of
  the session's last event).
- `stalled`: the compactor skipped this second (compaction lag): passes read the
  last published projection until the clock moves on.
- `budget`: faults used so far (see `McConfig`).

The driver works like the embedded engine's loop (ADR 009): one *pass* compacts,
reads the published projection, reconciles, creates queue tasks for PENDING outbox
rows (acknowledging with DispatchEnqueued, 409 included) and for SCHEDULED timers.
A pass is urgent (the clock does not move past pending driver work); a crash may cut
it after any of its effects. Queue deliveries, workers, cancels and faults are the
environment and interleave freely.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from model_checks import _checks
from model_checks._universe import RUN, FoldEntry, Universe, Violation, bits, ms_of
from servo.core import controllers as C
from servo.core.ids import ulid_timestamp

__all__ = ["Found", "Model", "State"]

State = tuple[Any, ...]
Label = tuple[Any, ...]

SEC, LEDGER, FOLDED, WM, QUEUED, DONE, SESSIONS, STALLED, BUDGET = range(9)
CRASH, DUP, EARLY, EXPIRE, LOST, DEATH, CANCEL, REORDER, LAG = range(9)
TIMER_LAG_MS = 1000  # the queue delivers a timer from fire_at + 1 s ("on time"); later is late


class Found(Exception):
    """An invariant broke on an action; carries the action and the ledger it left."""

    def __init__(self, violation: Violation, label: Label, ledger: int) -> None:
        super().__init__(f"{violation[0]}: {violation[1]}")
        self.violation = violation
        self.label = label
        self.ledger = ledger


class Model:
    """Successor generation for one configuration over one universe."""

    def __init__(self, u: Universe) -> None:
        self.u = u
        self.cfg = cfg = u.cfg
        self.limits = (
            cfg.max_crashes, cfg.max_dup_deliveries, cfg.max_early_fires, cfg.max_expiries,
            cfg.max_lost_tasks if cfg.repair else 0, cfg.max_worker_deaths, cfg.max_cancels,
            cfg.max_reorders, cfg.max_lags,
        )
        self.qentries: list[tuple[str, str, tuple[Any, ...]]] = []
        self._qindex: dict[tuple[str, str, tuple[Any, ...]], int] = {}
        self.name_mask: dict[str, int] = {}
        self._monotone_checked: set[tuple[int, int]] = set()

    # --------------------------------------------------------------- helpers --

    def qentry(self, kind: str, name: str, payload: tuple[Any, ...]) -> int:
        """Intern a queue task (kind 'd' dispatch / 't' timer, name, payload)."""
        key = (kind, name, payload)
        index = self._qindex.get(key)
        if index is None:
            index = self._qindex[key] = len(self.qentries)
            self.qentries.append(key)
            self.name_mask[name] = self.name_mask.get(name, 0) | (1 << index)
        return index

    def initial(self) -> State:
        """The run is triggered and planned (at ms 0 and 1), and that is folded."""
        events = self.u.initial_events()
        ledger = sum(1 << i for i in events)
        self.u.fold(ledger, None)
        return (1, ledger, ledger, 999, 0, 0, (), False, (0,) * len(self.limits))

    def _budget(self, s: State, kind: int) -> tuple[int, ...] | None:
        budget: tuple[int, ...] = s[BUDGET]
        if budget[kind] >= self.limits[kind]:
            return None
        return (*budget[:kind], budget[kind] + 1, *budget[kind + 1:])

    def _append(self, ledger: int, events: Iterable[int], label: Label) -> int:
        """Append events create-only, one object per event_id (P1): an id already in
        the ledger is not written again (ObjectExists; the producer moves on). That is
        harmless when the stored event has the same idempotency key (two producers
        minted the same intent at one instant); a different key would lose an event."""
        u = self.u
        for index in events:
            info = u.events[index]
            if info.valid is not None:
                raise Found(info.valid, label, ledger | (1 << index))
            same = u.same_id[info.event.event_id] & ledger
            if same:
                if not same >> index & 1:
                    stored = u.events[same.bit_length() - 1].event
                    if stored.idempotency_key != info.event.idempotency_key:
                        raise Found(("P1", f"event_id {info.event.event_id} of {info.event.event_type} is taken by "
                                     f"{stored.event_type}: a create-only append would lose it"), label, ledger)
                continue
            ledger |= 1 << index
        return ledger

    def _useful(self, ledger: int, events: Iterable[int]) -> bool:
        """Some event carries an idempotency key the ledger does not hold yet."""
        u = self.u
        return any(not (u.key_mask[u.events[i].event.idempotency_key] & ledger) for i in events)

    @staticmethod
    def _with(s: State, **changes: Any) -> State:
        out = list(s)
        for name, value in changes.items():
            out[_FIELDS[name]] = value
        return tuple(out)

    # ------------------------------------------------------------ successors --

    def expand(self, s: State) -> tuple[list[tuple[Label, State]], bool]:
        """Every successor of `s` and whether `s` is quiescent (nothing left to do)."""
        u = self.u
        sec, ledger, folded, _, queued, done, sessions, stalled, _ = s
        entry = u.folds[folded]
        out: list[tuple[Label, State]] = []

        pass_enabled, progress = self._driver(s, out)
        pending = ledger & ~folded

        # --- queue deliveries ---------------------------------------------------------
        overdue = waiting = live_timers = dispatches = False
        for q in bits(queued):
            kind, _name, payload = self.qentries[q]
            if kind == "d":
                dispatches = True
                self._deliver_dispatch(s, q, out)
            elif not u.timer_settled(folded, payload[0]):
                # A settled timer (fired, cancelled or moot in the published view) can
                # no longer move a task: its delivery only retires it, so it is not
                # explored (a sound reduction for every task-level property).
                live_timers = True
                overdue |= sec * 1000 >= payload[1] + 2 * TIMER_LAG_MS
                waiting |= sec * 1000 < payload[1] + TIMER_LAG_MS
                self._deliver_timer(s, q, out)
        lost = self._budget(s, LOST)
        if lost is not None:
            for q in bits(queued):
                out.append((("queue-loses", self.qentries[q][1]), self._with(s, queued=queued & ~(1 << q), budget=lost)))
        expire = self._budget(s, EXPIRE)
        if expire is not None:
            for q in bits(done):
                out.append((("name-reservation-expires", self.qentries[q][1]), self._with(s, done=done & ~(1 << q), budget=expire)))

        # --- workers ----------------------------------------------------------------------
        death = self._budget(s, DEATH)
        for position, session in enumerate(sessions):
            if position and sessions[position - 1] == session:
                continue  # identical sessions have identical moves
            q, beats, seen = session
            payload = self.qentries[q][2]
            rest = sessions[:position] + sessions[position + 1 :]
            at = max(sec * 1000, seen + 1)
            if beats < self.cfg.max_heartbeats:
                ev = u.worker_event("TaskHeartbeat", payload, at)
                self._worker_step(s, out, ("worker-heartbeat", at, payload), ev, tuple(sorted((*rest, (q, beats + 1, at)))))
            for outcome in self.cfg.outcomes:
                ev = u.worker_event("TaskFinished", payload, at, outcome)
                self._worker_step(s, out, ("worker-finish", at, payload, outcome), ev, rest)
            if death is not None:
                out.append((("worker-dies", payload), self._with(s, sessions=rest, budget=death)))

        # --- environment --------------------------------------------------------------------
        # Time passes only when something waits for it (a live timer not yet due, a
        # worker that may be slow, a stalled compactor) and never past urgent work:
        # the driver acts within its second and a due timer is delivered within a second.
        wanted = waiting or bool(sessions) or (stalled and bool(pending))
        if sec < self.cfg.max_sec and wanted and not pass_enabled and not overdue:
            out.append((("tick", sec + 1), self._with(s, sec=sec + 1, stalled=False)))
        cancel = self._budget(s, CANCEL)
        if cancel is not None and entry.run_state == "RUNNING":
            at = max(sec * 1000, 2)  # the user saw the run planned (ms 0 and 1)
            ev = u.cancel_event(at)
            out.append((("cancel", at), self._with(s, ledger=self._append(ledger, (ev,), ("cancel", at)), budget=cancel)))

        # Quiescent: nothing can move a task any more (queued timers are all settled).
        quiescent = not progress and not pending and not live_timers and not dispatches and not sessions
        if quiescent:
            violation = _checks.check_quiescent(u, entry)
            if violation is not None:
                raise Found(violation, ("end",), ledger)
        return out, quiescent

    # ----------------------------------------------------------------- driver --

    def _driver(self, s: State, out: list[tuple[Label, State]]) -> tuple[bool, bool]:
        """Driver passes: compact (normally, or stalled, or newest event first), then
        run the controllers on the published view. Returns (enabled, progress)."""
        u = self.u
        sec, ledger, folded, wm = s[SEC], s[LEDGER], s[FOLDED], s[WM]
        pending = ledger & ~folded
        enabled = progress = False
        variants: list[tuple[str, int, int, State]] = []
        if s[STALLED]:
            variants.append(("", folded, wm, s))
        else:
            # The compactor cuts at the start of this second even with nothing new to
            # fold (ADR 009's idle publish), so the watermark keeps up with time.
            variants.append(("", ledger, max(wm, sec * 1000 - 1), s))
        if pending and not s[STALLED]:
            lag = self._budget(s, LAG)
            if lag is not None:
                variants.append(("compactor stalls", folded, wm, self._with(s, stalled=True, budget=lag)))
            reorder = self._budget(s, REORDER)
            order = sorted(bits(pending), key=lambda i: u.events[i].event.event_id)
            if reorder is not None and len(order) > 1:
                newest, oldest = order[-1], order[0]
                cut = max(wm, min(u.events[oldest].ms, sec * 1000) - 1)
                variants.append((f"compactor folds {u.events[newest].event.event_type} before older events",
                                 folded | (1 << newest), cut, self._with(s, budget=reorder)))
        for note, new_folded, new_wm, base in variants:
            changed, useful = self._pass(base, new_folded, new_wm, note, out, force=base is not s)
            enabled |= changed
            progress |= useful
        return enabled, progress

    def _pass(
        self, s: State, new_folded: int, new_wm: int, note: str, out: list[tuple[Label, State]], *, force: bool = False
    ) -> tuple[bool, bool]:
        u = self.u
        sec, ledger, folded, queued, done = s[SEC], s[LEDGER], s[FOLDED], s[QUEUED], s[DONE]
        if new_folded != folded:
            self._compact_check(folded, new_folded, sec)
        entry = u.fold(new_folded, folded)
        now = max(sec * 1000, entry.max_ms + 1)  # the driver's clock: after all it has seen
        effects: list[tuple[str, int]] = []
        if self.cfg.repair:
            events = u.repair(new_folded, now, new_wm)
        else:
            events, violation = u.reconcile(new_folded, now, new_wm)
            if violation is not None:
                raise Found(violation, ("driver", now, events, (), (), note), ledger)
        effects += [("append", i) for i in events]
        dispatched: list[tuple[str, str]] = []
        for row in entry.pending_rows:
            q = self.qentry("d", row.cloud_task_id, (row.task_key, row.attempt, row.attempt_id))
            present = bool((queued | done) & self.name_mask[row.cloud_task_id])
            status = C.CreateStatus.ALREADY_EXISTS if present else C.CreateStatus.CREATED
            acks, violation = u.dispatch_outcome(row, status, now)
            dispatched.append((row.dispatch_id, status.value))
            if violation is not None:
                label = ("driver", now, events, tuple(dispatched), (), note)
                raise Found(violation, label, ledger | sum(1 << i for i in (*events, *acks)))
            if not present:
                effects.append(("create", q))
            effects += [("append", i) for i in acks]
        enqueued: list[str] = []
        for timer in entry.scheduled:
            if (queued | done) & self.name_mask.get(timer.cloud_task_id, 0):
                continue
            effects.append(("create", self.qentry("t", timer.cloud_task_id, (timer.timer_id, ms_of(timer.fire_at)))))
            enqueued.append(timer.timer_id)
            if self.cfg.timer_acks:
                effects.append(("append", u.timer_ack(timer, now)))
        label: Label = ("driver", now, events, tuple(dispatched), tuple(enqueued), note)

        new_ledger, new_queued = ledger, queued
        prefixes: list[tuple[int, int]] = [(ledger, queued)]
        for kind, value in effects:
            if kind == "append":
                new_ledger = self._append(new_ledger, (value,), label)
            else:
                new_queued |= 1 << value
            if prefixes[-1] != (new_ledger, new_queued):
                prefixes.append((new_ledger, new_queued))
        if (new_ledger, new_queued, new_folded, new_wm) == (ledger, queued, folded, s[WM]) and not force:
            return False, False
        appended = [v for k, v in effects if k == "append"]
        if self.cfg.repair:
            self._repair_check(entry, events, new_wm, new_ledger, label)
        after = self._with(s, folded=new_folded, watermark=new_wm)
        out.append((label, self._with(after, ledger=new_ledger, queued=new_queued)))
        crashed = self._budget(s, CRASH)
        if crashed is not None:
            steps = len(prefixes) - 1
            for k, (lg, qd) in enumerate(prefixes[:-1]):
                if (lg, qd, new_folded, new_wm) != (ledger, queued, folded, s[WM]):
                    what = "before its first effect" if k == 0 else f"after {k} of its {steps} effects"
                    out.append(((*label, f"driver crashes {what}"), self._with(after, ledger=lg, queued=qd, budget=crashed)))
        useful = new_queued != queued or new_folded != folded or new_wm != s[WM] or self._useful(ledger, appended)
        return True, useful

    def _compact_check(self, folded: int, new_folded: int, sec: int) -> None:
        """An in-place fold (nothing late) only ever increments counts and never
        leaves a terminal state (INV-6, INV-10)."""
        pair = (folded, new_folded)
        if pair in self._monotone_checked:
            return
        self._monotone_checked.add(pair)
        u = self.u
        old = u.folds[folded]
        entry = u.fold(new_folded, folded)
        label: Label = ("driver", sec * 1000, (), (), (), "compaction")
        if entry.violation is not None:
            raise Found(entry.violation, label, new_folded)
        if min(u.events[i].event.event_id for i in bits(new_folded & ~folded)) < old.max_event_id:
            return  # a late event: the run is refolded, earlier verdicts may change
        for key, task in old.view.tasks.items():
            after = entry.view.tasks[key]
            if after.deps_satisfied_count < task.deps_satisfied_count:
                raise Found(("INV-6", f"{key[1]}: deps_satisfied_count went down from "
                             f"{task.deps_satisfied_count} to {after.deps_satisfied_count}"), label, new_folded)
            if task.is_terminal and after.state != task.state:
                raise Found(("INV-10", f"{key[1]} left terminal state {task.state} for {after.state}"), label, new_folded)

    # ------------------------------------------------------------ environment --

    def _deliver_dispatch(self, s: State, q: int, out: list[tuple[Label, State]]) -> None:
        """The queue delivers an attempt; the worker reports TaskStarted at once."""
        u = self.u
        _, _name, payload = self.qentries[q]
        at = max(s[SEC] * 1000, ms_of(ulid_timestamp(payload[2])) + 1)
        ev = u.worker_event("TaskStarted", payload, at)
        label: Label = ("deliver", at, payload)
        ledger = self._append(s[LEDGER], (ev,), label)
        spawned = tuple(sorted((*s[SESSIONS], (q, 0, at))))
        bit = 1 << q
        out.append((label, self._with(s, ledger=ledger, queued=s[QUEUED] & ~bit, done=s[DONE] | bit, sessions=spawned)))
        dup = self._budget(s, DUP)
        if dup is not None:
            out.append((("deliver-duplicate", at, payload), self._with(s, ledger=ledger, sessions=spawned, budget=dup)))

    def _worker_step(self, s: State, out: list[tuple[Label, State]], label: Label, ev: int, sessions: tuple[Any, ...]) -> None:
        ledger = self._append(s[LEDGER], (ev,), label)
        out.append((label, self._with(s, ledger=ledger, sessions=sessions)))

    def _deliver_timer(self, s: State, q: int, out: list[tuple[Label, State]]) -> None:
        """The queue delivers a timer: on time from fire_at + TIMER_LAG_MS, or early.
        The handler reads the published projection (it does not compact)."""
        u = self.u
        sec, ledger, folded, wm, queued, done = s[SEC], s[LEDGER], s[FOLDED], s[WM], s[QUEUED], s[DONE]
        _, _name, (timer_id, fire_ms) = self.qentries[q]
        budget = s[BUDGET]
        early = sec * 1000 < fire_ms + TIMER_LAG_MS
        if early:
            spent = self._budget(s, EARLY)
            if spent is None:
                return
            budget = spent
        now = max(sec * 1000, u.folds[folded].max_ms + 1)
        events, violation = u.on_timer(folded, timer_id, now, wm)
        label: Label = ("deliver-timer-early" if early else "deliver-timer", now, timer_id, events)
        if violation is not None:
            raise Found(violation, label, ledger | sum(1 << i for i in events))
        appended = self._append(ledger, events, label)
        for i in events:
            found = _checks.check_timeout(u, i, fire_ms, appended)
            if found is not None:
                raise Found(found, label, appended)
        bit = 1 << q
        out.append((label, self._with(s, ledger=appended, queued=queued & ~bit, done=done | bit, budget=budget)))
        if not events:
            return
        crashed = self._budget(s, CRASH)
        if crashed is not None:
            crash_budget = list(budget)
            crash_budget[CRASH] += 1
            partial = ledger
            for k, i in enumerate(events, start=1):
                partial = self._append(partial, (i,), label)
                out.append(((*label, f"handler crashes after {k} of {len(events)} appends (redelivered later)"),
                            self._with(s, ledger=partial, budget=tuple(crash_budget))))
        dup = self._budget(s, DUP)
        if dup is not None:
            dup_budget = list(budget)
            dup_budget[DUP] += 1
            out.append(((*label, "delivered again later"), self._with(s, ledger=appended, budget=tuple(dup_budget))))

    def _repair_check(self, entry: FoldEntry, events: tuple[int, ...], wm: int, ledger: int, label: Label) -> None:
        """Anti-entropy acts on timers under the same guard as the handler (INV-9)."""
        u = self.u
        for i in events:
            event = u.events[i].event
            if event.event_type == "TimerFired":
                timer = entry.view.timers[event.data["timer_id"]]
                if ms_of(timer.fire_at) > wm and not C.timer_is_moot(entry.view, timer):
                    raise Found(("INV-9", f"repair fired {timer.timer_id} before the watermark reached it"), label, ledger)
            elif event.event_type == "AttemptTimedOut":
                d = event.data
                due = [ms_of(t.fire_at) for t in entry.view.timers_of("HEARTBEAT_CHECK", RUN, d["task_key"], d["attempt"])
                       if t.state == "SCHEDULED" and ms_of(t.fire_at) <= wm]
                if not due:
                    raise Found(("INV-9", f"repair timed out {d['task_key']} with no due heartbeat check"), label, ledger)
                found = _checks.check_timeout(u, i, max(due), ledger)
                if found is not None:
                    raise Found(found, label, ledger)


_FIELDS = {
    "sec": SEC, "ledger": LEDGER, "folded": FOLDED, "watermark": WM, "queued": QUEUED,
    "done": DONE, "sessions": SESSIONS, "stalled": STALLED, "budget": BUDGET,
}
