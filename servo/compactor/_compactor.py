"""The compactor: the only Parquet writer (P2).

One micro-compaction folds the newly appended events into the in-memory projection
(O(new events), ADR 004), writes the rows that changed as L0 delta files, and
publishes the next manifest by create-only sequence number with its fencing epoch
(P4). Every `merge_every` deltas it writes a full base instead. A restarted
compactor takes a new epoch, rebuilds its projection from the events the manifest
names (by object name, no listing), and publishes a fence manifest, after which no
older compactor can publish.

Garbage collection (ADR 015): a base makes every older state file and manifest
unreachable from the newest manifest. Once a base has been published for
`gc_grace_sec` (so a reader that fetched an older manifest has had that long to read
its files), the compactor deletes the files and manifests numbered below it, found
through those manifests (no listing); `collect_orphans`, run with the full
anti-entropy sweep, lists `state/` for files no manifest ever named (a compaction
that died before publishing). The ledger is never touched (P1).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

from servo._errors import (
    CasConflict,
    CorruptState,
    FencedOut,
    InvalidId,
    ObjectExists,
    ObjectNotFound,
    ServoError,
)
from servo.compactor._manifest import Manifest, ManifestStore, manifest_name
from servo.core._registry import Registry
from servo.core.events import format_timestamp
from servo.core.fold import LAYER1_TABLES, Projection
from servo.core.ids import is_ulid, ulid_timestamp
from servo.obs import COMPACTION_SECONDS, count_rejected, record_error, timed
from servo.spec import Spec
from servo.storage import Ledger, ScopedStore
from servo.tables._parquet import parquet_bytes

__all__ = ["EPOCH_OBJECT", "Compactor"]

EPOCH_OBJECT = "compactor/epoch"
CrashHook = Callable[[str], None]
GC_GRACE_SEC = 60.0
GC_MANIFESTS_PER_ROUND = 64  # manifests one collection round reads (about one base's worth)
_LOG = logging.getLogger("servo.compactor")


def _state_seq(name: str) -> int | None:
    """The manifest seq a state object was written for: `state/l0/{seq}.e{epoch}...`
    or `state/base/{seq}.e{epoch}/...`; None for anything else."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "state" or not parts[2][:12].isdigit():
        return None
    return int(parts[2][:12])


def _manifest_seq(name: str) -> int | None:
    """The seq of `manifests/{seq:012d}.json`; None for the pointer or anything else."""
    stem = name.removeprefix("manifests/").removesuffix(".json")
    return int(stem) if len(stem) == 12 and stem.isdigit() else None


def _event_ids(name: str, data: bytes) -> list[str]:
    """A state key list (`_events.json`), or CorruptState naming it."""
    try:
        ids = json.loads(data)
    except ValueError:
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CorruptState(f"published state {name!r} is unreadable (not a list of event ids)")
    return ids


def _no_crash(point: str) -> None:
    return None


class Compactor:
    """Folds ledger events into Parquet projections for one tenant/workspace."""

    def __init__(
        self,
        store: ScopedStore,
        spec: Spec,
        registry: Registry,
        *,
        merge_every: int = 32,
        pointer_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        crash: CrashHook = _no_crash,
        idle_publish_sec: float = 1.0,
        gc_grace_sec: float | None = GC_GRACE_SEC,
    ) -> None:
        """`gc_grace_sec`: how long a base must have been published before what it
        supersedes is deleted; None keeps everything."""
        self.store = store
        self.spec = spec
        self.registry = registry
        self.ledger = Ledger(store)
        self.manifests = ManifestStore(store)
        self.projection = Projection(spec, registry, keep_history=True)
        self.merge_every = merge_every
        self.pointer_interval = pointer_interval
        self.clock = clock
        self.crash = crash
        self.epoch = 0
        self.manifest: Manifest | None = None
        self._pending: dict[str, None] = {}
        self._bodies: dict[str, bytes] = {}  # pending events' bytes, when the appender had them
        self._folded: set[str] = set()
        self._pointer_moved_at = float("-inf")
        self._watermark: datetime | None = None
        self.idle_publish_sec = idle_publish_sec
        self.caught_up_at: datetime | None = None
        """When this compactor last had every notified event folded and published
        (in-process knowledge, fresher than the published watermark when idle)."""
        self.gc_grace_sec = gc_grace_sec
        self.gc_floor = 0
        """Every state file and manifest numbered below this has been collected."""
        self._bases: list[tuple[int, datetime]] = []  # (seq, published at) of recent bases
        self._strays: set[str] = set()  # ledger objects that are not events, reported once each

    # ------------------------------------------------------------ lifecycle --

    def start(self) -> Manifest:
        """Take a new fencing epoch, rebuild from the latest manifest, publish a fence.

        Derived state is not the record: if the latest manifest, or a key list it names,
        is unreadable or gone (a disk fault, a hand edit), the projection is folded again
        from the whole ledger (a listing: repair, P6) and the fence is a new base.
        """
        self.epoch = self._acquire_epoch()
        latest, damaged = self._rebuild_latest()
        while True:
            seq = (latest.seq if latest else damaged) + 1
            if damaged:
                fence = self._write_base(seq, [])
            else:
                fence = Manifest(
                    seq=seq,
                    epoch=self.epoch,
                    watermark=latest.watermark if latest else None,
                    last_event_id=latest.last_event_id if latest else "",
                    base=dict(latest.base) if latest else {},
                    deltas=latest.deltas if latest else (),
                )
            if self.manifests.publish(fence):
                self.manifest = fence
                self._move_pointer(force=True)
                self._note_base(fence, datetime.now(UTC))  # its age counts from now
                return fence
            newest = self._latest_epoch()
            if newest > self.epoch:
                raise FencedOut(f"compactor epoch {self.epoch} was deposed by epoch {newest}")
            latest, damaged = self._rebuild_latest()

    def _rebuild_latest(self) -> tuple[Manifest | None, int]:
        """Rebuild from the latest manifest: (it, 0); (None, 0) before any. If the
        running leader collected its files meanwhile (a rebuild slower than the GC
        grace), from the next latest. If it or a key list it names cannot be read,
        from the ledger: (None, its seq)."""
        for _ in range(5):
            seq = self.manifests.latest_seq()
            if seq == 0:
                return None, 0
            try:
                latest = self.manifests.get(seq)
                self._rebuild(latest)
            except ObjectNotFound as exc:
                if self.manifests.latest_seq() != seq:
                    continue  # collected under this rebuild: a newer manifest supersedes it
                problem: ServoError = exc
            except CorruptState as exc:
                problem = exc
            else:
                return latest, 0
            _LOG.warning("%s; folding the whole ledger again to rebuild the published state", problem)
            record_error("compactor", problem)
            self._rebuild_from_ledger()
            return None, seq
        raise FencedOut("the manifests keep moving under this compactor's rebuild; another compactor is active")

    def _latest_epoch(self) -> int:
        """The epoch of the newest readable manifest (0: none): a floor for a new epoch
        when the epoch object is lost or unreadable."""
        seq = self.manifests.latest_seq()
        for candidate in range(seq, max(0, seq - 64), -1):
            try:
                return self.manifests.get(candidate).epoch
            except (ObjectNotFound, CorruptState):
                continue
        return 0

    def _acquire_epoch(self) -> int:
        """CAS-increment the epoch object; a lost race is retried with the new value.
        A missing or unreadable epoch object is replaced by one past every epoch a
        recent manifest names."""
        while True:
            try:
                current = self.store.get(EPOCH_OBJECT)
                generation = current.generation
                epoch = int(current.data) + 1
            except ObjectNotFound:
                epoch, generation = self._latest_epoch() + 1, 0
            except ValueError:
                _LOG.warning("the compactor epoch object is unreadable; replacing it with the next epoch")
                epoch = self._latest_epoch() + 1
            try:
                self.store.put_if_generation_match(EPOCH_OBJECT, str(epoch).encode(), generation)
                return epoch
            except (CasConflict, ObjectExists):
                continue  # another compactor started at the same moment: read again

    def _rebuild(self, manifest: Manifest) -> None:
        """Fold again every event the manifest's base and deltas name (no listing)."""
        self.projection = Projection(self.spec, self.registry, keep_history=True)
        ids: list[str] = []
        for files in (manifest.base, *manifest.deltas):
            name = files.get("_events")
            if name:
                ids.extend(_event_ids(name, self.store.get(name).data))
        self._fold_afresh(ids)
        unseen = set(ids) - self.projection.folded_event_ids()
        if unseen:  # the published state was folded from events the ledger no longer has intact
            raise CorruptState(
                f"{len(unseen)} ledger event(s) the published state was folded from are gone or unreadable now "
                f"(e.g. {min(unseen)}); it no longer matches the ledger"
            )

    def has_tasks(self, run_id: str) -> bool:
        """Whether this compactor's fold of the ledger has any task of `run_id` (what
        it publishes next; published Parquet can still show rows folded from an event
        that has since become unreadable, until the next base)."""
        return bool(self.projection.rows("tasks", [run_id]))

    def _rebuild_from_ledger(self) -> None:
        """Fold every event of the ledger again (a listing: repair only, P6)."""
        self._fold_afresh(self._listed())

    def _fold_afresh(self, ids: list[str]) -> None:
        """A new projection of exactly these events (those the ledger has), as folded."""
        self.projection = Projection(self.spec, self.registry, keep_history=True)
        self._folded = set(self._fold_ids(ids))
        self.projection.take_changes()

    # ------------------------------------------------------------- ingest --

    def notify(self, event_ids: Iterable[str]) -> None:
        """In-process trigger: the appender tells us which events are new."""
        for event_id in event_ids:
            if event_id not in self._folded:
                self._pending[event_id] = None

    def remember(self, items: Iterable[tuple[str, bytes]]) -> None:
        """In-process appenders hand over the bytes they made durable, so folding them
        need not read each event back from the ledger. Only for pending ids (anything
        else is folded already, or was never notified), and only after the append
        succeeded: then these are the ledger's bytes."""
        for event_id, body in items:
            if event_id in self._pending:
                self._bodies[event_id] = body

    def repair(self, days: Iterable[date] | None = None) -> int:
        """Fallback sweep (anti-entropy only, P6): list the ledger, queue what is unfolded.

        `days`: list only these days' folders of the ledger (events are filed by the
        UTC day of their id), e.g. the last few, so a frequent sweep does not cost
        O(ledger); None lists everything.
        """
        before = len(self._pending)
        prefixes = [""] if days is None else [f"{day.isoformat()}/" for day in sorted(set(days))]
        for prefix in prefixes:
            for event_id in self._listed(prefix):
                if event_id not in self._folded:
                    self._pending[event_id] = None
        return len(self._pending) - before

    def _listed(self, prefix: str = "") -> list[str]:
        """The event ids a listing of the ledger finds; an object there that is not an
        event is reported (once) and never folded."""
        listed = self.ledger.list_event_ids(prefix)
        for name in listed.strays:
            if name not in self._strays:
                self._strays.add(name)
                stray = InvalidId(f"ledger object {name!r} is not an event file ({{day}}/{{event_id}}.json); skipped")
                _LOG.warning("%s", stray)
                record_error("compactor", stray)
        return listed.event_ids

    def _fold_ids(self, ids: list[str]) -> list[str]:
        payloads: list[bytes] = []
        read: list[str] = []
        bodies = self._bodies
        for event_id in ids:
            body = bodies.pop(event_id, None)
            if body is None:
                try:
                    body = self.ledger.read(event_id)
                except ObjectNotFound:
                    continue  # a notification for an event whose append did not land
            payloads.append(body)
            read.append(event_id)
        self.projection.apply_lines(payloads)
        return read

    # ------------------------------------------------------------ compact --

    @timed(COMPACTION_SECONDS, "compactor")
    def compact(self, now: datetime | None = None) -> Manifest | None:
        """One micro-compaction of the pending events; None when nothing changed.

        `now` (default: the clock) is the cut: every event notified before it is folded
        by this call, so the published watermark (`last_processed_at`, INV-9) is `now`.
        With nothing new, a manifest is still published when the watermark would move
        by `idle_publish_sec`, so timers see time pass on a quiet workspace.
        """
        if self.manifest is None:
            raise RuntimeError("call start() first")
        cut = now if now is not None else datetime.now(UTC)
        ids = [i for i in self._pending if i not in self._folded]
        if not ids:
            self._pending.clear()
            self._bodies.clear()
            previous = self._watermark
            self.caught_up_at = cut
            if previous is not None and (cut - previous).total_seconds() < self.idle_publish_sec:
                return None
            self._watermark = cut
            manifest = self._next_manifest(self.manifest.seq + 1, self.manifest.base, self.manifest.deltas)
            self._publish(manifest)
            self.collect_garbage(cut)
            return manifest
        self._watermark = max(cut, self._watermark) if self._watermark else cut
        read = self._fold_ids(ids)
        changes = self.projection.take_changes()
        count_rejected(changes.get("rejected_events", ([], []))[0], read)
        seq = self.manifest.seq + 1
        if len(self.manifest.deltas) + 1 >= self.merge_every:
            manifest = self._write_base(seq, read)
        else:
            files = self._write_delta(seq, changes, read)
            self.crash("after_delta")
            manifest = self._next_manifest(seq, self.manifest.base, (*self.manifest.deltas, files))
        self.crash("before_manifest")
        self._publish(manifest)
        self.crash("after_manifest")
        self._note_base(manifest, cut)
        self.caught_up_at = cut
        self._folded.update(read)
        for event_id in ids:
            self._pending.pop(event_id, None)
            self._bodies.pop(event_id, None)
        self.collect_garbage(cut)
        return manifest

    def merge(self) -> Manifest:
        """Write the whole projection as a new base now (what compact does periodically)."""
        if self.manifest is None:
            raise RuntimeError("call start() first")
        manifest = self._write_base(self.manifest.seq + 1, [])
        self._publish(manifest)
        self._note_base(manifest, datetime.now(UTC))
        return manifest

    # ----------------------------------------------------------------- gc --

    def _note_base(self, manifest: Manifest, at: datetime) -> None:
        name = manifest.base.get("_events")
        seq = _state_seq(name) if name else None
        if seq is not None and (not self._bases or self._bases[-1][0] != seq):
            self._bases.append((seq, at))

    def _ripe_floor(self, now: datetime) -> int:
        """The newest base published at least `gc_grace_sec` before `now` (0: none)."""
        if self.gc_grace_sec is None:
            return 0
        ripe = [seq for seq, at in self._bases if (now - at).total_seconds() >= self.gc_grace_sec]
        return max(ripe, default=0)

    def collect_garbage(self, now: datetime | None = None) -> int:
        """Delete the state files and manifests a base published at least `gc_grace_sec`
        ago supersedes; how many objects were deleted. Never raises: a failed delete
        is logged and counted, and retried with the next base."""
        floor = self._ripe_floor(now if now is not None else datetime.now(UTC))
        if floor <= self.gc_floor:
            return 0
        try:
            deleted = self._collect_below(floor)
        except ServoError as error:
            record_error("compactor", error)
            _LOG.warning("garbage collection below manifest %d failed (retried later): %s", floor, error)
            return 0
        self._bases = [(seq, at) for seq, at in self._bases if seq >= floor]
        return deleted

    def _collect_below(self, floor: int) -> int:
        # Readers start probing at the pointer: move it past the floor before any
        # manifest below the floor goes (at most one extra pointer write per base).
        if self.manifests.pointer_seq() < floor:
            self._move_pointer(force=True)
        keep_manifests_from = min(floor, self.manifests.pointer_seq())
        low = self.gc_floor or self._oldest_manifest(floor)
        # A bounded round, so a long backlog (a home that never collected) is worked
        # off over several compactions instead of stalling one.
        high = min(floor, low + GC_MANIFESTS_PER_ROUND)
        deleted, gone = 0, set[str]()
        for seq in range(low, high):
            try:
                manifest = self.manifests.get(seq)
            except ObjectNotFound:
                continue
            except CorruptState:  # superseded anyway; the files it named are orphans now
                if seq < keep_manifests_from:
                    deleted += self.store.delete(manifest_name(seq))
                continue
            for files in (manifest.base, *manifest.deltas):
                for name in files.values():
                    written_for = _state_seq(name)
                    if written_for is not None and written_for < floor and name not in gone:
                        gone.add(name)
                        deleted += self.store.delete(name)
            if seq < keep_manifests_from:
                deleted += self.store.delete(manifest_name(seq))
        self.gc_floor = min(high, keep_manifests_from)
        return deleted

    def _oldest_manifest(self, floor: int) -> int:
        """The lowest manifest left below `floor` (collection deletes a prefix of the
        sequence, so presence is monotonic: a binary search by name, no listing)."""
        low, high = 1, floor
        while low < high:
            middle = (low + high) // 2
            if self.store.head(manifest_name(middle)) is None:
                low = middle + 1
            else:
                high = middle
        return low

    def collect_orphans(self, now: datetime | None = None) -> int:
        """Anti-entropy only (it lists, P6): delete every state file numbered below the
        collected floor that no manifest named (a compaction that died before it
        published), and manifests below it the pointer has passed."""
        self.collect_garbage(now)
        floor = self.gc_floor
        if floor == 0:
            return 0
        deleted = 0
        try:
            for name in self.store.list_prefix("state/"):
                written_for = _state_seq(name)
                if written_for is not None and written_for < floor:
                    deleted += self.store.delete(name)
            keep_from = min(floor, self.manifests.pointer_seq())
            for name in self.store.list_prefix("manifests/"):
                seq = _manifest_seq(name)
                if seq is not None and seq < keep_from:
                    deleted += self.store.delete(name)
        except ServoError as error:
            record_error("compactor", error)
            _LOG.warning("orphan collection failed (retried later): %s", error)
        return deleted

    def _prefix(self, kind: str, seq: int) -> str:
        return f"state/{kind}/{seq:012d}.e{self.epoch}"

    def _put(self, name: str, data: bytes) -> str:
        try:
            self.store.put_if_absent(name, data)
        except ObjectExists:
            if self.store.get(name).data != data:
                raise
        return name

    def _write_delta(
        self, seq: int, changes: dict[str, tuple[list[dict[str, Any]], list[tuple[Any, ...]]]], ids: list[str]
    ) -> dict[str, str]:
        """Write one L0 delta as a single group commit (a few fsyncs, not two per file).

        Each file is create-only and idempotent (an identical retry is no conflict),
        and all are durable before the manifest that names them is published. The
        files sit side by side in `state/l0/` (`{seq}.e{epoch}.{table}.parquet`): a
        directory per delta would cost a mkdir and a second directory fsync each.
        """
        prefix = self._prefix("l0", seq)
        files: dict[str, str] = {}
        items: list[tuple[str, bytes]] = []
        for table, (rows, deleted) in sorted(changes.items()):
            if rows:
                files[table] = f"{prefix}.{table}.parquet"
                items.append((files[table], parquet_bytes(self.spec.tables[table], rows, compression="snappy")))
            if deleted:
                body = json.dumps([list(k) for k in deleted], separators=(",", ":")).encode()
                files[f"{table}.deleted"] = f"{prefix}.{table}.deleted.json"
                items.append((files[f"{table}.deleted"], body))
        files["_events"] = f"{prefix}._events.json"
        items.append((files["_events"], json.dumps(ids).encode()))
        self.store.put_many_if_absent(items)
        return files

    def _write_base(self, seq: int, ids: list[str]) -> Manifest:
        prefix = self._prefix("base", seq)
        tables = self.projection.tables()
        files: dict[str, str] = {}
        for index, table in enumerate(LAYER1_TABLES):
            files[table] = self._put(f"{prefix}/{table}.parquet", parquet_bytes(self.spec.tables[table], tables[table]))
            if index == 2:
                self.crash("during_base_merge")
        every = sorted(self._folded.union(ids))
        files["_events"] = self._put(f"{prefix}/_events.json", json.dumps(every).encode())
        return self._next_manifest(seq, files, ())

    def _next_manifest(self, seq: int, base: dict[str, str], deltas: tuple[dict[str, str], ...]) -> Manifest:
        last = self.projection.last_event_id
        # The watermark is the last cut (every event notified before it is folded); a
        # rebuilt compactor that has cut nothing yet falls back to its last event's time.
        if self._watermark is not None:
            watermark: str | None = format_timestamp(self._watermark)
        else:
            watermark = format_timestamp(ulid_timestamp(last)) if is_ulid(last) else None
        return Manifest(seq=seq, epoch=self.epoch, watermark=watermark, last_event_id=last, base=base, deltas=deltas)

    def _publish(self, manifest: Manifest) -> None:
        if not self.manifests.publish(manifest):
            latest = self.manifests.latest()
            newer = latest.epoch if latest is not None else self.epoch
            raise FencedOut(
                f"compactor epoch {self.epoch} cannot publish manifest {manifest.seq}: "
                f"it was taken (latest epoch {newer}); a newer compactor owns this workspace"
            )
        self.manifest = manifest
        self._move_pointer()

    def _move_pointer(self, *, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._pointer_moved_at >= self.pointer_interval:
            assert self.manifest is not None
            self.manifests.move_pointer(self.manifest.seq)
            self._pointer_moved_at = now
