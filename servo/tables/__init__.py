"""Projected tables as Arrow/Parquet, with the schemas of `spec/tables.toml`."""

from __future__ import annotations

from servo.tables._parquet import arrow_schema, read_parquet, to_arrow, write_parquet

__all__ = ["arrow_schema", "read_parquet", "to_arrow", "write_parquet"]
