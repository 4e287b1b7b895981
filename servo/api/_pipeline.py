"""Declaring pipelines: tasks are plain functions with dependencies and policies.

    from servo import Pipeline, TaskContext

    pipeline = Pipeline("nightly")

    @pipeline.task(max_attempts=3)
    def extract(ctx: TaskContext) -> None: ...

    @pipeline.task(depends_on=[extract])
    def transform(ctx: TaskContext) -> None: ...

A task fails by raising; it may call `ctx.heartbeat()` during long work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from servo._errors import ServoError
from servo.core.controllers import ON_SLA_MISS_LABEL, RETRY_LABEL, SLA_LABEL
from servo.core.ids import is_finite_number

__all__ = ["Pipeline", "PipelineError", "RetryPolicy", "TaskContext", "TaskExited", "TaskSpec"]

F = TypeVar("F", bound=Callable[..., Any])
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class PipelineError(ServoError):
    """A pipeline declaration is invalid (unknown dependency, cycle, bad name...)."""


class TaskExited(Exception):
    """The task's function called `sys.exit()` or raised `KeyboardInterrupt`: a
    failure of that attempt (those are BaseExceptions, which would otherwise escape
    the worker thread and leave the engine waiting for a finish that never comes)."""


class TaskContext(Protocol):
    """What a running task can see and do."""

    run_id: str
    task_key: str
    attempt: int
    attempt_id: str

    def heartbeat(self, progress_pct: float | None = None) -> None:
        """Tell the orchestrator the attempt is alive (and, optionally, how far along it
        is, in percent: rounded, and held to 0-100)."""
        ...


MAX_SECONDS = 10**9
"""The longest duration a pipeline may declare (about 31 years): a timer set that far
ahead still names a date, and a count this large still fits the ledger's integers."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped: delay = min(cap, base * factor**(n-1))."""

    base_sec: float = 1.0
    factor: float = 2.0
    cap_sec: float = 300.0

    def __post_init__(self) -> None:
        for what, value, least in (("base_sec", self.base_sec, 0.0), ("factor", self.factor, 1.0), ("cap_sec", self.cap_sec, 0.0)):
            if not is_finite_number(value) or not least <= value <= MAX_SECONDS:
                raise PipelineError(f"RetryPolicy: {what} must be a number from {least:g} to {MAX_SECONDS:g}, not {value!r}")


@dataclass(frozen=True)
class TaskSpec:
    """One declared task."""

    key: str
    fn: Callable[..., Any]
    depends_on: tuple[str, ...]
    max_attempts: int
    heartbeat_timeout_sec: int
    retry: RetryPolicy
    asset_key: str | None
    partition_key: str | None
    worker_queue: str

    def plan_entry(self) -> dict[str, Any]:
        """The PlanCreated entry of this task."""
        out: dict[str, Any] = {
            "task_key": self.key,
            "depends_on": list(self.depends_on),
            "max_attempts": self.max_attempts,
            "heartbeat_timeout_sec": self.heartbeat_timeout_sec,
            "worker_queue": self.worker_queue,
        }
        if self.asset_key is not None:
            out["asset_key"] = self.asset_key
        if self.partition_key is not None:
            out["partition_key"] = self.partition_key
        return out


@dataclass
class Pipeline:
    """A named set of tasks with dependencies (a DAG).

    `sla_sec`: the run should end within this many seconds of being triggered; a run
    still going then has missed its SLA, which is reported (a warning and the
    `servo_run_sla_missed_total` metric) and, with `on_sla_miss="cancel"`, cancels it.
    """

    name: str
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    sla_sec: float | None = None
    on_sla_miss: str = "alert"

    def __post_init__(self) -> None:
        _check_key("pipeline name", self.name)
        if self.sla_sec is not None and not (is_finite_number(self.sla_sec) and 0 < self.sla_sec <= MAX_SECONDS):
            raise PipelineError(f"pipeline {self.name!r}: sla_sec must be a positive number of seconds, at most {MAX_SECONDS:g}")
        if self.on_sla_miss not in ("alert", "cancel"):
            raise PipelineError(f"pipeline {self.name!r}: on_sla_miss must be 'alert' or 'cancel'")

    def run_labels(self) -> dict[str, str]:
        """The labels a run of this pipeline carries (its name, and its SLA if any)."""
        labels = {"servo.pipeline": self.name}
        if self.sla_sec is not None:
            labels[SLA_LABEL] = f"{self.sla_sec:g}"
            labels[ON_SLA_MISS_LABEL] = self.on_sla_miss
        # Each task's own retry policy travels with the run: the controllers of whichever
        # engine leads the home read it from the projection (P5), not from this process.
        own = {k: [t.retry.base_sec, t.retry.factor, t.retry.cap_sec] for k, t in self.tasks.items() if t.retry != RetryPolicy()}
        if own:
            labels[RETRY_LABEL] = json.dumps(own, sort_keys=True, separators=(",", ":"))
        return labels

    def task(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[str | Callable[..., Any]] | str | Callable[..., Any] = (),
        max_attempts: int = 1,
        heartbeat_timeout_sec: int = 300,
        retry: RetryPolicy | None = None,
        asset_key: str | None = None,
        partition_key: str | None = None,
        worker_queue: str = "default",
    ) -> Any:
        """Register a function as a task (usable as `@pipeline.task` or `@pipeline.task(...)`)."""

        def register(func: F) -> F:
            key = name if name is not None else getattr(func, "__name__", None)
            if not isinstance(key, str) or key == "<lambda>":
                raise PipelineError(f"{func!r} has no usable name: pass name=... to pipeline.task")
            _check_key("task name", key)
            _check_callable(key, func)
            if key in self.tasks:
                raise PipelineError(f"pipeline {self.name!r}: task {key!r} is declared twice")
            for what, value in (("max_attempts", max_attempts), ("heartbeat_timeout_sec", heartbeat_timeout_sec)):
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SECONDS:
                    raise PipelineError(f"task {key!r}: {what} must be an integer from 1 to {MAX_SECONDS}, not {value!r}")
            for what, label in (("asset_key", asset_key), ("partition_key", partition_key)):
                if label is not None and (not isinstance(label, str) or not label):
                    raise PipelineError(f"task {key!r}: {what} must be a non-empty string, not {label!r}")
            _check_key(f"task {key!r}: worker_queue", worker_queue)
            upstream = [depends_on] if isinstance(depends_on, str) or callable(depends_on) else depends_on
            deps = tuple(sorted({d if isinstance(d, str) else _task_name(d) for d in upstream}))
            for dep in deps:
                if dep not in self.tasks:
                    raise PipelineError(
                        f"task {key!r} depends on {dep!r}, which is not declared before it in {self.name!r}"
                    )
            self.tasks[key] = TaskSpec(
                key=key,
                fn=func,
                depends_on=deps,
                max_attempts=max_attempts,
                heartbeat_timeout_sec=heartbeat_timeout_sec,
                retry=retry or RetryPolicy(),
                asset_key=asset_key,
                partition_key=partition_key,
                worker_queue=worker_queue,
            )
            # Lets `depends_on=[func]` name it; a builtin takes no attributes (name it then).
            with contextlib.suppress(AttributeError, TypeError):
                func.__servo_task__ = key  # type: ignore[attr-defined]
            return func

        if fn is not None:
            return register(fn)
        return register

    def plan(self) -> list[dict[str, Any]]:
        """The PlanCreated task list."""
        if not self.tasks:
            raise PipelineError(f"pipeline {self.name!r} has no tasks")
        return [spec.plan_entry() for spec in self.tasks.values()]

    def plan_id(self) -> str:
        """A content hash of the plan, every PlanCreated field of every task: the same
        declaration gives the same id, and any change to what the plan records (a
        dependency, max_attempts, a heartbeat timeout, a queue, an asset) another."""
        text = json.dumps(sorted(self.plan(), key=lambda t: str(t["task_key"])), sort_keys=True, separators=(",", ":"))
        return "plan_" + hashlib.sha256(f"{self.name}:{text}".encode()).hexdigest()[:16]

    def call(self, key: str, ctx: TaskContext) -> None:
        """Run a task's function with the context (if it takes one); an `async def`
        function (or one returning an awaitable) is run to completion on its own event
        loop. `sys.exit()` and `KeyboardInterrupt` inside it become `TaskExited`."""
        spec = self.tasks.get(key)
        if spec is None:
            raise PipelineError(f"task {key!r} is not declared in pipeline {self.name!r}")
        fn = spec.fn
        params: Sequence[inspect.Parameter] = list(inspect.signature(fn).parameters.values())
        takes_ctx = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
        try:
            result = fn(ctx) if takes_ctx else fn()
            if inspect.isgenerator(result) or inspect.isasyncgen(result):
                raise TypeError(
                    f"task {key!r} returned a generator, which servo does not iterate: its work would "
                    "not be done; return nothing (or a value) instead"
                )
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
        except SystemExit as exc:
            raise TaskExited(f"the task called sys.exit({exc.code!r})").with_traceback(exc.__traceback__) from None
        except KeyboardInterrupt as exc:
            raise TaskExited("the task raised KeyboardInterrupt").with_traceback(exc.__traceback__) from None
        except Exception:
            raise
        except BaseException as exc:  # not an Exception: it must not escape the worker
            try:
                shown = repr(exc)
            except BaseException:  # the task's own __repr__, whatever it raises
                shown = type(exc).__name__
            raise TaskExited(f"the task raised {shown}").with_traceback(exc.__traceback__) from None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _check_callable(key: str, func: Callable[..., Any]) -> None:
    """A task is called with nothing or with its context: refuse one that needs more
    (it would fail every attempt), or that only makes a generator."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise PipelineError(
            f"task {key!r} is a generator function: calling it makes a generator and its body "
            "would never run; make it return instead of yield"
        )
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: taken as it is
        return
    required = [
        p for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(required) > 1 or any(p.kind is p.KEYWORD_ONLY for p in required):
        names = ", ".join(p.name for p in required)
        raise PipelineError(f"task {key!r} takes nothing or the context (ctx), not ({names})")


def _task_name(fn: Callable[..., Any]) -> str:
    key = getattr(fn, "__servo_task__", None)
    if not isinstance(key, str):
        raise PipelineError(f"{getattr(fn, '__name__', fn)!r} is not a task; decorate it first")
    return key


def _check_key(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 128 or not set(value) <= _KEY_CHARS or value in (".", ".."):
        raise PipelineError(f"{what} {value!r} must be 1-128 characters of letters, digits, '_', '.', '-' (not '.' or '..')")
