"""Append notices: how a fenced driver replica tells the compactor what it appended.

Only the replica holding the compactor epoch folds (ADR 010). Its compactor hears of
its own appends in-process; a fenced replica's appends reach it through notices:
create-only objects ``notices/{seq:012d}.json`` holding a list of event ids, the
same pattern as the manifests (ADR 007). A poster creates the first free number and
moves on when one is taken; the leader reads forward from its cursor by name while
the next number exists. Nothing is listed (P6) and nothing is overwritten (P1).

A notice that never gets written (the replica died between its append and the
notice) only delays the fold: the leader's anti-entropy sweep lists the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from servo._errors import ObjectExists
from servo.storage import ScopedStore

__all__ = ["Notices", "notice_name"]


def notice_name(seq: int) -> str:
    """The object name of notice `seq` (1-based, gapless)."""
    return f"notices/{seq:012d}.json"


class Notices:
    """Post and take append notices in one tenant/workspace scope."""

    def __init__(self, store: ScopedStore) -> None:
        self._store = store
        self._post_at = 0  # next number this poster tries (0: find the frontier first)
        self._read_at = 0  # next number this reader takes (0: not started)

    def frontier(self) -> int:
        """The first free notice number, by galloping then bisecting over `head` (O(log n))."""
        taken, free = 0, 1
        while self._store.head(notice_name(free)) is not None:
            taken, free = free, free * 2
        while free - taken > 1:  # taken exists (or is 0), free does not
            middle = (taken + free) // 2
            if self._store.head(notice_name(middle)) is None:
                free = middle
            else:
                taken = middle
        return free

    def post(self, event_ids: Iterable[str]) -> None:
        """Create the next notice with `event_ids` (nothing for an empty list)."""
        body = json.dumps(sorted(set(event_ids))).encode()
        if body == b"[]":
            return
        seq = self._post_at or self.frontier()
        while True:
            try:
                self._store.put_if_absent(notice_name(seq), body)
            except ObjectExists:
                seq += 1  # another replica took it
                continue
            self._post_at = seq + 1
            return

    def start_reading(self) -> None:
        """Take only notices posted from now on (the caller sweeps the ledger once instead)."""
        self._read_at = self.frontier()

    def take(self) -> list[str]:
        """Event ids of the notices posted since the last take, in notice order."""
        if not self._read_at:
            self.start_reading()
        ids: list[str] = []
        while self._store.head(notice_name(self._read_at)) is not None:
            ids.extend(json.loads(self._store.get(notice_name(self._read_at)).data))
            self._read_at += 1
        return ids
