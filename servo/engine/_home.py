"""The embedded home directory (`./.servo/` unless `--home`): all local state.

    .servo/
      store/      LocalStore: ledger, manifests, Parquet state (one tenant/workspace)
      queue.db    the embedded durable queue (SQLite)
      secret      the tenant secret (run ids from run keys, per-attempt tokens)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from servo._errors import ServoError
from servo.storage import LocalStore, ScopedStore

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
        """Open (and by default create) a home directory."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise HomeError(f"{path} exists and is not a directory")
        if not path.exists():
            if not create:
                raise HomeError(f"{path}: no Servo home here (run `servo run` first, or pass --home)")
            path.mkdir(parents=True)
        return cls(path.resolve())

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
        """The tenant secret, created once with mode 0600."""
        path = self.root / "secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
            finally:
                os.close(fd)
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise HomeError(f"{path}: secret is too short; delete it to make a new one")
        return data
