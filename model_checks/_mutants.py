"""Mutants: plausible bugs planted in the real code, each of which must be caught.

A mutant swaps one registered guard/effect/locator of the fold, or one controller
function, for a buggy version while it is explored (restored afterwards). The fold's
engine compiles the registry when a projection is built, and the model looks up
controller functions through their modules at call time, so the explorer runs the
mutated code exactly as the runtime would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model_checks._config import McConfig, chain, diamond, fan_out
from servo.core import controllers as C
from servo.core._registry import GuardEntry, Registry
from servo.core.controllers import _dispatch, _timers
from servo.core.events import Event
from servo.core.ids import new_ulid
from servo.core.rules import registry

__all__ = ["MUTANTS", "Mutant", "applied"]

LIVE = frozenset({"DISPATCHED", "RUNNING"})
_QUIET = {"max_crashes": 0, "max_dup_deliveries": 0, "max_early_fires": 0, "max_cancels": 0,
          "max_reorders": 0, "max_lags": 0, "max_heartbeats": 0}


def _cfg(name: str, tasks: Any, **faults: Any) -> McConfig:
    return McConfig(f"mutant:{name}", tasks, **{**_QUIET, **faults})


@dataclass(frozen=True)
class Mutant:
    """A named bug, what it breaks, how to plant it, and a model that exposes it."""

    name: str
    expect: str  # the invariant id the bug must break
    describe: str
    plant: Callable[[Registry, contextlib.ExitStack], None]
    config: McConfig
    max_states: int = 400_000
    tags: tuple[str, ...] = field(default=())


def _set(stack: contextlib.ExitStack, obj: Any, name: str, value: Any) -> None:
    old = getattr(obj, name)
    setattr(obj, name, value)
    stack.callback(setattr, obj, name, old)


def _set_item(stack: contextlib.ExitStack, table: dict[str, Any], name: str, value: Any) -> None:
    old = table[name]
    table[name] = value
    stack.callback(table.__setitem__, name, old)


@contextlib.contextmanager
def applied(mutant: Mutant, rules: Registry | None = None) -> Iterator[Registry]:
    """Plant `mutant` for the duration of the block."""
    rules = rules or registry()
    with contextlib.ExitStack() as stack:
        mutant.plant(rules, stack)
        yield rules


# ---------------------------------------------------------------- the fold --


def _counter_instead_of_per_edge(rules: Registry, stack: contextlib.ExitStack) -> None:
    """The classic `unmet_deps -= 1` on every upstream finish: any terminal upstream
    counts toward the downstream, not only a newly satisfied SUCCESS edge."""
    resolve = rules.effects["resolve_downstream"]

    def counting(ctx: Any) -> None:
        resolve(ctx)
        if ctx.row.state != "SUCCEEDED":
            for key in ctx.part.downstream.get(ctx.row.task_key, ()):
                ctx.part.tasks[key].deps_satisfied_count += 1

    _set_item(stack, rules.effects, "resolve_downstream", counting)


def _no_attempt_id_guard(rules: Registry, stack: contextlib.ExitStack) -> None:
    """attempt_is_current checks only that some attempt is live."""
    def live(ctx: Any) -> bool:
        return ctx.row.state in LIVE

    _set_item(stack, rules.guards, "attempt_is_current", GuardEntry(live, "STALE_ATTEMPT"))


def _failure_not_transitive(rules: Registry, stack: contextlib.ExitStack) -> None:
    """A SKIPPED task does not resolve its own downstream edges."""
    resolve = rules.effects["resolve_downstream"]

    def shallow(ctx: Any) -> None:
        if ctx.row.state != "SKIPPED":
            resolve(ctx)

    _set_item(stack, rules.effects, "resolve_downstream", shallow)


def _cancel_skips_retry_wait(rules: Registry, stack: contextlib.ExitStack) -> None:
    """Run cancel moves every open task except those waiting for a retry."""
    original = rules.locators["task_of_event"]

    class Locator(original):  # type: ignore[misc, valid-type]
        def find(self, ctx: Any) -> Any:
            found = super().find(ctx)
            if ctx.event_type == "RunCancelRequested" and isinstance(found, list):
                return [t for t in found if t.state != "RETRY_WAIT"]
            return found

    _set_item(stack, rules.locators, "task_of_event", Locator)


def _ready_guard_ignores_count(rules: Registry, stack: contextlib.ExitStack) -> None:
    """A BLOCKED task becomes READY on the first satisfied edge."""
    _set_item(stack, rules.guards, "all_upstream_succeeded", GuardEntry(lambda ctx: True, None))


# --------------------------------------------------------------- controllers --


def _unguarded(timer_type: str) -> Callable[[Registry, contextlib.ExitStack], None]:
    def plant(rules: Registry, stack: contextlib.ExitStack) -> None:
        original = _timers.on_timer_fired

        def handler(view: Any, timer: Any, now: datetime, watermark: datetime, **kw: Any) -> list[Event]:
            if timer.timer_type == timer_type:
                watermark = max(watermark, timer.fire_at)  # trusts the projection as fresh
            return original(view, timer, now, watermark, **kw)

        _set(stack, _timers, "on_timer_fired", handler)
        _set(stack, C, "on_timer_fired", handler)

    return plant


def _conflict_is_failure(rules: Registry, stack: contextlib.ExitStack) -> None:
    """The dispatcher treats 409 AlreadyExists like a refused create."""
    original = _dispatch.dispatch_outcome_events

    def outcome(row: Any, status: Any, now: datetime, **kw: Any) -> list[Event]:
        if status is C.CreateStatus.ALREADY_EXISTS:
            status = C.CreateStatus.REJECTED
        return original(row, status, now, **kw)

    _set(stack, _dispatch, "dispatch_outcome_events", outcome)
    _set(stack, C, "dispatch_outcome_events", outcome)


def _derived_event_in_ledger(rules: Registry, stack: contextlib.ExitStack) -> None:
    """The ready controller also persists the fold's TaskBecameReady as an event."""
    original = _dispatch.ready_intents

    def intents(view: Any, emit: Any) -> list[Event]:
        out = list(original(view, emit))
        for task in view.tasks.values():
            if task.state == "READY":
                out.append(Event(
                    new_ulid(emit.now, b"derived\x00\x00\x00"), "TaskBecameReady", emit.tenant, emit.workspace,
                    f"ready:{task.run_id}:{task.task_key}", emit.now,
                    {"run_id": task.run_id, "task_key": task.task_key}, emit.source,
                ))
        return out

    _set(stack, _dispatch, "ready_intents", intents)


def _redispatches_same_attempt(rules: Registry, stack: contextlib.ExitStack) -> None:
    """The ready controller asks for the task's current attempt, not the next one."""
    original = _dispatch.ready_intents

    class Shifted:
        def __init__(self, view: Any) -> None:
            self._view = view

        def __getattr__(self, name: str) -> Any:
            return getattr(self._view, name)

    def intents(view: Any, emit: Any) -> list[Event]:
        from dataclasses import replace

        tasks = {k: replace(t, attempt=max(t.attempt - 1, 0)) if t.state == "READY" else t for k, t in view.tasks.items()}
        shifted = Shifted(view)
        shifted.tasks = tasks  # type: ignore[attr-defined]
        return original(shifted, emit)  # type: ignore[arg-type]

    _set(stack, _dispatch, "ready_intents", intents)


def _random_attempt_id(rules: Registry, stack: contextlib.ExitStack) -> None:
    """attempt_id drawn from a random source instead of (now, dispatch_id)."""
    _set(stack, _dispatch, "attempt_id_for", lambda dispatch, now: new_ulid(now, os.urandom(10)))


def _heartbeats_ignored(rules: Registry, stack: contextlib.ExitStack) -> None:
    """The heartbeat check only looks at when the attempt was dispatched."""
    original = _timers.last_sign_of_life

    def dispatched_at(task: Any, now: datetime) -> datetime:
        return original(_strip(task), now)

    _set(stack, _timers, "last_sign_of_life", dispatched_at)


def _strip(task: Any) -> Any:
    from dataclasses import replace

    return replace(task, last_heartbeat_at=None, started_at=None)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("counter-instead-of-per-edge", "INV-6",
           "a downstream counts every terminal upstream (decrement-style counter), not SUCCESS edges",
           _counter_instead_of_per_edge, _cfg("counter", diamond(1), outcomes=("SUCCEEDED", "FAILED"))),
    Mutant("no-attempt-id-guard", "INV-8",
           "worker facts are accepted for whatever attempt is live",
           _no_attempt_id_guard, _cfg("attempt", chain(1, 2), max_dup_deliveries=1, max_heartbeats=1, outcomes=("FAILED",))),
    Mutant("no-watermark-guard-on-retry-timer", "INV-9",
           "the retry timer fires on a projection that has not reached fire_at",
           _unguarded("RETRY"), _cfg("retry", chain(1, 2), max_early_fires=1, outcomes=("FAILED",))),
    Mutant("no-watermark-guard-on-heartbeat-check", "INV-9",
           "the heartbeat check judges a projection that has not reached fire_at",
           _unguarded("HEARTBEAT_CHECK"), _cfg("heartbeat", chain(1, 1), max_early_fires=1, max_heartbeats=1)),
    Mutant("409-treated-as-failure", "INV-4",
           "the dispatcher fails the attempt when the queue task already exists",
           _conflict_is_failure, _cfg("409", chain(1, 1), max_crashes=1, outcomes=("SUCCEEDED",))),
    Mutant("failure-not-propagated-transitively", "INV-10",
           "a SKIPPED task does not skip its own downstream",
           _failure_not_transitive, _cfg("transitive", chain(3, 1), outcomes=("FAILED",))),
    Mutant("derived-event-written-to-ledger", "DERIVED",
           "the ready controller persists TaskBecameReady (the fold must emit nothing)",
           _derived_event_in_ledger, _cfg("derived", chain(1, 1), outcomes=("SUCCEEDED",))),
    Mutant("cancel-not-reaching-retry-wait", "INV-10",
           "run cancel leaves tasks waiting for a retry open",
           _cancel_skips_retry_wait, _cfg("cancel", chain(1, 2), max_cancels=1, outcomes=("FAILED",))),
    Mutant("ready-guard-ignores-count", "INV-6",
           "a task becomes READY when its first upstream succeeds",
           _ready_guard_ignores_count, _cfg("guard", diamond(1), outcomes=("SUCCEEDED",))),
    Mutant("retry-dispatches-same-attempt", "INV-5",
           "after a retry the ready controller asks for the attempt it already ran",
           _redispatches_same_attempt, _cfg("same-attempt", chain(1, 2), outcomes=("FAILED",))),
    Mutant("nondeterministic-attempt-id", "INV-3",
           "attempt ids come from a random source, so replicas disagree",
           _random_attempt_id, _cfg("random", chain(1, 1), outcomes=("SUCCEEDED",))),
    Mutant("heartbeat-check-ignores-heartbeats", "INV-9",
           "the heartbeat check ignores heartbeats and started_at",
           _heartbeats_ignored, _cfg("ignores-heartbeats", chain(1, 1), max_heartbeats=1, outcomes=("SUCCEEDED",))),
    Mutant("fan-out-counter", "INV-6",
           "the decrement-style counter on a fan-out with retries",
           _counter_instead_of_per_edge, _cfg("fanout-counter", fan_out(2, 2), outcomes=("SUCCEEDED", "FAILED")),
           tags=("extra",)),
)
