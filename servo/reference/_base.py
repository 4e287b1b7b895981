# GENERATED from spec/machines/*.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""The base of every reference machine: guards are facts supplied per event.

A reference class cannot compute a guard (guards are runtime predicates over the
projection), so `fire(event, facts)` makes each guard hold exactly when
`facts[guard]` is true; a guard missing from `facts` does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from statemachine import StateMachine

__all__ = ["ReferenceMachine"]


class ReferenceMachine(StateMachine):
    """A spec machine as a python-statemachine class, driven by `fire`."""

    # Reaching a terminal state from everywhere is not a spec rule; the loader
    # checks what the spec requires (reachability from the initial state, no sinks).
    validate_final_reachability = False

    MACHINE: ClassVar[str] = ""
    """The machine's name in spec/machines/."""
    SOURCE: ClassVar[str] = ""
    """The table the class was generated from."""
    INITIAL: ClassVar[str] = ""
    """The state a new instance starts in."""
    TERMINAL: ClassVar[tuple[str, ...]] = ()
    """The terminal states (no row leaves them)."""
    EVENTS: ClassVar[tuple[str, ...]] = ()
    """Catalog names of the events that have at least one row, in first-row order."""
    GUARDS: ClassVar[tuple[str, ...]] = ()
    """Every guard name the rows use, sorted."""

    def __init__(self, *, start_value: str | None = None) -> None:
        """Start in the initial state, or in `start_value` (a state name)."""
        self._facts: Mapping[str, bool] = {}
        super().__init__(start_value=start_value)

    @property
    def state_name(self) -> str:
        """The current state's name."""
        return str(self.current_state_value)

    def fire(self, event: str, facts: Mapping[str, bool] | None = None) -> str:
        """Send `event` (a catalog name) with `facts` for its guards; return the new state.

        Raises `statemachine.exceptions.TransitionNotAllowed` when no row for the
        current state and `event` has all its guards true (the state is unchanged).
        """
        self._facts = dict(facts) if facts else {}
        try:
            self.send(event)
        finally:
            self._facts = {}
        return self.state_name

    def _fact(self, guard: str) -> bool:
        return bool(self._facts.get(guard, False))
