"""The table-driven step: find the instance an event moves, pick the first row whose
guards hold, set the state, run the row's effects, then drain derived events.

Nothing here knows a state name: every decision comes from the spec rows and the
guards/effects/locators they name in the registry. The rows are resolved and compiled
once per engine (`_steps.compile_step`), with the functions the registry holds *then*:
a registry patched later (a mutant, a test) takes effect in the next engine built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from servo.core._registry import GuardEntry, Registry
from servo.core.fold._rows import Derived, Partition, Rejection
from servo.core.fold._steps import CompiledRow, StepFn, compile_step, generated
from servo.spec import EventSpec, Machine, Spec

__all__ = ["Apply", "Ctx", "Engine", "Locator", "Step"]


@dataclass(frozen=True, slots=True)
class Step:
    """One instance meeting one event, for differential tests against the reference:
    the guard values of its candidate rows and the state the fold moved it to (None:
    refused)."""

    machine: str
    source: str
    event: str
    facts: dict[str, bool]
    target: str | None


@dataclass(slots=True)
class Ctx:
    """What guards, effects and locators see: the partition, the event, the instance."""

    part: Partition
    event_type: str
    event_id: str
    occurred_at: datetime
    data: Mapping[str, Any]
    row: Any = None
    engine: Engine | None = None

    def raise_derived(self, machine: str, instance: Any, event_type: str, data: dict[str, Any]) -> None:
        """Queue a derived event (applied after the current event, never stored)."""
        self.part.pending.append(Derived(machine, instance, event_type, data))


class Locator(Protocol):
    """How an event finds (or creates) the instances of one machine it moves."""

    def find(self, ctx: Ctx) -> list[Any] | str:
        """Existing instances, or a rejection reason (e.g. UNKNOWN_RUN, or "" if none)."""
        ...

    def create(self, ctx: Ctx) -> list[Any]:
        """Create and store the instances a `created_by` event makes."""
        ...


Apply = Callable[[Ctx], Rejection | None]
"""One event type's whole fold step: ctx -> its rejection, or None if accepted."""

_Row = CompiledRow


def _layer(spec: Spec, machine: Machine) -> int:
    table = spec.tables.get(machine.table)
    return table.layer if table is not None else 1


@dataclass(frozen=True, slots=True)
class _Bound:
    """One machine as one event type meets it: its rows for that event, by state."""

    machine: Machine
    locator: Locator
    creates: bool
    rows: dict[str, tuple[_Row, ...]]
    counts_tasks: bool
    step: StepFn


class Engine:
    """Applies events to partitions by looking transitions up in the spec tables."""

    def __init__(self, spec: Spec, registry: Registry, layer: int = 1) -> None:
        self.spec = spec
        self.guards: dict[str, GuardEntry] = registry.guards
        self.effects = registry.effects
        self._plans: dict[str, tuple[EventSpec, _Bound, tuple[_Bound, ...]]] = {}
        self._derived: dict[tuple[str, str], _Bound] = {}
        self._trace: Callable[[Step], None] | None = None
        self._compiled: dict[str, dict[tuple[str, str], tuple[_Row, ...]]] = {
            name: self._compile(machine) for name, machine in spec.machines.items() if _layer(spec, machine) == layer
        }
        for name, event in spec.events.items():
            if event.layer != layer:
                continue
            primary = self._bind(registry, event.machine, name)
            also = tuple(self._bind(registry, m, name) for m in event.also)
            self._plans[name] = (event, primary, also)
            if event.derived:
                self._derived[(event.machine, name)] = primary
        # What the fold calls: one function per event type, one step per derived event. Updated in place when `trace` changes, so holders of the dicts see it.
        self.appliers: dict[str, Apply] = {}
        self._derived_steps: dict[tuple[str, str], StepFn] = {}
        self._link()

    def _compile(self, machine: Machine) -> dict[tuple[str, str], tuple[_Row, ...]]:
        """Rows by (state, event) with their guard and effect functions resolved once."""
        out: dict[tuple[str, str], list[_Row]] = {}
        for row in machine.transitions:
            guards = tuple((self.guards[g].fn, self.guards[g].rejects) for g in row.guards)
            effects = tuple(self.effects[e] for e in row.effects)
            out.setdefault((row.source, row.event), []).append((row.target, guards, effects))
        return {key: tuple(value) for key, value in out.items()}

    def _bind(self, registry: Registry, machine_name: str, event: str) -> _Bound:
        machine = self.spec.machines[machine_name]
        locator: Locator = registry.locators[machine.locator]()
        compiled = self._compiled[machine_name]
        rows = {state: value for (state, ev), value in compiled.items() if ev == event}
        counts_tasks = machine_name == "task"
        step = compile_step(machine_name, event, rows, counts_tasks=counts_tasks)
        return _Bound(machine, locator, event in machine.created_by, rows, counts_tasks, step)

    # ------------------------------------------------------------- tracing --

    @property
    def trace(self) -> Callable[[Step], None] | None:
        """If set, every instance step is reported (differential tests)."""
        return self._trace

    @trace.setter
    def trace(self, trace: Callable[[Step], None] | None) -> None:
        self._trace = trace
        self._link()

    def _step_of(self, bound: _Bound) -> StepFn:
        if self._trace is None:
            return bound.step

        def traced(instance: Any, ctx: Ctx) -> str | None:
            return self._traced_step(bound, instance, ctx)

        return traced

    def _traced_step(self, bound: _Bound, instance: Any, ctx: Ctx) -> str | None:
        """The compiled step reported to `trace`: the guard values of the candidate rows
        (read before the move) and the state the fold actually moved the instance to."""
        trace, source = self._trace, instance.state
        assert trace is not None
        ctx.row = instance
        rows = bound.machine.rows(source, ctx.event_type)
        facts = {name: bool(self.guards[name].fn(ctx)) for row in rows for name in row.guards}
        reason = bound.step(instance, ctx)
        trace(Step(bound.machine.name, source, ctx.event_type, facts, None if reason is not None else instance.state))
        return reason

    # ---------------------------------------------------------------- fold --

    def _link(self) -> None:
        for name, (event, primary, also) in self._plans.items():
            self.appliers[name] = self._applier(event, primary, also)
        for key, bound in self._derived.items():
            self._derived_steps[key] = self._step_of(bound)

    def handles(self, event_type: str) -> bool:
        """True if this engine folds `event_type`."""
        return event_type in self._plans

    def apply(self, ctx: Ctx) -> Rejection | None:
        """Apply one stored event; return its rejection, or None if accepted."""
        ctx.engine = self
        return self.appliers[ctx.event_type](ctx)

    def _applier(self, event: EventSpec, primary: _Bound, also: tuple[_Bound, ...]) -> Apply:
        """The fold of one event type: locate and step the primary machine's instances
        (any refusal rejects the event and drops its derived events), then every `also`
        machine's (refusals ignored), then drain the derived events.

        Generated per event type (like the steps), so the event meets its machines in
        straight-line code: no loop over the `also` machines, no branch on `created_by`.
        """
        namespace: dict[str, Any] = {"created": self._created, "refuse": _refuse, "drain": self._drain}
        lines = ["def apply(ctx):"]
        for i, bound in enumerate((primary, *also)):
            namespace[f"find{i}"], namespace[f"bound{i}"] = bound.locator.find, bound
            namespace[f"step{i}"] = self._step_of(bound)
            lines.append(f"    found = find{i}(ctx)")
            if i == 0:
                lines += _primary_lines(bound, event.unmatched)
            else:
                # An `also` machine's refusal is ignored, so an instance in a state without
                # rows for the event is not stepped at all (unless traced: the trace reports it).
                namespace[f"rows{i}"] = frozenset(bound.rows)
                lines += _also_lines(i, bound, traced=self._trace is not None)
        lines += ["    if ctx.part.pending:", "        drain(ctx)", "    return None"]
        apply: Apply = generated(f"apply {event.name}", lines, namespace, "apply")
        return apply

    @staticmethod
    def _created(bound: _Bound, ctx: Ctx, found: list[Any] | str) -> list[Any] | tuple[str, str]:
        """The instances a `created_by` event makes (those with rows for it), or a refusal."""
        if isinstance(found, list) and found:
            return ("INVALID_TRANSITION", f"{bound.machine.name} already exists")
        if isinstance(found, str) and found:
            return (found, f"{bound.machine.name}: {found.lower().replace('_', ' ')}")
        created = bound.locator.create(ctx)
        initial, event_id = bound.machine.initial, ctx.event_id
        for instance in created:
            instance.state = initial
            instance.row_version = event_id
        if bound.counts_tasks and created:
            counts = ctx.part.task_counts
            counts[initial] = counts.get(initial, 0) + len(created)
        # A created instance takes the creating event through its rows if it has any.
        return created if initial in bound.rows else []

    def _drain(self, ctx: Ctx) -> None:
        """Apply the derived events queued by `ctx`'s event, reusing `ctx` (the event is
        done: a derived event has the causing event's id and time, its own type and data)."""
        pending, steps = ctx.part.pending, self._derived_steps
        while pending:
            machine, instance, event_type, data = pending.popleft()
            ctx.event_type, ctx.data, ctx.row = event_type, data, None
            steps[(machine, event_type)](instance, ctx)


def _refuse(ctx: Ctx, reason: str, detail: str) -> Rejection:
    ctx.part.pending.clear()
    return Rejection(ctx.event_id, reason, ctx.event_type, detail)


def _primary_lines(bound: _Bound, unmatched: str) -> list[str]:
    """Any refusal of the primary machine rejects the event."""
    name = bound.machine.name
    if bound.creates:
        lines = ["    found = created(bound0, ctx, found)", "    if type(found) is tuple:", "        return refuse(ctx, *found)"]
    else:
        missing = f"no {name} for this event"
        lines = ["    if type(found) is str:", f"        return refuse(ctx, found or 'INVALID_TRANSITION', {missing!r})"]
    refused = name + " in {what} refuses {ctx.event_type}"
    lines += [
        "    for instance in found:",
        "        reason = step0(instance, ctx)",
        "        if reason is not None:",
        "            what = getattr(instance, 'state', '?')",
        f"            return refuse(ctx, reason or {unmatched!r}, f{refused!r})",
    ]
    return lines


def _also_lines(i: int, bound: _Bound, *, traced: bool) -> list[str]:
    """An `also` machine's refusals are ignored."""
    if bound.creates:
        lines = [f"    found = created(bound{i}, ctx, found)", "    if type(found) is not tuple:"]
    else:
        lines = ["    if type(found) is not str:"]
    if traced:
        lines += ["        for instance in found:", f"            step{i}(instance, ctx)"]
    elif bound.rows:
        lines += ["        for instance in found:", f"            if instance.state in rows{i}:"]
        lines.append(f"                step{i}(instance, ctx)")
    else:
        lines.append("        pass")
    return lines

