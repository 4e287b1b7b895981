"""Configurations of the model: the plan, the fault budgets and the exploration bounds.

Every bound is explicit (ADR 006): BFS depth, the model clock's horizon, attempts per
task (in the plan), heartbeats per worker session, and one budget per fault kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from servo.core.builders import TaskDef

__all__ = ["PROFILES", "McConfig", "chain", "diamond", "fan_out", "profile"]


def chain(n: int, attempts: int, timeout: int = 1) -> tuple[TaskDef, ...]:
    """t0 -> t1 -> ... -> t{n-1}."""
    keys = [f"t{i}" for i in range(n)]
    return tuple(
        TaskDef(k, depends_on=[keys[i - 1]] if i else [], max_attempts=attempts, heartbeat_timeout_sec=timeout)
        for i, k in enumerate(keys)
    )


def diamond(attempts: int, timeout: int = 1) -> tuple[TaskDef, ...]:
    """a -> (b, c) -> d."""
    return (
        TaskDef("a", max_attempts=attempts, heartbeat_timeout_sec=timeout),
        TaskDef("b", ["a"], max_attempts=attempts, heartbeat_timeout_sec=timeout),
        TaskDef("c", ["a"], max_attempts=attempts, heartbeat_timeout_sec=timeout),
        TaskDef("d", ["b", "c"], max_attempts=attempts, heartbeat_timeout_sec=timeout),
    )


def fan_out(width: int, attempts: int, timeout: int = 1) -> tuple[TaskDef, ...]:
    """root -> leaf0 .. leaf{width-1}."""
    return (TaskDef("root", max_attempts=attempts, heartbeat_timeout_sec=timeout), *tuple(TaskDef(f"leaf{i}", ["root"], max_attempts=attempts, heartbeat_timeout_sec=timeout) for i in range(width)))


@dataclass(frozen=True)
class McConfig:
    """One model: a plan plus the environment's fault budgets and the search bounds.

    Budgets count fault actions along one path: driver crashes (between any two of
    its appends, or between a queue create and its ack), duplicate queue deliveries,
    timers delivered before fire_at, queue-name reservations expiring, queue tasks
    lost (only with `repair`, whose anti-entropy then has to recover them), workers
    dying silently, run cancels, compactions that fold the newest pending event
    before older ones (so an older event arrives late and its run is refolded), and
    compactor stalls (controllers and timers read a projection a second behind).
    """

    name: str
    tasks: tuple[TaskDef, ...]
    max_depth: int = 60
    max_sec: int = 6
    outcomes: tuple[str, ...] = ("SUCCEEDED", "FAILED")
    max_heartbeats: int = 1
    max_crashes: int = 1
    max_dup_deliveries: int = 1
    max_early_fires: int = 1
    max_expiries: int = 0
    max_lost_tasks: int = 0
    max_worker_deaths: int = 0
    max_cancels: int = 1
    max_reorders: int = 1
    max_lags: int = 1
    repair: bool = False
    timer_acks: bool = False
    max_states: int | None = None
    notes: str = field(default="", compare=False)

    def with_(self, **changes: object) -> McConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


_QUIET = {"max_crashes": 0, "max_dup_deliveries": 0, "max_early_fires": 0, "max_cancels": 0,
          "max_reorders": 0, "max_lags": 0, "max_heartbeats": 0}
# Fault groups: explored separately so each configuration gets deep enough to finish
# runs; `deep` combines them all.
SCENARIOS: dict[str, dict[str, int]] = {
    "core": {"max_cancels": 1},
    "driver": {"max_crashes": 1, "max_dup_deliveries": 1, "max_worker_deaths": 1},
    "timing": {"max_early_fires": 1, "max_lags": 1, "max_reorders": 1, "max_heartbeats": 1},
}
CI_CAPS = {"core": 110_000, "driver": 80_000, "timing": 80_000}


def _graphs() -> list[tuple[str, tuple[TaskDef, ...]]]:
    out = []
    for attempts in (1, 2):
        out.append((f"chain3-a{attempts}", chain(3, attempts)))
        out.append((f"diamond4-a{attempts}", diamond(attempts)))
        out.append((f"fanout1x3-a{attempts}", fan_out(3, attempts)))
    return out


def _ci() -> list[McConfig]:
    return [
        McConfig(f"{graph}-{scenario}", tasks, max_states=CI_CAPS[scenario], **{**_QUIET, **faults})
        for graph, tasks in _graphs()
        for scenario, faults in SCENARIOS.items()
    ]


def _deep() -> list[McConfig]:
    every = {k: v for faults in SCENARIOS.values() for k, v in faults.items()}
    out = [
        McConfig(f"{graph}-{scenario}-deep", tasks, max_states=1_500_000, **{**_QUIET, **faults})
        for graph, tasks in _graphs()
        for scenario, faults in SCENARIOS.items()
    ]
    out += [
        McConfig(f"{graph}-everything", tasks, max_states=1_500_000, max_sec=7, max_expiries=1,
                 max_lost_tasks=1, repair=True, timer_acks=True, **every)
        for graph, tasks in _graphs()
    ]
    return out


def _tiny() -> list[McConfig]:
    return [McConfig("tiny-chain2-a1", chain(2, 1), max_sec=4, **{**_QUIET, "max_cancels": 1, "max_crashes": 1})]


PROFILES = {"ci": _ci, "deep": _deep, "tiny": _tiny}


def profile(name: str) -> list[McConfig]:
    """The configurations of a named profile (ci, deep, tiny)."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]()
