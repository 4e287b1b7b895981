"""Exhaustive bounded exploration of Servo's Layer 1 (issue #5, ADR 006).

    python -m model_checks --profile ci     # every ci configuration, exit 1 on a violation
    python -m model_checks --mutants        # every mutant must be caught
    python -m model_checks --crosshair      # CrossHair contracts of the pure functions

The explorer drives the runtime's own fold (`servo.core.fold`, from the spec tables)
and controllers (`servo.core.controllers`) through an environment with crashes,
compaction lag, duplicate and early deliveries, stale callbacks and cancels.
"""

from __future__ import annotations

from model_checks._config import PROFILES, McConfig, chain, diamond, fan_out, profile
from model_checks._explore import Result, explore

__all__ = ["PROFILES", "McConfig", "Result", "chain", "diamond", "explore", "fan_out", "profile"]
