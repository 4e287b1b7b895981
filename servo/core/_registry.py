"""The registry of pure functions that spec rows name (guards, effects, locators).

Spec TOML never contains code: a row names `guards = ["attempt_is_current"]` and the
runtime registers a function under that name. Loading the spec checks every name
against this registry, so a typo is a load error, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from servo.spec import RuleNames

__all__ = ["REGISTRY", "GuardEntry", "Registry"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class GuardEntry:
    """A guard and the rejection reason recorded when it is what refuses an event."""

    fn: Callable[[Any], bool]
    rejects: str | None


@dataclass
class Registry:
    """Names -> pure functions; one instance (`REGISTRY`) serves the runtime."""

    guards: dict[str, GuardEntry] = field(default_factory=dict)
    effects: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    locators: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def guard(self, name: str | None = None, *, rejects: str | None = None) -> Callable[[F], F]:
        """Register a guard `ctx -> bool`; `rejects` names the reason it refuses with."""

        def decorate(fn: F) -> F:
            self._add(self.guards, name or fn.__name__, GuardEntry(fn, rejects))
            return fn

        return decorate

    def effect(self, name: str | None = None) -> Callable[[F], F]:
        """Register an effect `ctx -> None` (mutates only the projection being built)."""

        def decorate(fn: F) -> F:
            self._add(self.effects, name or fn.__name__, fn)
            return fn

        return decorate

    def locator(self, name: str | None = None) -> Callable[[F], F]:
        """Register a locator: how an event finds the machine instance it moves."""

        def decorate(fn: F) -> F:
            self._add(self.locators, name or fn.__name__, fn)
            return fn

        return decorate

    def names(self) -> RuleNames:
        """The registered names, for spec validation."""
        return RuleNames(
            guards=frozenset(self.guards),
            effects=frozenset(self.effects),
            locators=frozenset(self.locators),
        )

    @staticmethod
    def _add(table: dict[str, Any], name: str, value: Any) -> None:
        if name in table:
            raise ValueError(f"{name!r} is registered twice")
        table[name] = value


REGISTRY = Registry()
