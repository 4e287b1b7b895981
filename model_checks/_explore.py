"""Breadth-first exploration with shortest counterexamples.

BFS visits states in order of path length, so the first violation found is one of
the shortest: its path is printed as numbered actions and the ledger it left is
written as JSONL that `servo fold FILE --json` replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_checks._config import McConfig
from model_checks._model import Found, Label, Model, State
from model_checks._universe import Universe
from servo.core._registry import Registry
from servo.core.rules import default_spec, registry
from servo.spec import Spec

__all__ = ["Result", "explore", "render_label"]


@dataclass
class Result:
    """What one exploration found."""

    config: McConfig
    states: int = 0
    transitions: int = 0
    depth: int = 0
    complete: bool = False
    seconds: float = 0.0
    quiescent: int = 0
    folds: int = 0
    violation: tuple[str, str] | None = None
    length: int = 0  # actions in the counterexample
    trace: list[str] = field(default_factory=list)
    ledger_lines: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Distinct states per second."""
        return self.states / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line per configuration."""
        status = "ok" if self.violation is None else f"VIOLATION {self.violation[0]}"
        bound = "exhausted" if self.complete else "bounded"
        return (
            f"{self.config.name:<22} {status:<16} states={self.states:>9,} depth={self.depth:>3} "
            f"({bound}) end-states={self.quiescent:>7,} folds={self.folds:>7,} "
            f"{self.seconds:7.1f}s {self.rate:>9,.0f} states/s"
        )

    def report(self) -> str:
        """The violation with its numbered counterexample."""
        if self.violation is None:
            return self.summary()
        lines = [self.summary(), f"  {self.violation[0]}: {self.violation[1]}", "  counterexample:"]
        lines += [f"  {n:>3}. {step}" if n <= self.length else f"       {step}" for n, step in enumerate(self.trace, start=1)]
        return "\n".join(lines)

    def write_ledger(self, path: Path) -> Path:
        """Write the counterexample's ledger as JSONL (one envelope per line)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in self.ledger_lines))
        return path


def _describe_events(u: Universe, events: Any) -> str:
    parts = []
    for i in events:
        e = u.events[i].event
        d = e.data
        if e.event_type == "DispatchRequested":
            parts.append(f"DispatchRequested({d['task_key']}#{d['attempt']})")
        elif e.event_type in ("TimerRequested", "TimerFired"):
            parts.append(f"{e.event_type}({d['timer_id'].split(':')[1]} {d.get('task_key')}#{d.get('attempt')}"
                         + (f" at {d['fire_at']}" if "fire_at" in d else "") + ")")
        elif e.event_type == "AttemptTimedOut":
            parts.append(f"AttemptTimedOut({d['task_key']}#{d['attempt']} {d['reason']})")
        else:
            parts.append(e.event_type)
    return ", ".join(parts) if parts else "nothing"


def render_label(u: Universe, label: Label) -> str:
    """A human-readable action."""
    kind = label[0]
    arity = _ARITY.get(kind, len(label))
    extra = f" [{'; '.join(str(x) for x in label[arity:])}]" if len(label) > arity else ""
    at = lambda ms: f"t={ms / 1000:.3f}s"  # noqa: E731
    if kind == "driver":
        _, now, events, dispatched, enqueued, note = label[:6]
        parts = [f"reconcile -> {_describe_events(u, events)}"]
        parts += [f"create {d} -> {status}, ack" for d, status in dispatched]
        parts += [f"enqueue {t}" for t in enqueued]
        if note == "compaction":
            return f"driver pass at {at(now)}: the compactor folds the new events"
        head = f"driver pass at {at(now)}" + (f" ({note})" if note else " (compact first)")
        return f"{head}: " + "; ".join(parts) + extra
    if kind in ("deliver", "deliver-duplicate"):
        task, attempt, _ = label[2]
        again = "delivers again" if kind == "deliver-duplicate" else "delivers"
        return f"queue {again} {task}#{attempt}; the worker reports TaskStarted at {at(label[1])}"
    if kind in ("deliver-timer", "deliver-timer-early"):
        when = "EARLY " if kind.endswith("early") else ""
        return f"queue delivers timer {label[2]} {when}at {at(label[1])}; handler -> {_describe_events(u, label[3])}{extra}"
    if kind in ("worker-heartbeat", "worker-finish"):
        task, attempt, _ = label[2]
        what = f"TaskFinished {label[3]}" if kind == "worker-finish" else "TaskHeartbeat"
        return f"worker of {task}#{attempt} reports {what} at {at(label[1])}"
    if kind == "worker-dies":
        task, attempt, _ = label[1]
        return f"worker of {task}#{attempt} dies silently"
    if kind == "tick":
        return f"clock advances to {label[1]}s"
    if kind == "cancel":
        return f"user cancels the run at {at(label[1])}"
    if kind == "queue-loses":
        return f"queue loses task {label[1]}"
    if kind == "name-reservation-expires":
        return f"queue forgets the reserved name {label[1]}"
    if kind == "end":
        return "(end: no action can move any task)"
    return " ".join(str(x) for x in label)


_ARITY = {
    "driver": 6, "deliver": 3, "deliver-duplicate": 3, "deliver-timer": 4, "deliver-timer-early": 4,
    "worker-heartbeat": 3, "worker-finish": 4, "worker-dies": 2, "tick": 2, "cancel": 2,
    "queue-loses": 2, "name-reservation-expires": 2, "end": 1,
}


def explore(
    cfg: McConfig,
    *,
    spec: Spec | None = None,
    rules: Registry | None = None,
    max_states: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Explore `cfg` breadth-first up to its bounds; stop at the first violation."""
    start = time.perf_counter()
    u = Universe(cfg, spec or default_spec(), rules or registry())
    model = Model(u)
    result = Result(cfg)
    limit = max_states if max_states is not None else cfg.max_states
    init = model.initial()
    index: dict[State, int] = {init: 0}
    parents: list[int] = [-1]
    labels: list[Label | None] = [None]
    layer = [init]
    depth = 0
    stopped = False
    try:
        while layer:
            result.depth = depth
            if depth >= cfg.max_depth:
                stopped = True
                break
            nxt: list[State] = []
            for s in layer:
                me = index[s]
                try:
                    successors, quiescent = model.expand(s)
                except Found as found:
                    _record(result, u, index, parents, labels, me, found)
                    return result
                except Exception as exc:  # the code under test crashed: that is a finding too
                    found = Found(("EXCEPTION", f"{type(exc).__name__}: {exc}"), ("crash-in-code",), s[1])
                    _record(result, u, index, parents, labels, me, found)
                    return result
                result.quiescent += quiescent
                result.transitions += len(successors)
                for label, succ in successors:
                    if succ not in index:
                        index[succ] = len(parents)
                        parents.append(me)
                        labels.append(label)
                        nxt.append(succ)
                if limit is not None and len(parents) >= limit:
                    stopped = True
                    break
            if stopped:
                break
            layer = nxt
            depth += 1
            if progress is not None:
                progress(f"{cfg.name}: depth {depth} states {len(parents):,}")
        result.complete = not stopped
        return result
    finally:
        result.states = len(parents)
        result.seconds = time.perf_counter() - start
        result.folds = u.stats["folds"]


def _record(
    result: Result, u: Universe, index: dict[State, int], parents: list[int],
    labels: list[Label | None], me: int, found: Found,
) -> None:
    path: list[Label] = []
    node = me
    while node > 0:
        label = labels[node]
        assert label is not None
        path.append(label)
        node = parents[node]
    path.reverse()
    if found.label != ("end",):
        path.append(found.label)
    result.violation = found.violation
    result.length = len(path)
    result.trace = [render_label(u, label) for label in path]
    if found.label == ("end",):
        result.trace.append(render_label(u, ("end",)))
    result.ledger_lines = u.ledger_lines(found.ledger)
