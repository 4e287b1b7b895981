"""The compactor (the only Parquet writer), manifests, and the projection reader."""

from __future__ import annotations

from servo.compactor._compactor import EPOCH_OBJECT, Compactor
from servo.compactor._manifest import POINTER, Manifest, ManifestStore, manifest_name
from servo.compactor._reader import ProjectionReader, Snapshot, StateView, StateViewDenied

__all__ = [
    "EPOCH_OBJECT",
    "POINTER",
    "Compactor",
    "Manifest",
    "ManifestStore",
    "ProjectionReader",
    "Snapshot",
    "StateView",
    "StateViewDenied",
    "manifest_name",
]
