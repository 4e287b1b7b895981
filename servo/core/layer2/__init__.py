"""Layer 2 rules: the pure guards, effects and locators of the automation machines.

Importing this package registers every name that `spec/machines/backfill.toml`,
`schedule_tick.toml`, `sensor_eval.toml`, `run_key.toml` and `partition_status.toml`
use in `servo.core._registry.REGISTRY`. The rules read and write an `L2Context`.
"""

from __future__ import annotations

from servo.core.layer2 import _rules
from servo.core.layer2._context import Key, L2Context, Row, Table, Tables

__all__ = ["LAYER2_MACHINES", "Key", "L2Context", "Row", "Table", "Tables"]

LAYER2_MACHINES = ("backfill", "schedule_tick", "sensor_eval", "run_key", "partition_status")
"""The machines whose rows name the rules of this package."""

del _rules  # imported for its registrations only
