"""Servo: data-task orchestration whose state machines are declared as data."""

from __future__ import annotations

from servo._errors import (
    CasConflict,
    FencedOut,
    InvalidEvent,
    InvalidId,
    ObjectExists,
    ObjectNotFound,
    RunKeyConflict,
    ServoError,
    SpecError,
    StaleAttempt,
    StorageError,
)

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

__version__ = "0.1.0"
