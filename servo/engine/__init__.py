"""The embedded engine: local files + local queue + local workers, zero services."""

from __future__ import annotations

from servo.engine._driver import EmbeddedEngine, RunOutcome, RunTimedOut
from servo.engine._home import Home, HomeError

__all__ = ["EmbeddedEngine", "Home", "HomeError", "RunOutcome", "RunTimedOut"]
