"""Cross-process append notifications for the embedded compactor.

The embedded compactor runs inside `servo run`; it folds what its own process
appends because the ledger's `on_append` hook tells it (SPEC §6: a notification per
appended event is the trigger). Another process appending to the same home —
`servo serve` recording worker callbacks — cannot call that hook, so it *posts* each
new event id to a spool directory instead, and the engine *drains* it on every loop:

    .servo/notify/{event_id}      one empty file per appended event

Creating a file per id is atomic and needs no locking between processes; an id is
only a hint (the compactor reads the event from the ledger by name), so a lost or
repeated notification costs nothing. The engine's periodic ledger listing sweep
(`Compactor.repair`) is the fallback for a notification that never landed (the
appender died between the ledger write and the post).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from servo.core.ids import is_ulid

if TYPE_CHECKING:
    from servo.engine._home import Home

__all__ = ["NotifySpool"]


class NotifySpool:
    """A directory of event ids appended by other processes, not yet folded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def for_home(cls, home: Home) -> NotifySpool:
        """The spool of a home (`{home}/notify/`)."""
        return cls(home.root / "notify")

    def post(self, event_ids: list[str]) -> None:
        """Tell the home's engine these events are in the ledger (call after the append)."""
        if not event_ids:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for event_id in event_ids:
            if not is_ulid(event_id):  # the name is a path: never let input pick it
                raise ValueError(f"not an event id: {event_id!r}")
            fd = os.open(self.directory / event_id, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)

    def drain(self) -> list[str]:
        """Take every posted id (sorted); each is returned by exactly one drain."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        taken: list[str] = []
        for entry in entries:
            if not is_ulid(entry.name):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue  # another drainer took it
            taken.append(entry.name)
        return sorted(taken)
