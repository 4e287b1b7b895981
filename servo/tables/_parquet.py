"""Arrow schemas derived from the table specs, and deterministic Parquet I/O.

Rows come in as the JSON-ready dicts the fold produces (timestamps as RFC 3339
strings); the same rows always give byte-identical Parquet (P3).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from servo.core.events import format_timestamp
from servo.spec import Column, TableSpec

__all__ = ["arrow_schema", "json_ready", "parquet_bytes", "parquet_rows", "read_parquet", "to_arrow", "write_parquet"]


def _arrow_type(column: Column) -> Any:
    return {
        "string": pa.string(),
        "enum": pa.string(),
        "json": pa.string(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }[column.type]


@lru_cache(maxsize=64)
def arrow_schema(spec: TableSpec) -> Any:
    """The Arrow schema of a table spec (enum values recorded in field metadata)."""
    fields = []
    for column in spec.columns:
        metadata = {"enum": ",".join(column.enum)} if column.enum else None
        fields.append(pa.field(column.name, _arrow_type(column), nullable=column.nullable, metadata=metadata))
    return pa.schema(fields, metadata={"servo.table": spec.name, "servo.primary_key": ",".join(spec.primary_key)})


def _cell(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.type == "timestamp":
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    if column.type == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def to_arrow(spec: TableSpec, rows: Sequence[dict[str, Any]]) -> Any:
    """An Arrow table of JSON-ready rows."""
    columns = {c.name: [_cell(c, r.get(c.name)) for r in rows] for c in spec.columns}
    return pa.Table.from_pydict(columns, schema=arrow_schema(spec))


def parquet_bytes(spec: TableSpec, rows: Sequence[dict[str, Any]], *, compression: str = "zstd") -> bytes:
    """Deterministic Parquet bytes for the rows.

    zstd (the default) for files that stay, e.g. a base; a small L0 delta is better
    off with snappy: zstd costs a fixed ~0.7 ms per file to set up, more than the
    whole write of a few rows.
    """
    sink = io.BytesIO()
    pq.write_table(to_arrow(spec, rows), sink, compression=compression, write_statistics=True)
    return sink.getvalue()


def write_parquet(path: Path, spec: TableSpec, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows to `path` as Parquet."""
    path.write_bytes(parquet_bytes(spec, rows))


def read_parquet(source: Path | bytes, spec: TableSpec) -> list[dict[str, Any]]:
    """Rows back as JSON-ready dicts (inverse of `to_arrow`)."""
    return [json_ready(spec, row) for row in parquet_rows(source)]


def parquet_rows(source: Path | bytes) -> list[dict[str, Any]]:
    """Rows as Arrow gives them (timestamps as datetimes, json columns as text)."""
    # ParquetFile reads one file directly; read_table goes through the dataset API,
    # which costs twice as much for the small files deltas are.
    handle = pa.BufferReader(source) if isinstance(source, bytes) else str(source)
    rows: list[dict[str, Any]] = pq.ParquetFile(handle).read(use_threads=False).to_pylist()
    return rows


def json_ready(spec: TableSpec, row: dict[str, Any]) -> dict[str, Any]:
    """A row of `parquet_rows` turned, in place, into the JSON-ready dict `to_arrow`
    took; returns it."""
    for column in spec.columns:
        value = row.get(column.name)
        if value is None:
            continue
        if column.type == "timestamp":
            row[column.name] = format_timestamp(value)
        elif column.type == "json":
            row[column.name] = json.loads(value)
    return row
