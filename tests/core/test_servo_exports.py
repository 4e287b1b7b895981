"""`servo` itself exports the error tree and nothing else (STYLE: a small public face)."""

from __future__ import annotations

import servo

EXPECTED = {
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
}


def test_servo_exports_exactly_its_errors_and_each_is_a_servo_error() -> None:
    assert set(servo.__all__) == EXPECTED
    for name in EXPECTED:
        assert issubclass(getattr(servo, name), servo.ServoError), name
