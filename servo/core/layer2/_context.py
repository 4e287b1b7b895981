"""What a Layer 2 guard or effect sees: the instance row, the payload, other tables.

Layer 2 rules are pure: they read an `L2Context` and (effects only) write into the rows
it holds. No clock, no I/O, no randomness: every value comes from the event (`data`,
`event_id`, `occurred_at`) or from the projection (`row`, `tables`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "Key",
    "L2Context",
    "Row",
    "Table",
    "Tables",
    "epoch_seconds",
    "get_int",
    "get_opt_int",
    "get_opt_str",
    "get_opt_strs",
    "get_record",
    "get_records",
    "get_str",
    "get_strs",
]

Row = dict[str, object]
"""One projected row: column name -> value (None for a null)."""

Key = tuple[str, ...]
"""A primary key: the values of the table's primary-key columns, in declared order."""

Table = dict[Key, Row]
"""The rows of one projected table, by primary key."""

Tables = dict[str, Table]
"""Projected tables by name (`run_keys`, `backfill_chunks`, `runs`, ...)."""


@dataclass(frozen=True, slots=True)
class L2Context:
    """The input of one Layer 2 rule while the fold applies one event to one instance.

    `row` is the machine instance's current row (a freshly created instance holds only
    its primary-key columns and `state`); `data` is the event payload, already validated
    against the catalog; `tables` holds the other projected rows the rules read or
    write (`schedule_ticks`, `sensor_evals`, `run_keys`, `run_key_conflicts`,
    `backfills`, `backfill_chunks`, and Layer 1 `runs`). `occurred_at` is the
    envelope's informational timestamp, stored in `*_at` columns and never used for
    ordering. `run_id_of` maps a run_key to its tenant-scoped run_id (see
    `servo.core.ids.run_id_from_run_key`); it is a function so that the tenant secret never sits in
    the context (or in its repr).
    """

    row: Row
    data: Mapping[str, object]
    event_id: str
    tables: Tables = field(default_factory=dict)
    occurred_at: datetime | str | None = None
    run_id_of: Callable[[str], str] | None = None

    def lookup(self, table: str, key: Key) -> Row | None:
        """The row of `table` with primary key `key`, or None (reads never create tables)."""
        return self.tables.get(table, {}).get(key)

    def table(self, name: str) -> Table:
        """The projected table `name` for an effect to write, created empty if missing."""
        return self.tables.setdefault(name, {})


# ------------------------------------------------------------ typed reads --
# Payloads are validated against the catalog before any rule runs, so a wrong type here
# is a bug in the fold, not bad input: it raises instead of quietly returning False.


def get_str(values: Mapping[str, object], key: str) -> str:
    """`values[key]` as a string."""
    value = values.get(key)
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def get_opt_str(values: Mapping[str, object], key: str) -> str | None:
    """`values[key]` as a string, or None when absent or null."""
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string or null, got {type(value).__name__}")
    return value


def get_int(values: Mapping[str, object], key: str) -> int:
    """`values[key]` as an integer (bools refused)."""
    value = values.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key!r} must be an integer, got {type(value).__name__}")
    return value


def get_opt_int(values: Mapping[str, object], key: str) -> int | None:
    """`values[key]` as an integer, or None when absent or null."""
    if values.get(key) is None:
        return None
    return get_int(values, key)


def get_strs(values: Mapping[str, object], key: str) -> list[str]:
    """`values[key]` as a list of strings."""
    value = values.get(key)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{key!r} must be a list, got {type(value).__name__}")
    out = list(value)
    if not all(isinstance(item, str) for item in out):
        raise TypeError(f"{key!r} must be a list of strings")
    return [str(item) for item in out]


def get_opt_strs(values: Mapping[str, object], key: str) -> list[str] | None:
    """`values[key]` as a list of strings, or None when absent or null."""
    if values.get(key) is None:
        return None
    return get_strs(values, key)


def get_record(values: Mapping[str, object], key: str) -> Mapping[str, object]:
    """`values[key]` as a nested record (a catalog record such as SourceRef)."""
    value = values.get(key)
    if not isinstance(value, Mapping):
        raise TypeError(f"{key!r} must be an object, got {type(value).__name__}")
    return value


def get_records(values: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    """`values[key]` as a list of nested records."""
    value = values.get(key)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{key!r} must be a list, got {type(value).__name__}")
    out: list[Mapping[str, object]] = []
    for item in value:
        if not isinstance(item, Mapping):
            raise TypeError(f"{key!r} must be a list of objects")
        out.append(item)
    return out


def epoch_seconds(value: object) -> int:
    """Whole UTC seconds of a catalog timestamp (RFC 3339 text ending in Z, or aware datetime)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError(f"expected an RFC 3339 UTC timestamp, got {value!r}")
    return (value - _EPOCH) // timedelta(seconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
