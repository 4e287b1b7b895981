"""Events: the JSON envelope, typed validation against the catalog, idempotency keys.

An event is one JSON object (SPEC §3). `parse_event` turns a decoded object into an
`Event` or raises `InvalidEvent` / `UnknownEventType` with a one-line reason; it never
crashes on bad input. Validation is compiled once per catalog entry (`Catalog`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from servo._errors import InvalidEvent
from servo.spec import EventSpec, FieldSpec, RecordSpec, Spec

__all__ = [
    "Catalog",
    "Event",
    "UnknownEventType",
    "format_timestamp",
    "parse_timestamp",
]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ID_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")


class UnknownEventType(InvalidEvent):
    """The envelope names an event type that is not in the catalog."""


# Payload timestamps the fast parsers found UTC, parsed: the fold reads some again
# (`record_heartbeat`), and equal ones recur. Bounded: cleared when full.
_UTC_STAMPS: dict[str, datetime] = {}
_UTC_STAMPS_MAX = 1 << 12


def _utc_stamp(value: str) -> datetime | None:
    """`value` parsed if it is an RFC 3339 timestamp in UTC, else None (fast parsers)."""
    parsed = _UTC_STAMPS.get(value)
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is not UTC:
            return None
        if len(_UTC_STAMPS) >= _UTC_STAMPS_MAX:
            _UTC_STAMPS.clear()
        _UTC_STAMPS[value] = parsed
    return parsed


def parse_timestamp(value: object, what: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as an aware UTC datetime."""
    if type(value) is str:
        parsed = _UTC_STAMPS.get(value)
        if parsed is not None:
            return parsed
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:
                return parsed
    where = f"{what}: " if what else ": "
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}expected an RFC 3339 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{where}not an RFC 3339 timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{where}timestamp needs a UTC offset ('Z'): {value[:64]!r}")
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


@functools.lru_cache(maxsize=1 << 14)
def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC ending in `Z`; fractional seconds only when present."""
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


class Event(NamedTuple):
    """One validated event. `data` holds the payload as decoded JSON (timestamps as text).

    A NamedTuple: immutable, and cheap to build on the fold's hot path.
    """

    event_id: str
    event_type: str
    tenant_id: str
    workspace_id: str
    idempotency_key: str
    occurred_at: datetime
    data: Mapping[str, Any]
    source: str = ""
    traceparent: str | None = None
    schema_version: int = 1

    def envelope(self) -> dict[str, Any]:
        """The JSON envelope (SPEC §3) of this event."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "tenant_id": self.tenant_id,
            "workspace_id": self.workspace_id,
            "idempotency_key": self.idempotency_key,
            "occurred_at": format_timestamp(self.occurred_at),
            "source": self.source,
            "data": dict(self.data),
        }
        if self.traceparent is not None:
            out["traceparent"] = self.traceparent
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal events give equal text."""
        return json.dumps(self.envelope(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


Check = Callable[[Any], str | None]


FastParse = Callable[[dict[str, Any]], "Event | None"]
"""fast(obj): the Event of a well-formed envelope of one event type, else None."""


@dataclass(frozen=True)
class _Compiled:
    spec: EventSpec
    validate: Callable[[Mapping[str, Any]], str | None]
    key_template: Callable[[Mapping[str, Any]], str] | None
    fast: FastParse | None


@dataclass
class Catalog:
    """The event catalog compiled for fast validation and key rendering."""

    spec: Spec
    _compiled: dict[str, _Compiled] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, event in self.spec.events.items():
            validate = _compile_validator(event, self.spec.records)
            fast = None if event.derived else _compile_fast_parse(event, self.spec.records)
            self._compiled[name] = _Compiled(event, validate, _compile_key(event), fast)
        self._fast: dict[str, FastParse] = {n: c.fast for n, c in self._compiled.items() if c.fast is not None}

    @classmethod
    def for_spec(cls, spec: Spec) -> Catalog:
        """The compiled catalog of `spec`, built once per spec object (compiling costs ms)."""
        cached = _CATALOGS.get(id(spec))
        if cached is None or cached.spec is not spec:
            cached = _CATALOGS[id(spec)] = cls(spec)
        return cached

    @property
    def fast_parsers(self) -> Mapping[str, FastParse]:
        """Per event type, `parse` for the well-formed envelope (exact JSON types, a UTC
        `occurred_at`): the Event, or None when `parse` must say what is wrong."""
        return self._fast

    def event_spec(self, event_type: str) -> EventSpec | None:
        """The catalog entry of `event_type`, or None."""
        compiled = self._compiled.get(event_type)
        return compiled.spec if compiled else None

    def idempotency_key(self, event_type: str, data: Mapping[str, Any]) -> str:
        """Render the catalog's idempotency-key template for a payload."""
        compiled = self._compiled[event_type]
        if compiled.key_template is None:
            raise InvalidEvent(f"{event_type}: derived events have no idempotency key")
        return compiled.key_template(data)

    def validate_data(self, event_type: str, data: object) -> Mapping[str, Any]:
        """Check a payload against the catalog; raise InvalidEvent naming the field."""
        compiled = self._compiled.get(event_type)
        if compiled is None:
            raise UnknownEventType(f"unknown event type {event_type!r}")
        if not isinstance(data, dict):
            raise InvalidEvent(f"{event_type}: data must be an object")
        problem = compiled.validate(data)
        if problem is not None:
            raise InvalidEvent(f"{event_type}: data.{problem}")
        return data

    def parse(self, obj: object) -> Event:
        """Validate a decoded JSON envelope into an Event."""
        if type(obj) is dict:
            # Fast path: one compiled pass of exact type checks over envelope and payload.
            event_type = obj.get("event_type")
            fast = self._fast.get(event_type) if type(event_type) is str else None
            event = fast(obj) if fast is not None else None
            if event is not None:
                return event
        if not isinstance(obj, dict):
            raise InvalidEvent("an event must be a JSON object")
        event_id = obj.get("event_id")
        if not isinstance(event_id, str) or not _ID_TEXT.match(event_id):
            raise InvalidEvent("event_id must be a non-empty printable string (a ULID)")
        try:
            return self._parse(obj, event_id)
        except InvalidEvent as exc:
            exc.event_id = event_id
            raise

    def _parse(self, obj: dict[str, Any], event_id: str) -> Event:
        # Whatever the fast path did not accept: checked field by field, so the error
        # names the problem (or, for what only the fast path refuses, the event is built).
        event_type = obj.get("event_type")
        if not isinstance(event_type, str):
            raise InvalidEvent("event_type must be a string")
        compiled = self._compiled.get(event_type)
        if compiled is None:
            raise UnknownEventType(f"unknown event type {event_type[:64]!r}")
        if compiled.spec.derived:
            raise InvalidEvent(f"{event_type} is derived inside the fold and never stored")
        version = obj.get("schema_version", 1)
        if version != 1 or isinstance(version, bool):
            raise InvalidEvent(f"unsupported schema_version {version!r} (this fold reads 1)")
        tenant, workspace = obj.get("tenant_id"), obj.get("workspace_id")
        if not isinstance(tenant, str) or not tenant or not isinstance(workspace, str) or not workspace:
            raise InvalidEvent("tenant_id and workspace_id must be non-empty strings")
        occurred_at = parse_timestamp(obj.get("occurred_at"), "occurred_at")
        data = self.validate_data(event_type, obj.get("data"))
        key = obj.get("idempotency_key")
        if key is None:
            key = self.idempotency_key(event_type, data)
        elif not isinstance(key, str) or not key:
            raise InvalidEvent("idempotency_key must be a non-empty string")
        source = obj.get("source", "")
        traceparent = obj.get("traceparent")
        if not isinstance(source, str) or (traceparent is not None and not isinstance(traceparent, str)):
            raise InvalidEvent("source and traceparent must be strings")
        return Event(event_id, event_type, tenant, workspace, key, occurred_at, data, source, traceparent, 1)

    def make(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        event_id: str,
        tenant_id: str,
        workspace_id: str,
        occurred_at: datetime,
        source: str = "",
        traceparent: str | None = None,
    ) -> Event:
        """Build a validated event with its catalog idempotency key (for producers)."""
        clean = {k: v for k, v in data.items() if v is not None}
        return self.parse(
            {
                "event_id": event_id,
                "event_type": event_type,
                "schema_version": 1,
                "tenant_id": tenant_id,
                "workspace_id": workspace_id,
                "idempotency_key": self.idempotency_key(event_type, clean),
                "occurred_at": format_timestamp(occurred_at),
                "source": source,
                "traceparent": traceparent,
                "data": clean,
            }
        )


_CATALOGS: dict[int, Catalog] = {}

# ---------------------------------------------------------------- compilers --
# A check returns None when the value is fine, else the rest of a message that
# follows the field's path (": expected a list", "[2].task_key is required").
# Simple scalar types are checked inline by the caller with `type(v) is T`, which is
# exact for decoded JSON (bool is not accepted as int).

_SIMPLE: dict[str, type] = {"str": str, "int": int, "bool": bool, "object": dict}
_SHOWN: dict[type, str] = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _compile_field(spec: FieldSpec, records: Mapping[str, RecordSpec]) -> Check:
    kind = spec.kind
    simple = _SIMPLE.get(kind)
    if simple is not None:
        shown = ": expected " + _SHOWN[simple]

        def check_simple(value: Any) -> str | None:
            return None if type(value) is simple else shown

        return check_simple
    if kind == "timestamp":

        def check_ts(value: Any) -> str | None:
            try:
                parse_timestamp(value, "")
            except InvalidEvent as exc:
                return str(exc)
            return None

        return check_ts
    if kind == "enum":
        allowed = frozenset(spec.enum)
        shown_enum = ": expected one of " + "/".join(spec.enum)

        def check_enum(value: Any) -> str | None:
            return None if type(value) is str and value in allowed else shown_enum

        return check_enum
    if kind in ("list", "map"):
        assert spec.item is not None
        item = _compile_field(spec.item, records)
        if kind == "list":

            def check_list(value: Any) -> str | None:
                if type(value) is not list:
                    return ": expected a list"
                for i, element in enumerate(value):
                    problem = item(element)
                    if problem is not None:
                        return f"[{i}]{problem}"
                return None

            return check_list

        def check_map(value: Any) -> str | None:
            if type(value) is not dict:
                return ": expected an object"
            for key, element in value.items():
                problem = item(element)
                if problem is not None:
                    return f".{key}{problem}"
            return None

        return check_map
    assert spec.record is not None
    record = records[spec.record]
    members = tuple((f.name, f.optional, _compile_field(f, records)) for f in record.fields)

    def check_record(value: Any) -> str | None:
        if type(value) is not dict:
            return ": expected an object"
        for name, optional, check in members:
            member = value.get(name)
            if member is None:
                if not optional:
                    return f".{name} is required"
                continue
            problem = check(member)
            if problem is not None:
                return f".{name}{problem}"
        return None

    return check_record


def _compile_validator(event: EventSpec, records: Mapping[str, RecordSpec]) -> Callable[[Mapping[str, Any]], str | None]:
    """Compile a payload validator into straight-line Python (like attrs compiles classes).

    It returns None for a valid payload, else "field<problem>" for the message. Scalar
    fields are checked inline with `type(v) is T`; others call their compiled check.
    """
    lines = ["def validate(data):", "    get = data.get"]
    namespace: dict[str, Any] = {}
    for i, spec in enumerate(event.fields):
        lines.append(f"    v = get({spec.name!r})")
        missing = "pass" if spec.optional else f"return {spec.name + ' is required'!r}"
        lines.append(f"    if v is None: {missing}")
        simple = _SIMPLE.get(spec.kind)
        if simple is not None:
            namespace[f"T{i}"] = simple
            shown = spec.name + ": expected " + _SHOWN[simple]
            lines.append(f"    elif type(v) is not T{i}: return {shown!r}")
        else:
            namespace[f"C{i}"] = _compile_field(spec, records)
            lines.append(f"    else:\n        p = C{i}(v)\n        if p is not None: return {spec.name!r} + p")
    lines.append("    return None")
    exec("\n".join(lines), namespace)  # generated from the catalog, never from input
    validate: Callable[[Mapping[str, Any]], str | None] = namespace["validate"]
    return validate


def _compile_fast_parse(event: EventSpec, records: Mapping[str, RecordSpec]) -> FastParse:
    """Compile one event type's fast path: envelope and payload in one straight-line pass.

    It returns the Event when every check passes, else None and the caller takes the
    field-by-field path (which names the problem). It accepts a subset of what that
    path accepts: exact JSON types, a UTC `occurred_at`, a payload `validate` passes.
    """
    # tuple.__new__ builds the Event without the Python-level NamedTuple.__new__ call.
    namespace: dict[str, Any] = {"Event": Event, "new": tuple.__new__, "UTC": UTC, "fromisoformat": datetime.fromisoformat}
    namespace["event_type"], namespace["id_text"] = event.name, _ID_TEXT.match
    lines = [
        "def fast(obj):",
        "    event_id = obj.get('event_id')",
        "    if type(event_id) is not str or not id_text(event_id):",
        "        return None",
        "    try:",
        "        tenant, workspace, data = obj['tenant_id'], obj['workspace_id'], obj['data']",
        "        key, stamp = obj['idempotency_key'], obj['occurred_at']",
        "    except KeyError:",
        "        return None",
        "    get = obj.get",
        "    version, source, traceparent = get('schema_version', 1), get('source', ''), get('traceparent')",
        "    if not (type(tenant) is str and tenant and type(workspace) is str and workspace",
        "            and type(data) is dict and type(key) is str and key and type(stamp) is str",
        "            and type(version) is int and version == 1 and type(source) is str",
        "            and (traceparent is None or type(traceparent) is str)):",
        "        return None",
        "    try:",
        "        occurred_at = fromisoformat(stamp)",
        "    except ValueError:",
        "        return None",
        "    if occurred_at.tzinfo is not UTC:",
        "        return None",
        "    dget = data.get",
        "    try:",
    ]
    # Required fields first; the optional ones are checked only if the payload has one
    # (one C-level set test instead of a lookup and a test per absent field).
    optional = frozenset(spec.name for spec in event.fields if spec.optional)
    for i, spec in enumerate(event.fields):
        if not spec.optional:
            lines += _fast_field(i, spec, records, namespace, "        ")
    if optional:
        namespace["OPTIONAL"] = optional
        lines.append("        if not OPTIONAL.isdisjoint(data):")
        for i, spec in enumerate(event.fields):
            if spec.optional:
                lines += _fast_field(i, spec, records, namespace, "            ")
    lines += [
        "        pass",
        "    except KeyError:",
        "        return None",
        "    return new(Event, (event_id, event_type, tenant, workspace, key, occurred_at, data, source, traceparent, 1))",
    ]
    exec("\n".join(lines), namespace)  # generated from the catalog, never from input
    fast: FastParse = namespace["fast"]
    return fast


def _fast_field(i: int, spec: FieldSpec, records: Mapping[str, RecordSpec], namespace: dict[str, Any], pad: str) -> list[str]:
    """The fast path's check of one payload field (`return None` if it fails)."""
    fetch = f"v = dget({spec.name!r})" if spec.optional else f"v = data[{spec.name!r}]"
    lines = [pad + fetch]
    when = "v is not None and " if spec.optional else ""
    simple = _SIMPLE.get(spec.kind)
    if simple is not None:
        namespace[f"T{i}"] = simple
        lines.append(f"{pad}if {when}type(v) is not T{i}: return None")
    elif spec.kind == "timestamp":
        body = pad if not spec.optional else pad + "    "
        if spec.optional:
            lines.append(f"{pad}if v is not None:")
        namespace["utc_stamp"] = _utc_stamp
        lines.append(f"{body}if type(v) is not str or utc_stamp(v) is None: return None")
    elif spec.kind == "enum":
        namespace[f"E{i}"] = frozenset(spec.enum)
        lines.append(f"{pad}if {when}(type(v) is not str or v not in E{i}): return None")
    else:
        namespace[f"C{i}"] = _compile_field(spec, records)
        test = f"v is not None and C{i}(v) is not None" if spec.optional else f"v is None or C{i}(v) is not None"
        lines.append(f"{pad}if {test}: return None")
    return lines


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _template(template: str) -> Callable[[Mapping[str, Any]], str]:
    pieces: list[str | tuple[str, bool]] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(template[last : match.start()])
        expr = match.group(1)
        hashed = expr.startswith("sha256_hex(") and expr.endswith(")")
        pieces.append((expr[len("sha256_hex(") : -1] if hashed else expr, hashed))
        last = match.end()
    pieces.append(template[last:])

    def render(data: Mapping[str, Any]) -> str:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                text = _render(_lookup(data, piece[0]))
                out.append(hashlib.sha256(text.encode()).hexdigest() if piece[1] else text)
        return "".join(out)

    return render


def _compile_key(event: EventSpec) -> Callable[[Mapping[str, Any]], str] | None:
    if event.idempotency_key is not None:
        return _template(event.idempotency_key)
    if event.idempotency_key_by is not None:
        by = event.idempotency_key_by
        variants = {name: _template(text) for name, text in event.idempotency_keys}

        def render(data: Mapping[str, Any]) -> str:
            selector = _render(_lookup(data, by))
            if selector not in variants:
                raise InvalidEvent(f"{event.name}: {by} must be one of {', '.join(variants)}")
            return variants[selector](data)

        return render
    return None
