"""Damage to a home's derived files, as a disk fault or a careless hand would do it.

Everything but the ledger is derived (ADR 022): each function here breaks one kind of
derived file (or drops junk beside the ledger's events) and is a no-op when the home
has nothing of that kind yet, so the fuzz can apply any of them at any moment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from servo.engine import Home


def object_path(home: Home, name: str) -> Path:
    return home.root / "store" / "objects" / home.store.full_name(name)


def _newest_manifest(home: Home) -> tuple[str, dict[str, object]] | None:
    names = sorted(n for n in home.store.list_prefix("manifests/") if n.endswith(".json"))
    return (names[-1], json.loads(home.store.get(names[-1]).data)) if names else None


def _drop_newest_delta_file(home: Home, table: str) -> None:
    newest = _newest_manifest(home)
    deltas = newest[1]["deltas"] if newest else []
    assert isinstance(deltas, list)
    names = [d[table] for d in reversed(deltas) if table in d]
    if names and object_path(home, names[0]).exists():
        object_path(home, names[0]).unlink()


def _tear_newest_manifest(home: Home) -> None:
    newest = _newest_manifest(home)
    if newest is not None:
        path = object_path(home, newest[0])
        path.write_bytes(path.read_bytes()[:20])


def _overwrite(home: Home, name: str, data: bytes) -> None:
    path = object_path(home, name)
    if path.exists():
        path.write_bytes(data)


def _garble_queue(home: Home) -> None:
    home.queue_path.write_bytes(b"garbage" * 100)
    for extra in home.root.glob("queue.db-*"):
        extra.unlink()


def _drop_every_derived_file(home: Home) -> None:
    for name in home.store.list_prefix(""):
        if not name.startswith("ledger/"):
            object_path(home, name).unlink()
    home.queue_path.unlink(missing_ok=True)


def _junk_in_the_ledger(home: Home) -> None:
    days = sorted(home.store.list_prefix("ledger/orchestration/"))
    if days:
        folder = object_path(home, days[-1]).parent
        (folder / "notes.json").write_bytes(b'{"copied": "by hand"}')
        (folder / "01JUNKJUNKJUNKJUNKJUNKJUNK.json").write_bytes(b"{not json")


DAMAGE: dict[str, Callable[[Home], None]] = {
    "delta key list deleted": lambda home: _drop_newest_delta_file(home, "_events"),
    "delta table deleted": lambda home: _drop_newest_delta_file(home, "tasks"),
    "newest manifest torn": _tear_newest_manifest,
    "epoch unreadable": lambda home: _overwrite(home, "compactor/epoch", b"{not an epoch"),
    "manifest pointer unreadable": lambda home: _overwrite(home, "manifests/latest", b"garbage"),
    "every derived file deleted": _drop_every_derived_file,
    "queue file garbage": _garble_queue,
    "junk objects in the ledger folder": _junk_in_the_ledger,
}
"""Each kind of damage, by name. Only the queue ones can lose an attempt that was
running: it is then recovered by its heartbeat check, like any lost work."""
QUEUE_DAMAGE = frozenset({"every derived file deleted", "queue file garbage"})
