"""Servo's exceptions: one root, named for what the user did or what failed.

    ServoError
    ├── SpecError            a spec table is malformed (names file and key)
    ├── InvalidEvent         an event envelope or payload does not match the catalog
    ├── InvalidId            an identifier could escape its scope or is malformed
    ├── StorageError         the object store failed
    │   ├── ObjectExists     create-only write of a name that exists
    │   ├── ObjectNotFound   read of a missing object
    │   └── CasConflict      compare-and-swap lost (generation moved on)
    ├── FencedOut            a deposed compactor tried to publish
    ├── RunKeyConflict       a run key already names a run of another pipeline
    └── StaleAttempt         a worker spoke for an attempt that is not current
"""

from __future__ import annotations

__all__ = [
    "CasConflict",
    "FencedOut",
    "InvalidEvent",
    "InvalidId",
    "ObjectExists",
    "ObjectNotFound",
    "RunKeyConflict",
    "ServoError",
    "SpecError",
    "StaleAttempt",
    "StorageError",
]


class ServoError(Exception):
    """Root of every error Servo raises on purpose."""


class SpecError(ServoError):
    """A spec table is malformed; the message is one line naming file and key."""


class InvalidEvent(ServoError):
    """An event does not match the envelope or its catalog entry."""

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


class InvalidId(ServoError, ValueError):
    """An identifier is malformed or could escape its storage scope."""


class StorageError(ServoError):
    """The object store failed."""


class ObjectExists(StorageError):
    """A create-only write found the name taken."""


class ObjectNotFound(StorageError):
    """A read named an object that does not exist."""


class CasConflict(StorageError):
    """A compare-and-swap write lost: the object's generation moved on."""


class CorruptState(StorageError):
    """A published state object (Parquet, key list) cannot be decoded. Derived state,
    not the record: the compactor rebuilds it from the ledger."""


class FencedOut(ServoError):
    """A compactor with an older fencing epoch tried to publish."""


class RunKeyConflict(ServoError):
    """A run key asked for by one pipeline already names a run of another (a run key
    names one run per workspace: its run id is derived from the key alone)."""


class StaleAttempt(ServoError):
    """A worker callback named an attempt that is not the task's current one."""
