"""Compile the rows one machine has for one event into a straight-line step function.

The engine's semantics (ADR 004, SPEC §4) are: in the instance's state, try the rows
for the event in declared order; the first row whose guards all hold moves the
instance to its target, stamps `row_version` and runs the row's effects; if none
holds, the refusal reason is that of the first guard with `rejects` that failed (in
row order), else INVALID_TRANSITION; a state with no row for the event answers ""
(unmatched). A loop over tuples does this with several calls and unpackings per row;
the fold meets a million events, so the rows are compiled once per engine into
Python source (like attrs compiles classes and `events` compiles validators),
calling the guard and effect functions the registry held when the engine was built.

Nothing is hand-written per state: the source is generated from the rows alone, and
`step.__source__` keeps it (and `linecache` shows it in tracebacks).
"""

from __future__ import annotations

import functools
import linecache
from collections.abc import Callable
from typing import Any

__all__ = ["CompiledRow", "StepFn", "compile_step", "generated"]

CompiledRow = tuple[str, tuple[tuple[Callable[[Any], bool], str | None], ...], tuple[Callable[[Any], None], ...]]
"""(target, ((guard, rejects), ...), (effect, ...)) with functions resolved by name."""

StepFn = Callable[[Any, Any], str | None]
"""step(instance, ctx) -> None if a row accepted, else the refusal reason ("" = unmatched)."""

_counter = 0


def compile_step(
    machine: str, event: str, rows: dict[str, tuple[CompiledRow, ...]], *, counts_tasks: bool
) -> StepFn:
    """The step of `machine` meeting `event`, given its rows by source state.

    `counts_tasks` keeps the partition's per-state task counts (the task machine).
    Compiling costs ~0.1 ms, and tests build thousands of engines, so steps are cached
    by the rows' *contents* (the guard and effect functions themselves): an engine
    built over a patched registry gets a step that calls the patched functions.
    """
    return _compile_cached(machine, event, tuple(rows.items()), counts_tasks)


@functools.lru_cache(maxsize=1024)
def _compile_cached(
    machine: str, event: str, rows: tuple[tuple[str, tuple[CompiledRow, ...]], ...], counts_tasks: bool
) -> StepFn:
    namespace: dict[str, Any] = {}
    lines = ["def step(instance, ctx):", "    state = instance.state"]
    for s, (state, state_rows) in enumerate(rows):
        lines.append(f"    if state == {state!r}:")
        lines.extend(_state_body(s, state, state_rows, namespace, counts_tasks))
    lines.append('    return ""')
    step: StepFn = generated(f"step {machine}/{event}", lines, namespace, "step")
    step.__qualname__ = f"step[{machine}/{event}]"
    return step


def generated(what: str, lines: list[str], namespace: dict[str, Any], name: str) -> Any:
    """Exec generated source (from the spec rows, never from input) and return `name`;
    `fn.__source__` keeps the source and `linecache` shows it in tracebacks."""
    global _counter
    _counter += 1
    filename = f"<servo {what} #{_counter}>"
    source = "\n".join(lines) + "\n"
    exec(compile(source, filename, "exec"), namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    fn = namespace[name]
    fn.__source__ = source
    return fn


def _state_body(
    s: int, state: str, rows: tuple[CompiledRow, ...], namespace: dict[str, Any], counts_tasks: bool
) -> list[str]:
    pad = " " * 8
    rejecting = any(rejects for _, guards, _ in rows for _, rejects in guards)
    out = [pad + "ctx.row = instance"]
    if rejecting:
        out.append(pad + "reason = None")
    for r, (target, guards, effects) in enumerate(rows):
        move = _move(s, r, state, target, effects, namespace, counts_tasks)
        if not guards:
            out.extend(pad + line for line in move)
            return out  # later rows of this state can never be reached
        for g, (fn, rejects) in enumerate(guards):
            name = f"g{s}_{r}_{g}"
            namespace[name] = fn
            out.append(pad + ("if" if g == 0 else "elif") + f" not {name}(ctx):")
            out.append(pad + (f"    if reason is None: reason = {rejects!r}" if rejects else "    pass"))
        out.append(pad + "else:")
        out.extend(pad + "    " + line for line in move)
    out.append(pad + ('return reason or "INVALID_TRANSITION"' if rejecting else 'return "INVALID_TRANSITION"'))
    return out


def _move(
    s: int,
    r: int,
    source: str,
    target: str,
    effects: tuple[Callable[[Any], None], ...],
    namespace: dict[str, Any],
    counts_tasks: bool,
) -> list[str]:
    out = [f"instance.state = {target!r}", "instance.row_version = ctx.event_id"]
    if counts_tasks and source != target:
        out += [
            "counts = ctx.part.task_counts",
            f"counts[{source!r}] -= 1",
            f"counts[{target!r}] = counts.get({target!r}, 0) + 1",
        ]
    for e, fn in enumerate(effects):
        name = f"e{s}_{r}_{e}"
        namespace[name] = fn
        out.append(f"{name}(ctx)")
    out.append("return None")
    return out
