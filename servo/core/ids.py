"""Servo's identifiers: exact formats (SPEC §3, §7), parsers, and the backoff schedule.

Two kinds of id name the same thing:

- **internal ids** are readable and structured (`dispatch:{run}:{task}:{attempt}`,
  `timer:retry:...`); they go into the ledger, idempotency keys and logs, and the run
  id can be parsed back out of them.
- **cloud task ids** are `prefix_` + 26 base32 characters of a SHA-256 of the internal
  id: safe for the Cloud Tasks task-name charset and spread evenly over the keyspace.

Run ids derived from a run key are an HMAC under the tenant's secret; event, attempt
and entity ids are ULIDs. Run ids never contain ':' — the parsers depend on it.

Everything here is pure: no clock, no randomness, no I/O. Callers pass `now` and the
random bytes, so replaying the same inputs gives the same ids (docs/adr/003).
Docstring `pre:`/`post:` lines are PEP 316 contracts that CrossHair checks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import re
from datetime import UTC, datetime, timedelta

from ulid import ULID

__all__ = [
    "CLOUD_TASK_PREFIXES",
    "backfill_run_key",
    "chunk_id",
    "cloud_task_id",
    "cron_timer_id",
    "dispatch_cloud_task_id",
    "dispatch_id",
    "dispatch_run_id",
    "heartbeat_timer_id",
    "is_finite_number",
    "is_ulid",
    "new_ulid",
    "parse_timer_id",
    "retry_backoff",
    "retry_timer_id",
    "run_id_from_run_key",
    "schedule_run_key",
    "sha256_hex",
    "sla_timer_id",
    "tick_id",
    "timer_cloud_task_id",
    "timer_run_id",
    "ulid_timestamp",
]

CLOUD_TASK_PREFIXES: frozenset[str] = frozenset({"d", "t"})
"""Cloud task id prefixes: `d` for dispatches, `t` for timers."""

_HASH_CHARS = 26  # 130 bits of SHA-256, 128 bits of HMAC: far past any collision risk
_TIMER_KINDS = ("retry", "heartbeat", "cron", "sla")
_INT = re.compile(r"-?[0-9]+")
# Canonical ULID: upper-case Crockford base32 (no I, L, O, U); the first character is
# at most 7 because 26 characters hold 130 bits and a ULID has 128.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_ULID_RANDOM_BYTES = 10
_ULID_MAX_MS = 2**48 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _base32_lower(digest: bytes) -> str:
    # base32 encodes 5-byte groups independently, so 20 bytes give the same first 26
    # characters as the whole digest at less than two thirds of the cost.
    return base64.b32encode(digest[:20]).decode("ascii")[:_HASH_CHARS].lower()


def _check_segment(what: str, value: str) -> None:
    # A ':' inside a segment would make the id ambiguous and break the parsers below.
    if not value or ":" in value:
        raise ValueError(f"{what} must be non-empty and contain no ':': {value!r}")


def _is_int(text: str) -> bool:
    return _INT.fullmatch(text) is not None


# --- internal ids ---------------------------------------------------------------


def dispatch_id(run_id: str, task_key: str, attempt: int) -> str:
    """The internal id of one dispatch: `dispatch:{run_id}:{task_key}:{attempt}`.

    Also the idempotency key of DispatchRequested.

    pre: run_id != "" and ":" not in run_id
    post: dispatch_run_id(__return__) == run_id
    raises: ValueError
    """
    _check_segment("run_id", run_id)
    return f"dispatch:{run_id}:{task_key}:{attempt}"


def retry_timer_id(run_id: str, task_key: str, attempt: int, fire_epoch: int) -> str:
    """`timer:retry:{run_id}:{task_key}:{attempt}:{fire_epoch}`.

    `attempt` is the attempt that failed; the next DispatchRequested carries
    `attempt + 1`.

    pre: run_id != "" and ":" not in run_id
    post: timer_run_id(__return__) == run_id
    raises: ValueError
    """
    _check_segment("run_id", run_id)
    return f"timer:retry:{run_id}:{task_key}:{attempt}:{fire_epoch}"


def heartbeat_timer_id(run_id: str, task_key: str, attempt: int, check_epoch: int) -> str:
    """`timer:heartbeat:{run_id}:{task_key}:{attempt}:{check_epoch}`.

    pre: run_id != "" and ":" not in run_id
    post: timer_run_id(__return__) == run_id
    raises: ValueError
    """
    _check_segment("run_id", run_id)
    return f"timer:heartbeat:{run_id}:{task_key}:{attempt}:{check_epoch}"


def cron_timer_id(schedule_id: str, fire_epoch: int) -> str:
    """`timer:cron:{schedule_id}:{fire_epoch}`; it names no run.

    post: timer_run_id(__return__) is None
    """
    return f"timer:cron:{schedule_id}:{fire_epoch}"


def sla_timer_id(run_id: str, check_epoch: int) -> str:
    """`timer:sla:{run_id}:{check_epoch}`.

    pre: run_id != "" and ":" not in run_id
    post: timer_run_id(__return__) == run_id
    raises: ValueError
    """
    _check_segment("run_id", run_id)
    return f"timer:sla:{run_id}:{check_epoch}"


def dispatch_run_id(dispatch_id: str) -> str | None:
    """The run id inside a dispatch id, or None if it is not one.

    Task keys may contain ':' (the attempt is the last segment), run ids may not.
    """
    head, sep, rest = dispatch_id.partition(":")
    if head != "dispatch" or not sep:
        return None
    run_id, sep, tail = rest.partition(":")
    _task_key, sep_attempt, attempt = tail.rpartition(":")
    if not run_id or not sep or not sep_attempt or not _is_int(attempt):
        return None
    return run_id


def timer_run_id(timer_id: str) -> str | None:
    """The run id inside a retry, heartbeat or SLA timer id; None for cron or junk."""
    head, sep, rest = timer_id.partition(":")
    if head != "timer" or not sep:
        return None
    kind, sep, rest = rest.partition(":")
    run_id, sep_run, tail = rest.partition(":")
    if not sep or not run_id or not sep_run:
        return None
    if kind in ("retry", "heartbeat"):
        parts = tail.rsplit(":", 2)  # task_key may itself contain ':'
        if len(parts) == 3 and _is_int(parts[1]) and _is_int(parts[2]):
            return run_id
        return None
    if kind == "sla" and _is_int(tail.rpartition(":")[2]):
        # SPEC: `timer:sla:...` has "the same shape": accept the run-level form
        # `timer:sla:{run}:{epoch}` and the task-level `timer:sla:{run}:{task}:{attempt}:{epoch}`.
        return run_id
    return None


_TIMER_TYPES = {"retry": "RETRY", "heartbeat": "HEARTBEAT_CHECK", "cron": "CRON", "sla": "SLA_CHECK"}


def parse_timer_id(timer_id: str) -> tuple[str, str | None, str | None, int | None] | None:
    """(timer_type, run_id, task_key, attempt) named by a timer id, or None if unknown.

    Retry and heartbeat ids name all three; SLA ids name the run (and the task and
    attempt in the task-level form); cron ids name no run.
    """
    kind = timer_id.split(":", 2)[1] if timer_id.count(":") >= 2 else ""
    timer_type = _TIMER_TYPES.get(kind)
    if timer_type is None or not timer_id.startswith("timer:"):
        return None
    if kind == "cron":
        return (timer_type, None, None, None)
    run_id = timer_run_id(timer_id)
    if run_id is None:
        return None
    tail = timer_id.split(":", 3)[3]
    parts = tail.rsplit(":", 2)
    if kind in ("retry", "heartbeat") or len(parts) == 3:
        return (timer_type, run_id, parts[0], int(parts[1]))
    return (timer_type, run_id, None, None)


# --- API-safe ids -----------------------------------------------------------------


def cloud_task_id(prefix: str, internal: str) -> str:
    """`prefix + "_" + base32(sha256(internal))[:26].lower()`: a Cloud Tasks task name.

    Hashing keeps the name inside the task-name charset (`[A-Za-z0-9_-]`, at most 500
    characters) whatever the internal id holds, and spreads names evenly: Cloud Tasks
    slows down on sequential names. `prefix` is `d` (dispatch) or `t` (timer).

    pre: prefix in ("d", "t")
    post: len(__return__) == 28 and __return__.startswith(prefix + "_")
    raises: ValueError
    """
    if prefix not in CLOUD_TASK_PREFIXES:
        raise ValueError(f"cloud task id prefix must be 'd' or 't', not {prefix!r}")
    return f"{prefix}_{_sha256_base32(internal)}"


@functools.lru_cache(maxsize=1 << 14)
def _sha256_base32(internal: str) -> str:
    # Controllers re-derive the same names on every pass: memoise the hash.
    return _base32_lower(hashlib.sha256(internal.encode("utf-8")).digest())


def dispatch_cloud_task_id(dispatch_id: str) -> str:
    """The Cloud Tasks name of a dispatch: `cloud_task_id("d", dispatch_id)`.

    post: __return__.startswith("d_")
    raises: ValueError
    """
    if dispatch_run_id(dispatch_id) is None:
        raise ValueError(f"not a dispatch id: {dispatch_id!r}")
    return cloud_task_id("d", dispatch_id)


def timer_cloud_task_id(timer_id: str) -> str:
    """The Cloud Tasks name of a timer: `cloud_task_id("t", timer_id)`.

    post: __return__.startswith("t_")
    raises: ValueError
    """
    if not timer_id.startswith(tuple(f"timer:{kind}:" for kind in _TIMER_KINDS)):
        raise ValueError(f"not a timer id: {timer_id!r}")
    return cloud_task_id("t", timer_id)


def run_id_from_run_key(tenant_secret: bytes, tenant: str, workspace: str, run_key: str) -> str:
    """The run id a run key maps to: `"run_" + base32(HMAC_SHA256(secret, msg)[:16])`.

    `msg` is `f"{tenant}:{workspace}:{run_key}"`. The same key in the same workspace
    always gives the same run id (run-key idempotency); the keyed hash keeps ids
    namespaced per tenant and workspace and impossible to guess without the secret.
    Tenant and workspace may not contain ':' so that the message stays unambiguous
    (the run key, last, may).

    pre: len(tenant_secret) > 0
    post: len(__return__) == 30 and __return__.startswith("run_") and ":" not in __return__
    raises: ValueError
    """
    if not tenant_secret:
        raise ValueError("tenant_secret must not be empty")
    _check_segment("tenant", tenant)
    _check_segment("workspace", workspace)
    message = f"{tenant}:{workspace}:{run_key}".encode()
    digest = hmac.new(tenant_secret, message, hashlib.sha256).digest()
    return "run_" + _base32_lower(digest[:16])


# --- ULIDs ------------------------------------------------------------------------


def new_ulid(now: datetime, randomness: bytes) -> str:
    """The canonical ULID for `now` (milliseconds, floored) and 10 random bytes.

    Deterministic: the caller owns the clock and the randomness. `now` must be
    timezone-aware and between 1970 and the year 10889.

    pre: now.tzinfo is not None and len(randomness) == 10
    post: is_ulid(__return__)
    raises: ValueError
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if len(randomness) != _ULID_RANDOM_BYTES:
        raise ValueError(f"a ULID needs {_ULID_RANDOM_BYTES} random bytes, got {len(randomness)}")
    millis = (now - _EPOCH) // _MILLISECOND
    if not 0 <= millis <= _ULID_MAX_MS:
        raise ValueError(f"{now.isoformat()} is outside the ULID time range")
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + randomness))


def ulid_timestamp(ulid_str: str) -> datetime:
    """The instant (UTC, millisecond precision) a canonical ULID was minted for.

    raises: ValueError
    """
    if not is_ulid(ulid_str):
        raise ValueError(f"not a canonical ULID: {ulid_str!r}")
    return _EPOCH + ULID.from_str(ulid_str).milliseconds * _MILLISECOND


def is_ulid(s: object) -> bool:
    """True for a canonical ULID: 26 upper-case Crockford base32 characters.

    Lower-case spellings are refused on purpose: fold order is string order of
    `event_id`, which only matches time order when every id uses one case.
    """
    return isinstance(s, str) and _ULID.fullmatch(s) is not None


# --- Layer 2 ids (SPEC §7) ----------------------------------------------------------


def tick_id(schedule_id: str, scheduled_for_epoch: int) -> str:
    """A schedule tick: `{schedule_id}:{scheduled_for_epoch}`."""
    return f"{schedule_id}:{scheduled_for_epoch}"


def schedule_run_key(schedule_id: str, epoch: int) -> str:
    """The run key of a schedule tick: `sched:{schedule_id}:{epoch}`."""
    return f"sched:{schedule_id}:{epoch}"


def chunk_id(backfill_id: str, chunk_index: int) -> str:
    """A backfill chunk: `{backfill_id}:{chunk_index}`."""
    return f"{backfill_id}:{chunk_index}"


def backfill_run_key(backfill_id: str, chunk_index: int) -> str:
    """The run key of a backfill chunk: `backfill:{backfill_id}:chunk:{chunk_index}`."""
    return f"backfill:{backfill_id}:chunk:{chunk_index}"


def sha256_hex(s: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes of `s` (used inside idempotency keys).

    post: len(__return__) == 64
    """
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


# --- retry schedule -------------------------------------------------------------------


def is_finite_number(value: object) -> bool:
    """A finite int or float, and not a bool (which Python counts as an int): what a
    retry setting (and one carried in a run's labels) must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def retry_backoff(
    attempt: int,
    *,
    base_sec: float = 1.0,
    factor: float = 2.0,
    cap_sec: float = 300.0,
    jitter: float,
) -> float:
    """Seconds to wait after failed `attempt` (1-based) before the next one.

        delay = min(cap_sec, base_sec * factor ** (attempt - 1)) * (0.5 + jitter / 2)

    `jitter` in [0, 1) comes from the caller, so the delay is deterministic. The delay
    lies in [raw / 2, raw] with raw = min(cap_sec, base_sec * factor ** (attempt - 1)),
    never exceeds `cap_sec`, and for a fixed jitter never shrinks as `attempt` grows
    (factor >= 1). Growth that overflows a float counts as reaching the cap.

    pre: attempt >= 1
    pre: math.isfinite(base_sec) and base_sec >= 0.0
    pre: math.isfinite(factor) and factor >= 1.0
    pre: math.isfinite(cap_sec) and cap_sec >= 0.0
    pre: 0.0 <= jitter < 1.0
    post: 0.0 <= __return__ <= cap_sec
    raises: ValueError
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not (math.isfinite(base_sec) and base_sec >= 0.0):
        raise ValueError(f"base_sec must be finite and >= 0, got {base_sec}")
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ValueError(f"factor must be finite and >= 1, got {factor}")
    if not (math.isfinite(cap_sec) and cap_sec >= 0.0):
        raise ValueError(f"cap_sec must be finite and >= 0, got {cap_sec}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    try:
        growth = factor ** (attempt - 1)
    except OverflowError:
        growth = math.inf
    # 0 * inf is nan, so a zero base is zero delay whatever the growth.
    raw = base_sec * growth if base_sec > 0.0 else 0.0
    return min(cap_sec, raw) * (0.5 + jitter / 2.0)
