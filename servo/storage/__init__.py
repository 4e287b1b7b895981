"""Servo's durable object-store layer: the ``ObjectStore`` seam, its backends,
tenant/workspace scoping and the append-only ledger.

    ObjectStore (protocol)          get / put_if_absent / put_if_generation_match /
                                    head / list_prefix / put_many_if_absent
    ├── MemoryStore                 in-process, thread-safe (tests, users)
    ├── LocalStore                  files on disk; the embedded default
    ├── GcsStore                    Google Cloud Storage (needs ``servo[gcp]``)
    └── ScopedStore                 a view confined to tenants/{t}/workspaces/{w}/
    Ledger(ScopedStore)             one create-only object per event

``GcsStore`` and ``RetryPolicy`` are imported on first use, so the package
works without the Google client libraries installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servo.storage._ledger import (
    LEDGER_PREFIX,
    EventConflict,
    Ledger,
    ListedEvents,
    ledger_object_name,
)
from servo.storage._local import LocalStore
from servo.storage._memory import MemoryStore
from servo.storage._protocol import BatchConflict, ObjectStore, StoredObject, put_each_if_absent
from servo.storage._scope import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    IdKind,
    ScopedStore,
    validate_id,
    validate_object_name,
    validate_prefix,
)

if TYPE_CHECKING:
    from servo.storage._gcs import GcsStore, RetryPolicy

__all__ = [
    "LEDGER_PREFIX",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "BatchConflict",
    "EventConflict",
    "GcsStore",
    "IdKind",
    "Ledger",
    "ListedEvents",
    "LocalStore",
    "MemoryStore",
    "ObjectStore",
    "RetryPolicy",
    "ScopedStore",
    "StoredObject",
    "ledger_object_name",
    "put_each_if_absent",
    "validate_id",
    "validate_object_name",
    "validate_prefix",
]

_LAZY = frozenset({"GcsStore", "RetryPolicy"})


def __getattr__(name: str) -> Any:
    """Import the GCS backend only when it is asked for (it needs ``servo[gcp]``)."""
    if name in _LAZY:
        from servo.storage import _gcs

        return getattr(_gcs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
