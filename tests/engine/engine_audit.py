"""What the engine tests check after a run: the ledger refolded, as an auditor would.

Every assertion reads durable state (the ledger, the queue file), never what the
engine says about itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from servo.api import Pipeline, RetryPolicy, TaskContext
from servo.core._registry import Registry
from servo.core.fold import fold_lines
from servo.engine import Home
from servo.spec import Spec
from servo.storage import Ledger

FAST_RETRY = RetryPolicy(base_sec=0.1, factor=1.0, cap_sec=0.2)


def _parsed(line: bytes) -> dict[str, Any] | None:
    """An event file's envelope; None for a torn one (the fold rejects it as INVALID)."""
    try:
        event: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    return event


class Crash(Exception):
    """A fault hook's stand-in for a process dying at that point."""


@dataclass
class Audit:
    """The refolded ledger of one home."""

    events: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, home: Home, spec: Spec, rules: Registry) -> Audit:
        ledger = Ledger(home.store)
        lines = [ledger.read(i) for i in ledger.list_event_ids().event_ids]
        return cls([e for e in map(_parsed, lines) if e is not None], fold_lines(lines, spec, rules).tables())

    @property
    def rejected(self) -> dict[str, str]:
        return {r["event_id"]: r["reason"] for r in self.tables["rejected_events"]}

    def accepted(self, event_type: str) -> list[dict[str, Any]]:
        """Events of `event_type` the fold accepted (not rejected for any reason)."""
        rejected = self.rejected
        return [e for e in self.events if e["event_type"] == event_type and e["event_id"] not in rejected]

    def successes(self) -> Counter[str]:
        """Accepted SUCCEEDED finishes per task_key."""
        return Counter(
            e["data"]["task_key"] for e in self.accepted("TaskFinished") if e["data"]["outcome"] == "SUCCEEDED"
        )

    def task(self, task_key: str) -> dict[str, Any]:
        return next(t for t in self.tables["tasks"] if t["task_key"] == task_key)

    def assert_one_outbox_row_per_dispatch(self) -> None:
        """INV-3: one accepted DispatchRequested per dispatch_id, and its outbox row."""
        requested = Counter(e["data"]["dispatch_id"] for e in self.accepted("DispatchRequested"))
        assert requested and set(requested.values()) == {1}, requested
        rows = Counter(r["dispatch_id"] for r in self.tables["dispatch_outbox"])
        assert rows == requested


def queue_task_names(home: Home, prefix: str = "d_") -> Counter[str]:
    """Names of every task the embedded queue file holds or remembers (pending or ended)."""
    with sqlite3.connect(home.queue_path) as db:
        names = [row[0] for row in db.execute("SELECT name FROM tasks")]
    return Counter(n for n in names if n.startswith(prefix))


def fan_in(name: str, *, roots: int = 3, sleep: float = 0.05, **policy: Any) -> Pipeline:
    """`roots` independent tasks r0..rN feeding one `join` (one dispatch batch of `roots`)."""
    pipeline = Pipeline(name)
    deps = []
    for index in range(roots):

        def root(ctx: TaskContext) -> None:
            time.sleep(sleep)

        deps.append(pipeline.task(root, name=f"r{index}", retry=FAST_RETRY, **policy))

    def join(ctx: TaskContext) -> None:
        time.sleep(sleep)

    pipeline.task(join, name="join", depends_on=deps, retry=FAST_RETRY, **policy)
    return pipeline
