"""The embedded home directory (`./.servo/` unless `--home`): all local state.

    .servo/
      store/      LocalStore: ledger, manifests, Parquet state (one tenant/workspace)
      queue.db    the embedded durable queue (SQLite)
      secret      the tenant secret (run ids from run keys, per-attempt tokens)
      engine.lock held shared by every engine driving the home (`runs cancel` asks)
      leader.lock held exclusively by the one engine that leads (folds, emits intents)
      start.lock  held exclusively by an engine starting a run, until it is published
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from servo._errors import ServoError
from servo.storage import Ledger, LocalStore, ScopedStore

__all__ = ["Home", "HomeError"]


class HomeError(ServoError):
    """The home directory is unusable (not a directory, unreadable secret...)."""


@dataclass(frozen=True)
class Home:
    """Paths and handles of one embedded installation."""

    root: Path
    tenant: str = "local"
    workspace: str = "default"

    @classmethod
    def open(cls, root: Path | str = ".servo", *, create: bool = True) -> Home:
        """Open (and by default create) a home directory; with `create=False` only an
        existing home (one holding a `store/`), never some other directory."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise HomeError(f"{path} exists and is not a directory")
        if not create and not cls.holds_store(path):  # missing, or some other directory: read nothing, write nothing
            raise HomeError(f"{path}: no Servo home here (run `servo run` first, or pass --home)")
        if not path.exists():
            try:
                path.mkdir(parents=True, exist_ok=True)  # another process may make it first
            except OSError as exc:
                raise HomeError(f"cannot create a Servo home at {path}: {exc.strerror or exc}") from None
        home = cls(path.resolve())
        if create:
            home.store  # noqa: B018 - makes `store/`: what marks the directory as a home
        return home

    @staticmethod
    def holds_store(root: Path | str) -> bool:
        """Whether `root` looks like a home (it has a `store/`), without creating one."""
        return (Path(root) / "store").is_dir()

    def ledger_events(self, on_stray: Callable[[str], None]) -> Iterator[bytes]:
        """Every event of this home's ledger, one envelope each, in event_id order.

        It lists the ledger (allowed: this is an export, not the correctness path, P6).
        An object there that is not an event file (`{day}/{event_id}.json`) is skipped
        and named to `on_stray`.
        """
        ledger = Ledger(self.store)
        listed = ledger.list_event_ids()
        for name in listed.strays:
            on_stray(name)
        for event_id in sorted(listed.event_ids):
            yield ledger.read(event_id)

    @property
    def store(self) -> ScopedStore:
        """The scoped object store of this home."""
        return ScopedStore(LocalStore(self.root / "store"), self.tenant, self.workspace)

    @property
    def queue_path(self) -> Path:
        """The SQLite file of the embedded queue."""
        return self.root / "queue.db"

    @property
    def secret(self) -> bytes:
        """The tenant secret, created once with mode 0600.

        Two processes opening a fresh home at once (`servo serve` and `servo run`) both
        get the one secret: each writes a whole candidate to a temp file and links it
        into place (create-only), so the loser reads the winner's, never a partial file.
        """
        path = self.root / "secret"
        if not path.exists():
            tmp = self.root / f".secret.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            finally:
                tmp.unlink()
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise HomeError(f"{path}: secret is too short; delete it to make a new one")
        return data

    @contextlib.contextmanager
    def driving(self) -> Iterator[None]:
        """Held (shared: replicas may drive together) while an engine drives this home."""
        fd = os.open(self.root / "engine.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # also releases the lock; a killed engine's goes with its process

    @contextlib.contextmanager
    def starting(self, wait: Callable[[float], None] = time.sleep) -> Iterator[None]:
        """Held exclusively by an engine deciding whether to start or resume a run, until
        a run it starts is published: two `servo run` of one pipeline started at once
        then make one run (the second finds the first's and resumes it), not two.
        While another holds it, `wait(seconds)` is called between tries (it may raise,
        to stop waiting)."""
        fd = os.open(self.root / "start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    wait(0.02)
            yield
        finally:
            os.close(fd)  # also releases the lock; a killed engine's goes with its process

    def try_lead(self) -> int | None:
        """An exclusive flock on `leader.lock` if no other engine holds it: the open fd
        (close it to let go; the OS lets go when the process dies), else None."""
        fd = os.open(self.root / "leader.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def unless_driven(self) -> Iterator[bool]:
        """True (and no engine can start until the block ends) if no engine is driving
        this home; False if one is, which then folds what is appended (notify spool)."""
        fd = os.open(self.root / "engine.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)
