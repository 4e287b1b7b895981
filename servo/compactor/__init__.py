"""The compactor (the only Parquet writer), manifests, and the projection reader."""

from __future__ import annotations

from servo.compactor._compactor import EPOCH_OBJECT, GC_GRACE_SEC, Compactor
from servo.compactor._manifest import (
    POINTER,
    Manifest,
    ManifestReader,
    ManifestStore,
    manifest_name,
)
from servo.compactor._reader import ProjectionReader, Snapshot, StateView, StateViewDenied

__all__ = [
    "EPOCH_OBJECT",
    "GC_GRACE_SEC",
    "POINTER",
    "Compactor",
    "Manifest",
    "ManifestReader",
    "ManifestStore",
    "ProjectionReader",
    "Snapshot",
    "StateView",
    "StateViewDenied",
    "manifest_name",
]
