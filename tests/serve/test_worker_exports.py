"""The public face of ``servo.worker`` is exactly what ``__all__`` promises."""

from __future__ import annotations

import servo.worker

EXPECTED = {
    "DISPATCH",
    "CallbackRejected",
    "CallbackService",
    "Delivery",
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
