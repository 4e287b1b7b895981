"""Checks beyond the catalog's field types: the rules that make an event self-consistent.

A failure here is an INVALID rejection with a one-line reason; the event never
reaches a machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from servo._errors import InvalidEvent
from servo.core.events import Event
from servo.core.ids import dispatch_id, dispatch_run_id, parse_timer_id, timer_run_id

__all__ = ["check_semantics", "partition_key"]

_MAX_ID = 256
_FAST_ID = re.compile(r"[\x21-\x7e]{1,256}\Z")  # printable ASCII: accepted without more checks


def _check_id(what: str, value: object, *, colon: bool = True) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise InvalidEvent(f"{what} must be a non-empty string of at most {_MAX_ID} characters")
    if not value.isprintable() or (not colon and ":" in value):
        raise InvalidEvent(f"{what} {value[:64]!r} has a forbidden character")


def _plan(event: Event) -> None:
    tasks = event.data["tasks"]
    deps: dict[str, set[str]] = {}
    for i, task in enumerate(tasks):
        key = task["task_key"]
        if type(key) is not str or not _FAST_ID.match(key):  # the message costs: build it only here
            _check_id(f"tasks[{i}].task_key", key)
        if key in deps:
            raise InvalidEvent(f"PlanCreated: duplicate task_key {key!r}")
        if task["max_attempts"] < 1:
            raise InvalidEvent(f"PlanCreated: task {key!r}: max_attempts must be >= 1")
        if task["heartbeat_timeout_sec"] < 0:
            raise InvalidEvent(f"PlanCreated: task {key!r}: heartbeat_timeout_sec must be >= 0")
        deps[key] = set(task["depends_on"])
    # Usually every task depends only on tasks listed before it: then no edge is
    # unknown or a self-loop and the graph is acyclic (a topological order), checked
    # with set operations. Otherwise the checks below find the first problem.
    seen: set[str] = set()
    for key, ups in deps.items():
        if not ups <= seen:
            break
        seen.add(key)
    else:
        return
    for key, ups in deps.items():
        for up in sorted(ups):
            if up == key:
                raise InvalidEvent(f"PlanCreated: task {key!r} depends on itself")
            if up not in deps:
                raise InvalidEvent(f"PlanCreated: task {key!r} depends on unknown task {up!r}")
    _acyclic(deps)


def _acyclic(deps: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    for root in sorted(deps):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(deps[root])))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                raise InvalidEvent(f"PlanCreated: dependency cycle through {child!r}")
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(deps[child]))))


def _dispatch(event: Event) -> None:
    d = event.data
    if d["attempt"] < 1:
        raise InvalidEvent("DispatchRequested: attempt must be >= 1")
    expected = dispatch_id(d["run_id"], d["task_key"], d["attempt"])
    if d["dispatch_id"] != expected:
        raise InvalidEvent(f"DispatchRequested: dispatch_id must be {expected!r}")


def _dispatch_ack(event: Event) -> None:
    if dispatch_run_id(event.data["dispatch_id"]) is None:
        raise InvalidEvent("DispatchEnqueued: dispatch_id is not dispatch:{run}:{task}:{attempt}")


def _timer(event: Event) -> None:
    d = event.data
    timer_id = d["timer_id"]
    _check_id("timer_id", timer_id)
    if not timer_id.startswith("timer:"):
        raise InvalidEvent("timer_id must start with 'timer:'")
    embedded = timer_run_id(timer_id)
    run_id = d.get("run_id")
    if run_id is not None and embedded != run_id:
        raise InvalidEvent(f"timer_id {timer_id!r} does not embed run_id {run_id!r}")
    parsed = parse_timer_id(timer_id)
    timer_type = d.get("timer_type")
    if parsed is not None and timer_type is not None and parsed[0] != timer_type:
        raise InvalidEvent(f"timer_id {timer_id!r} names a {parsed[0]} timer, not {timer_type}")
    if parsed is not None:
        for name, value in (("task_key", parsed[2]), ("attempt", parsed[3])):
            if value is not None and d.get(name) is not None and d.get(name) != value:
                raise InvalidEvent(f"timer_id {timer_id!r} names {name} {value!r}, not {d.get(name)!r}")


_RULES: dict[str, Callable[[Event], None]] = {
    "PlanCreated": _plan,
    "DispatchRequested": _dispatch,
    "DispatchEnqueued": _dispatch_ack,
    "TimerRequested": _timer,
    "TimerFired": _timer,
    "TimerEnqueued": _timer,
}


# Ids already found well-formed: a run's id and its task keys recur in every event of
# the run, and a set lookup costs a quarter of a regex match. Bounded: cleared when full.
_GOOD_RUN_IDS: set[str] = set()
_GOOD_TASK_KEYS: set[str] = set()
_GOOD_MAX = 1 << 14


def check_semantics(event: Event) -> None:
    """Raise InvalidEvent if the event contradicts itself (ids, plan graph)."""
    data = event.data
    run_id = data.get("run_id")
    if run_id is not None and run_id not in _GOOD_RUN_IDS:
        if not (_FAST_ID.match(run_id) and ":" not in run_id):
            _check_id("run_id", run_id, colon=False)
        _remember(_GOOD_RUN_IDS, run_id)
    task_key = data.get("task_key")
    if task_key is not None and task_key not in _GOOD_TASK_KEYS:
        if not _FAST_ID.match(task_key):
            _check_id("task_key", task_key)
        _remember(_GOOD_TASK_KEYS, task_key)
    rule = _RULES.get(event.event_type)
    if rule is not None:
        rule(event)


def _remember(good: set[str], value: str) -> None:
    if len(good) >= _GOOD_MAX:
        good.clear()
    good.add(value)


def partition_key(event: Event) -> str:
    """The run an event belongs to; a run-less timer is its own partition."""
    d = event.data
    run_id = d.get("run_id")
    if isinstance(run_id, str):
        return run_id
    if "dispatch_id" in d:
        return dispatch_run_id(d["dispatch_id"]) or ""
    timer_id: str = d["timer_id"]
    return timer_run_id(timer_id) or "~" + timer_id
