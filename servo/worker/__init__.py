"""The worker contract: deliveries, per-attempt tokens, validated callbacks."""

from __future__ import annotations

from servo.worker._contract import (
    CallbackRejected,
    CallbackService,
    Delivery,
    ForgedCallback,
    StaleAttemptRejected,
    attempt_token,
)

__all__ = [
    "CallbackRejected",
    "CallbackService",
    "Delivery",
    "ForgedCallback",
    "StaleAttemptRejected",
    "attempt_token",
]
