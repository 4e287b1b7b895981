"""The public face of ``servo.worker`` is exactly what ``__all__`` promises."""

from __future__ import annotations

import servo.worker

EXPECTED = {
    "DISPATCH",
    "CallbackRejected",
    "CallbackService",
    "Delivery",
    "FactClock",
    "ForgedCallback",
    "HttpWorker",
    "ServerUnreachable",
    "StaleAttemptRejected",
    "attempt_token",
    "describe_error",
    "dispatch_target",
    "error_text",
    "progress_percent",
}


def test_worker_exports_exactly_the_public_names() -> None:
    assert set(servo.worker.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(servo.worker, name) is not None


def test_dispatch_targets_name_the_pipeline() -> None:
    assert servo.worker.dispatch_target("nightly") == "dispatch/nightly"
    assert servo.worker.dispatch_target(None) == servo.worker.DISPATCH == "dispatch"


def test_fact_clock_puts_each_fact_of_an_attempt_in_a_later_millisecond() -> None:
    from datetime import UTC, datetime, timedelta

    from servo.worker import FactClock

    frozen = datetime(2026, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC)
    clock = FactClock(lambda: frozen)
    started = clock.at("a1")
    beat = clock.at("a1")
    finished = clock.at("a1", last=True)
    assert started == frozen
    assert beat == datetime(2026, 1, 1, 0, 0, 0, 124_000, tzinfo=UTC)
    assert finished == beat + timedelta(milliseconds=1)
    assert clock.at("a2") == frozen  # attempts are independent
    assert clock.at("a1") == frozen  # a finished attempt is forgotten
