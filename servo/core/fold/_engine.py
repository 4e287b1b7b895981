"""The table-driven step: find the instance an event moves, pick the first row whose
guards hold, set the state, run the row's effects, then drain derived events.

Nothing here knows a state name: every decision comes from the spec rows and the
guards/effects/locators they name in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from servo.core._registry import GuardEntry, Registry
from servo.core.fold._rows import Derived, Partition, Rejection
from servo.spec import EventSpec, Machine, Spec

__all__ = ["Ctx", "Engine", "Locator", "Step"]


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


_Row = tuple[str, tuple[tuple[Callable[[Any], bool], str | None], ...], tuple[Callable[[Any], None], ...]]


def _layer(spec: Spec, machine: Machine) -> int:
    table = spec.tables.get(machine.table)
    return table.layer if table is not None else 1


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Bound:
    """One machine as one event type meets it: its rows for that event, by state."""

    machine: Machine
    locator: Locator
    creates: bool
    rows: dict[str, tuple[_Row, ...]]
    counts_tasks: bool


class Engine:
    """Applies events to partitions by looking transitions up in the spec tables."""

    def __init__(self, spec: Spec, registry: Registry, layer: int = 1) -> None:
        self.spec = spec
        self.guards: dict[str, GuardEntry] = registry.guards
        self.effects = registry.effects
        self._plans: dict[str, tuple[EventSpec, _Bound, tuple[_Bound, ...]]] = {}
        self._derived: dict[tuple[str, str], _Bound] = {}
        self.trace: Callable[[Step], None] | None = None
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
        return _Bound(machine, locator, event in machine.created_by, rows, machine_name == "task")

    def _traced_step(self, bound: _Bound, instance: Any, ctx: Ctx) -> str | None:
        """`_step` reported to `trace`: the guard values of the candidate rows (read
        before the move) and the state the fold actually moved the instance to."""
        trace, source = self.trace, instance.state
        assert trace is not None
        ctx.row = instance
        rows = bound.machine.rows(source, ctx.event_type)
        facts = {name: bool(self.guards[name].fn(ctx)) for row in rows for name in row.guards}
        self.trace = None
        try:
            reason = self._step(bound, instance, ctx)
        finally:
            self.trace = trace
        trace(Step(bound.machine.name, source, ctx.event_type, facts, None if reason is not None else instance.state))
        return reason

    def handles(self, event_type: str) -> bool:
        """True if this engine folds `event_type`."""
        return event_type in self._plans

    def apply(self, ctx: Ctx) -> Rejection | None:
        """Apply one stored event; return its rejection, or None if accepted."""
        event, primary, also = self._plans[ctx.event_type]
        ctx.engine = self
        try:
            for instance in self._instances(primary, ctx):
                reason = self._step(primary, instance, ctx)
                if reason is not None:
                    what = getattr(instance, "state", "?")
                    detail = f"{primary.machine.name} in {what} refuses {ctx.event_type}"
                    raise _Refused(reason if reason else event.unmatched, detail)
        except _Refused as refused:
            ctx.part.pending.clear()
            return Rejection(ctx.event_id, refused.reason, ctx.event_type, refused.detail)
        for bound in also:
            try:
                for instance in self._instances(bound, ctx):
                    self._step(bound, instance, ctx)
            except _Refused:
                continue
        if ctx.part.pending:
            self._drain(ctx)
        return None

    def _instances(self, bound: _Bound, ctx: Ctx) -> list[Any]:
        found = bound.locator.find(ctx)
        if bound.creates:
            if isinstance(found, list) and found:
                raise _Refused("INVALID_TRANSITION", f"{bound.machine.name} already exists")
            if isinstance(found, str) and found:
                raise _Refused(found, f"{bound.machine.name}: {found.lower().replace('_', ' ')}")
            created = bound.locator.create(ctx)
            for instance in created:
                instance.state = bound.machine.initial
                instance.row_version = ctx.event_id
                if bound.machine.name == "task":
                    counts = ctx.part.task_counts
                    counts[instance.state] = counts.get(instance.state, 0) + 1
            # A created instance takes the creating event through its rows if it has any.
            return [i for i in created if i.state in bound.rows]
        if isinstance(found, str):
            reason = found or "INVALID_TRANSITION"
            raise _Refused(reason, f"no {bound.machine.name} for this event")
        return found

    def _step(self, bound: _Bound, instance: Any, ctx: Ctx) -> str | None:
        """Move one instance; None if a row accepted, else the refusal reason ('' = unmatched)."""
        if self.trace is not None:
            return self._traced_step(bound, instance, ctx)
        rows = bound.rows.get(instance.state)
        if rows is None:
            return ""
        reason: str | None = None
        ctx.row = instance
        for target, guards, effects in rows:
            for fn, rejects in guards:
                if not fn(ctx):
                    if reason is None and rejects:
                        reason = rejects
                    break
            else:
                before = instance.state
                instance.state = target
                instance.row_version = ctx.event_id
                if bound.counts_tasks and before != target:
                    counts = ctx.part.task_counts
                    counts[before] -= 1
                    counts[target] = counts.get(target, 0) + 1
                for effect in effects:
                    effect(ctx)
                return None
        return reason or "INVALID_TRANSITION"

    def _drain(self, cause: Ctx) -> None:
        part = cause.part
        while part.pending:
            derived = part.pending.popleft()
            ctx = Ctx(
                part=part,
                event_type=derived.event_type,
                event_id=cause.event_id,
                occurred_at=cause.occurred_at,
                data=derived.data,
                engine=self,
            )
            self._step(self._derived[(derived.machine, derived.event_type)], derived.instance, ctx)
