"""Deterministic event construction for controllers (INV-3).

An emitted event's id is `ULID(now, first 10 bytes of sha256(idempotency_key))`: the
same view and the same `now` give byte-identical events, and two replicas that emit
the same intent at different instants give two ids with one idempotency key, which
the fold deduplicates (the lowest event_id wins, the other is a DUPLICATE).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servo.core.events import Catalog, Event
from servo.core.ids import new_ulid

__all__ = ["ControllerConfig", "Emitter", "deterministic_ulid"]


def deterministic_ulid(now: datetime, seed: str) -> str:
    """`ULID(now, sha256(seed)[:10])`: a ULID that is a pure function of its inputs."""
    return new_ulid(now, hashlib.sha256(seed.encode("utf-8")).digest()[:10])


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """What controllers need besides the view: the catalog and the timing policy.

    `lag_recheck_sec`: how much later a timer is rescheduled when the projection
    watermark has not reached its fire_at (INV-9). `repair_grace_sec`: how long past
    fire_at a SCHEDULED timer must be before anti-entropy handles it itself (its
    queue task is presumed lost). `max_in_flight`: at most this many attempts of one
    run dispatched or running at once (None: no limit); the embedded engine sets it
    from its worker count so queued attempts do not outlive their heartbeat timeout
    before a worker can start them.
    """

    catalog: Catalog
    source: str = "controller"
    default_worker_queue: str = "default"
    retry_base_sec: float = 1.0
    retry_factor: float = 2.0
    retry_cap_sec: float = 300.0
    lag_recheck_sec: int = 1
    repair_grace_sec: int = 60
    max_in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class Emitter:
    """Builds validated catalog events for one tenant/workspace at one instant."""

    config: ControllerConfig
    tenant: str
    workspace: str
    now: datetime
    source: str

    def emit(self, event_type: str, data: Mapping[str, Any]) -> Event:
        """The event with its catalog idempotency key and a deterministic id."""
        catalog = self.config.catalog
        clean = {k: v for k, v in data.items() if v is not None}
        key = catalog.idempotency_key(event_type, clean)
        return catalog.make(
            event_type,
            clean,
            event_id=deterministic_ulid(self.now, key),
            tenant_id=self.tenant,
            workspace_id=self.workspace,
            occurred_at=self.now,
            source=self.source,
        )


def dedupe(events: list[Event]) -> list[Event]:
    """Keep the first event per idempotency key (one pass may find an intent twice)."""
    seen: set[str] = set()
    out: list[Event] = []
    for event in events:
        if event.idempotency_key not in seen:
            seen.add(event.idempotency_key)
            out.append(event)
    return out
