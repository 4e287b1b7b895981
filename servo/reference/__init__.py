# GENERATED from spec/machines/*.toml by `servo spec generate`. Do not edit:
# change the spec tables and regenerate (a test fails when this file drifts).
"""Reference implementations of Servo's machines, one class per spec table.

The runtime fold is not this code: the differential suite runs both and requires
identical transitions. `MACHINES` maps a machine name to its class.
"""

from __future__ import annotations

from servo.reference._base import ReferenceMachine
from servo.reference.backfill import BackfillMachine
from servo.reference.dispatch_outbox import DispatchOutboxMachine
from servo.reference.partition_status import PartitionStatusMachine
from servo.reference.run import RunMachine
from servo.reference.run_key import RunKeyMachine
from servo.reference.schedule_tick import ScheduleTickMachine
from servo.reference.sensor_eval import SensorEvalMachine
from servo.reference.task import TaskMachine
from servo.reference.timer import TimerMachine

__all__ = [
    "MACHINES",
    "BackfillMachine",
    "DispatchOutboxMachine",
    "PartitionStatusMachine",
    "ReferenceMachine",
    "RunKeyMachine",
    "RunMachine",
    "ScheduleTickMachine",
    "SensorEvalMachine",
    "TaskMachine",
    "TimerMachine",
]

MACHINES: dict[str, type[ReferenceMachine]] = {
    "backfill": BackfillMachine,
    "dispatch_outbox": DispatchOutboxMachine,
    "partition_status": PartitionStatusMachine,
    "run": RunMachine,
    "run_key": RunKeyMachine,
    "schedule_tick": ScheduleTickMachine,
    "sensor_eval": SensorEvalMachine,
    "task": TaskMachine,
    "timer": TimerMachine,
}
"""Machine name -> reference class."""
