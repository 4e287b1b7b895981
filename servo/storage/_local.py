"""The embedded default ``ObjectStore``: a directory tree on a local POSIX filesystem.

Layout under ``root``::

    objects/<name>      one file per object. A create-only object is its bytes and
                        nothing else (a ledger file is exactly one JSON envelope, a
                        state file is Parquet); its generation is the file's mtime in
                        microseconds. An object written by compare-and-swap (the
                        manifest pointer, the compactor epoch), or whose bytes begin
                        like a header, is a 36-byte header holding its generation,
                        then its bytes (ADR 018)
    tmp/                files being written (same filesystem, so link/rename work)
    locks/<sha256>.lock one flock file per object that was ever compare-and-swapped

Why it is safe:

* Create-only: the bytes are written and fsynced to a temp file, then
  ``os.link``-ed to the final name. ``link`` fails if the name exists, is
  atomic, and never exposes a partial file. The directory is then fsynced.
* Compare-and-swap: under an exclusive ``fcntl.flock`` on the object's lock
  file — which excludes other threads *and* other processes, e.g. two racing
  compactors — read the current generation, write a temp file and
  ``os.replace`` it over the object. Generation and bytes live in one inode
  (the header, or the mtime of a file that was never replaced), so one rename
  publishes both.
* Readers take no lock: they open one inode, which a writer never modifies.

Limits: POSIX only (``fcntl``). A name cannot be both an object and a
"directory" of other objects (``a`` and ``a/b``); that raises ``StorageError``.
On a case-insensitive filesystem (macOS default) names differing only in case
collide; keep ids lower-case there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from servo._errors import CasConflict, ObjectExists, ObjectNotFound, StorageError
from servo.storage._protocol import StoredObject, batch_conflict, cas_conflict
from servo.storage._scope import validate_object_name, validate_prefix

__all__ = ["LocalStore"]

_MAGIC: Final = b"servo-object/1 "
_HEADER_LENGTH: Final = len(_MAGIC) + 20 + 1
_STALE_TMP_SECONDS: Final = 3600.0


def _header(generation: int) -> bytes:
    return _MAGIC + b"%020d\n" % generation


def _mtime_generation(fd: int) -> int:
    """The generation of a plain (headerless) object file: its mtime in microseconds."""
    return max(1, os.fstat(fd).st_mtime_ns // 1000)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FSYNC_POOL: tuple[int, ThreadPoolExecutor] | None = None
_FSYNC_POOL_LOCK = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """One pool of fsync threads per process (made again in a forked child)."""
    global _FSYNC_POOL
    with _FSYNC_POOL_LOCK:
        if _FSYNC_POOL is None or _FSYNC_POOL[0] != os.getpid():
            _FSYNC_POOL = (os.getpid(), ThreadPoolExecutor(max_workers=16, thread_name_prefix="servo-fsync"))
        return _FSYNC_POOL[1]


def _fsync_files(paths: Sequence[Path]) -> None:
    """fsync files, two or more concurrently on a standing pool, so the filesystem
    batches them into fewer journal commits (serially, each new file's fsync commits
    the journal again)."""
    if len(paths) == 1:
        _sync(paths[0])
        return
    list(_fsync_pool().map(_sync, paths))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _storage_errors(name: str) -> Iterator[None]:
    """Turn an unexpected ``OSError`` into a ``StorageError`` naming the object."""
    try:
        yield
    except OSError as error:
        raise StorageError(f"local store failed on {name!r}: {error}") from error


class LocalStore:
    """Objects as files under ``root``; safe across threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root: Final = Path(root)
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        with _storage_errors(str(self.root)):
            if not self._objects.is_dir():
                for directory in (self._objects, self._tmp, self._locks):
                    directory.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.root)  # so objects/ itself survives a crash
            self._tmp.mkdir(exist_ok=True)
            self._locks.mkdir(exist_ok=True)
            self._sweep_tmp()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- reading ------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self._objects / validate_object_name(name)

    def _read(self, name: str, *, header_only: bool) -> StoredObject | None:
        path = self._path(name)
        with _storage_errors(name):
            try:
                with open(path, "rb") as file:
                    raw = file.read(_HEADER_LENGTH if header_only else -1)
                    if not raw.startswith(_MAGIC):  # a plain file: its bytes, mtime generation
                        return StoredObject(b"" if header_only else raw, _mtime_generation(file.fileno()))
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        digits = raw[len(_MAGIC) : _HEADER_LENGTH - 1]
        if not (
            raw.startswith(_MAGIC)
            and digits.isdigit()
            and raw[_HEADER_LENGTH - 1 :].startswith(b"\n")
        ):
            raise StorageError(f"local object {name!r} has a corrupt header ({path})")
        return StoredObject(raw[_HEADER_LENGTH:], int(digits))

    def get(self, name: str) -> StoredObject:
        """See ``ObjectStore.get``."""
        found = self._read(name, header_only=False)
        if found is None:
            raise ObjectNotFound(f"object {name!r} does not exist")
        return found

    def head(self, name: str) -> int | None:
        """See ``ObjectStore.head``."""
        found = self._read(name, header_only=True)
        return None if found is None else found.generation

    def list_prefix(self, prefix: str) -> list[str]:
        """See ``ObjectStore.list_prefix``. Repair / anti-entropy only (P6)."""
        validate_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        names: list[str] = []
        with _storage_errors(prefix):
            for dirpath, _dirnames, filenames in os.walk(self._objects / directory):
                relative = Path(dirpath).relative_to(self._objects).as_posix()
                base = "" if relative == "." else relative + "/"
                names.extend(base + f for f in filenames if (base + f).startswith(prefix))
        return sorted(names)

    def delete(self, name: str) -> bool:
        """See ``ObjectStore.delete``: unlink the file (under the object's lock, so a
        compare-and-swap of the same name is not interleaved). Not fsynced: an object
        a crash brings back is garbage again and is collected again."""
        path = self._path(name)
        with self._locked(name), _storage_errors(name):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return False
        return True

    # -- writing ------------------------------------------------------------

    def _write_tmp(self, data: bytes, generation: int | None = None, *, sync: bool = True) -> tuple[int, Path]:
        """Write the object to a fresh temp file and (unless told not to) fsync it;
        return its generation and path. With `generation` (compare-and-swap), or when
        the bytes begin like a header, the file is header + bytes; otherwise it is the
        bytes alone and the generation is its mtime."""
        path = self._tmp / f"{uuid.uuid4().hex}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if generation is None and data.startswith(_MAGIC):
                generation = time.time_ns() // 1000
            with os.fdopen(fd, "wb", closefd=False) as file:
                if generation is not None:
                    file.write(_header(generation))
                file.write(data)
            if sync:
                os.fsync(fd)
            if generation is None:
                generation = _mtime_generation(fd)
        finally:
            os.close(fd)
        return generation, path

    def _make_parents(self, path: Path) -> set[Path]:
        """Create missing parent directories; return the directories whose entries changed."""
        missing: list[Path] = []
        directory = path.parent
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it
                directory.mkdir()
        return {d.parent for d in missing}

    def _create(
        self, name: str, data: bytes, written: tuple[int, Path] | None = None
    ) -> tuple[int, set[Path]]:
        """Create-only write without the final directory fsync; return generation and dirs to sync.

        `written` is a temp file already written and fsynced (group commit).
        """
        path = self._path(name)
        with _storage_errors(name):
            if written is None:
                generation, tmp = self._write_tmp(data)
            else:
                generation, tmp = written
            try:
                dirty = self._make_parents(path)
                os.link(tmp, path)
            except FileExistsError:
                if path.is_dir():
                    raise StorageError(
                        f"object {name!r} clashes with objects named {name + '/'!r}..."
                    ) from None
                raise ObjectExists(f"object {name!r} already exists") from None
            except NotADirectoryError:
                raise StorageError(
                    f"object {name!r} clashes with an object named like one of its parents"
                ) from None
            finally:
                tmp.unlink()
        return generation, dirty | {path.parent}

    def put_if_absent(self, name: str, data: bytes) -> int:
        """See ``ObjectStore.put_if_absent``."""
        generation, dirty = self._create(name, data)
        with _storage_errors(name):
            for directory in dirty:
                _fsync_dir(directory)
        return generation

    def put_if_generation_match(self, name: str, data: bytes, generation: int) -> int:
        """See ``ObjectStore.put_if_generation_match``."""
        if generation == 0:
            try:
                return self.put_if_absent(name, data)
            except ObjectExists:
                raise CasConflict(
                    f"object {name!r} exists; generation 0 requires it not to"
                ) from None
        path = self._path(name)
        with self._locked(name):
            current = self.head(name) or 0
            if current != generation:
                raise cas_conflict(name, current, generation)
            new_generation = max(current + 1, time.time_ns() // 1000)
            with _storage_errors(name):
                _, tmp = self._write_tmp(data, new_generation)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink()
                    raise
                _fsync_dir(path.parent)
        return new_generation

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """See ``ObjectStore.put_many_if_absent``.

        Group commit: every temp file is written first, then all are fsynced at
        once from a thread pool (ext4 folds concurrent fsyncs into shared journal
        commits), then each is linked to its name, and each touched directory is
        fsynced once, instead of once per object.
        """
        for name, _ in items:
            validate_object_name(name)
        created: list[bool] = []
        conflicting: list[str] = []
        dirty: set[Path] = set()
        with _storage_errors(self.root.as_posix()):
            temps = [self._write_tmp(data, sync=False) for _, data in items]
            _fsync_files([tmp for _, tmp in temps])
        for (name, data), written in zip(items, temps, strict=True):
            try:
                _, touched = self._create(name, data, written)
            except ObjectExists:
                if self.get(name).data != data:
                    conflicting.append(name)
                # It may be another writer's object whose directory is not synced yet.
                dirty.add(self._path(name).parent)
                created.append(False)
            else:
                dirty |= touched
                created.append(True)
        with _storage_errors(self.root.as_posix()):
            for directory in sorted(dirty):
                _fsync_dir(directory)
        if conflicting:
            raise batch_conflict(created, conflicting)
        return created

    # -- housekeeping ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold an exclusive flock for ``name`` (excludes other threads and processes)."""
        digest = hashlib.sha256(name.encode("ascii")).hexdigest()
        with _storage_errors(name):
            fd = os.open(
                self._locks / f"{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _sweep_tmp(self) -> None:
        """Remove temp files a crashed writer left behind (older than an hour)."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
