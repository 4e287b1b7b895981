"""The public face of ``servo.storage`` is exactly what ``__all__`` promises."""

from __future__ import annotations

import subprocess
import sys

import servo.storage

EXPECTED = {
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
}


def test_storage_exports_exactly_the_public_names() -> None:
    assert set(servo.storage.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(servo.storage, name) is not None


def test_every_public_item_has_a_docstring() -> None:
    for name in EXPECTED - {"LEDGER_PREFIX", "MAX_ID_LENGTH", "MAX_NAME_LENGTH", "IdKind"}:
        assert getattr(servo.storage, name).__doc__, name


def test_importing_storage_does_not_import_the_google_client() -> None:
    code = "import sys, servo.storage; assert 'google.api_core' not in sys.modules"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
