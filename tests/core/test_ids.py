"""Identifier formats (SPEC §3, §7): literal examples, parse round trips, invariants."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from servo.core import ids
from servo.core.ids import (
    backfill_run_key,
    chunk_id,
    cloud_task_id,
    cron_timer_id,
    dispatch_cloud_task_id,
    dispatch_id,
    dispatch_run_id,
    heartbeat_timer_id,
    is_ulid,
    new_ulid,
    parse_timer_id,
    retry_backoff,
    retry_timer_id,
    run_id_from_run_key,
    schedule_run_key,
    sha256_hex,
    sla_timer_id,
    tick_id,
    timer_cloud_task_id,
    timer_run_id,
    ulid_timestamp,
)

CLOUD_TASK_ID = re.compile(r"^[dt]_[a-z2-7]{26}$")
# What Cloud Tasks accepts as the TASK_ID part of a task name.
CLOUD_TASKS_NAME_CHARSET = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

run_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True)
task_keys = st.text(min_size=1, max_size=40).filter(lambda s: ":" not in s)
any_task_keys = st.text(max_size=40)  # may contain ':'
attempts = st.integers(min_value=1, max_value=10_000)
epochs = st.integers(min_value=0, max_value=2**40)
aware_instants = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9999, 12, 31),
    timezones=st.just(UTC),
)


def _crockford(value: int, width: int) -> str:
    """An independent Crockford base32 encoder for checking ULIDs."""
    chars: list[str] = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(CROCKFORD[digit])
    return "".join(reversed(chars))


# --- the SPEC literals -------------------------------------------------------------


def test_cloud_task_id_is_deterministic() -> None:
    """SPEC §3 literal: the same internal id always hashes to the same task name."""
    expected = "d_wsctjflqarnxmzxdhvmrndgvy4"
    assert cloud_task_id("d", "dispatch:run_1:extract:1") == expected
    assert cloud_task_id("d", "dispatch:run_1:extract:1") == expected
    assert dispatch_cloud_task_id(dispatch_id("run_1", "extract", 1)) == expected


def test_run_id_from_run_key_matches_spec_literal() -> None:
    """SPEC §3 literal for the HMAC run id."""
    run_id = run_id_from_run_key(b"secret", "acme", "prod", "sched:01J:1767225600")
    assert run_id == "run_pld2gkejnpskxkz3vbnut5sq74"


# --- formats ------------------------------------------------------------------------


def test_dispatch_id_format() -> None:
    assert dispatch_id("run_1", "extract", 1) == "dispatch:run_1:extract:1"


def test_timer_id_formats() -> None:
    assert retry_timer_id("run_1", "extract", 2, 1767225600) == (
        "timer:retry:run_1:extract:2:1767225600"
    )
    assert heartbeat_timer_id("run_1", "extract", 2, 1767225660) == (
        "timer:heartbeat:run_1:extract:2:1767225660"
    )
    assert cron_timer_id("01JSCHED", 1767225600) == "timer:cron:01JSCHED:1767225600"
    assert sla_timer_id("run_1", 1767229200) == "timer:sla:run_1:1767229200"


def test_layer2_id_formats() -> None:
    assert tick_id("01JSCHED", 1767225600) == "01JSCHED:1767225600"
    assert schedule_run_key("01JSCHED", 1767225600) == "sched:01JSCHED:1767225600"
    assert chunk_id("01JBF", 7) == "01JBF:7"
    assert backfill_run_key("01JBF", 7) == "backfill:01JBF:chunk:7"


def test_sha256_hex_is_lowercase_hex_of_utf8() -> None:
    assert sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex("abc") == abc


def test_public_names_are_exactly_all() -> None:
    """Every name in __all__ exists, and no public function is missing from it."""
    public = {
        name
        for name, value in vars(ids).items()
        if not name.startswith("_") and callable(value) and value.__module__ == ids.__name__
    }
    assert public <= set(ids.__all__)
    assert all(hasattr(ids, name) for name in ids.__all__)


# --- run ids never contain ':' -------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "run:1", ":"])
def test_builders_reject_run_ids_that_cannot_be_parsed_back(bad: str) -> None:
    with pytest.raises(ValueError):
        dispatch_id(bad, "t", 1)
    with pytest.raises(ValueError):
        retry_timer_id(bad, "t", 1, 0)
    with pytest.raises(ValueError):
        heartbeat_timer_id(bad, "t", 1, 0)
    with pytest.raises(ValueError):
        sla_timer_id(bad, 0)


# --- parse round trips ---------------------------------------------------------------


@given(run_ids, task_keys, attempts)
def test_dispatch_run_id_round_trips(run_id: str, task_key: str, attempt: int) -> None:
    assert dispatch_run_id(dispatch_id(run_id, task_key, attempt)) == run_id


@given(run_ids, any_task_keys, attempts)
def test_dispatch_run_id_survives_colons_in_task_keys(
    run_id: str, task_key: str, attempt: int
) -> None:
    assert dispatch_run_id(dispatch_id(run_id, task_key, attempt)) == run_id


@given(run_ids, any_task_keys, attempts, epochs)
def test_timer_run_id_round_trips(run_id: str, task_key: str, attempt: int, epoch: int) -> None:
    assert timer_run_id(retry_timer_id(run_id, task_key, attempt, epoch)) == run_id
    assert timer_run_id(heartbeat_timer_id(run_id, task_key, attempt, epoch)) == run_id
    assert timer_run_id(sla_timer_id(run_id, epoch)) == run_id


@given(st.text(max_size=30), epochs)
def test_cron_timer_ids_name_no_run(schedule_id: str, epoch: int) -> None:
    assert timer_run_id(cron_timer_id(schedule_id, epoch)) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dispatch",
        "dispatch:",
        "dispatch:run_1",
        "dispatch:run_1:extract",
        "dispatch:run_1:extract:one",
        "dispatch::extract:1",
        "timer:retry:run_1:extract:1:1767225600",
        "Dispatch:run_1:extract:1",
    ],
)
def test_dispatch_run_id_refuses_non_dispatch_ids(text: str) -> None:
    assert dispatch_run_id(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "timer",
        "timer:retry",
        "timer:retry:run_1",
        "timer:retry:run_1:extract:1",
        "timer:retry:run_1:extract:x:1767225600",
        "timer:retry::extract:1:1767225600",
        "timer:heartbeat:run_1:extract:1:soon",
        "timer:sla:run_1",
        "timer:sla:run_1:",
        "timer:sla:run_1:later",
        "timer:cron:01JSCHED:1767225600",
        "timer:other:run_1:1767225600",
        "dispatch:run_1:extract:1",
    ],
)
def test_timer_run_id_refuses_cron_and_junk(text: str) -> None:
    assert timer_run_id(text) is None


# --- cloud task ids ------------------------------------------------------------------


@given(st.sampled_from(["d", "t"]), st.text())
def test_cloud_task_id_is_a_valid_cloud_tasks_name(prefix: str, internal: str) -> None:
    name = cloud_task_id(prefix, internal)
    assert CLOUD_TASK_ID.match(name)
    assert CLOUD_TASKS_NAME_CHARSET.match(name)
    assert name.startswith(prefix + "_")


@given(st.text(), st.text())
def test_distinct_internal_ids_get_distinct_cloud_task_ids(a: str, b: str) -> None:
    assert (cloud_task_id("t", a) == cloud_task_id("t", b)) == (a == b)


@pytest.mark.parametrize("prefix", ["", "x", "D", "dt", "d_", "timer"])
def test_cloud_task_id_rejects_unknown_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        cloud_task_id(prefix, "dispatch:run_1:extract:1")


def test_timer_cloud_task_id_hashes_every_timer_kind_with_t() -> None:
    timer_ids = [
        retry_timer_id("run_1", "extract", 1, 10),
        heartbeat_timer_id("run_1", "extract", 1, 10),
        cron_timer_id("01JSCHED", 10),
        sla_timer_id("run_1", 10),
    ]
    names = [timer_cloud_task_id(timer_id) for timer_id in timer_ids]
    assert names == [cloud_task_id("t", timer_id) for timer_id in timer_ids]
    assert len(set(names)) == len(names)


def test_typed_cloud_task_id_helpers_refuse_the_wrong_kind_of_id() -> None:
    with pytest.raises(ValueError, match="dispatch"):
        dispatch_cloud_task_id(sla_timer_id("run_1", 10))
    with pytest.raises(ValueError, match="timer"):
        timer_cloud_task_id(dispatch_id("run_1", "extract", 1))
    with pytest.raises(ValueError, match="timer"):
        timer_cloud_task_id("timer:snooze:run_1:10")


# --- HMAC run ids ------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=32), st.text(max_size=40))
def test_run_ids_are_deterministic_and_parseable(secret: bytes, run_key: str) -> None:
    run_id = run_id_from_run_key(secret, "acme", "prod", run_key)
    assert run_id == run_id_from_run_key(secret, "acme", "prod", run_key)
    assert re.fullmatch(r"run_[a-z2-7]{26}", run_id)
    assert dispatch_run_id(dispatch_id(run_id, "extract", 1)) == run_id


def test_run_ids_are_namespaced_by_secret_tenant_and_workspace() -> None:
    key = "sched:01J:1767225600"
    base = run_id_from_run_key(b"secret", "acme", "prod", key)
    assert run_id_from_run_key(b"other", "acme", "prod", key) != base
    assert run_id_from_run_key(b"secret", "globex", "prod", key) != base
    assert run_id_from_run_key(b"secret", "acme", "dev", key) != base
    assert run_id_from_run_key(b"secret", "acme", "prod", key + "x") != base


@pytest.mark.parametrize(
    ("secret", "tenant", "workspace"),
    [(b"", "acme", "prod"), (b"s", "", "prod"), (b"s", "ac:me", "prod"), (b"s", "acme", "pr:od")],
)
def test_run_id_from_run_key_rejects_ambiguous_or_unkeyed_input(
    secret: bytes, tenant: str, workspace: str
) -> None:
    with pytest.raises(ValueError):
        run_id_from_run_key(secret, tenant, workspace, "k")


# --- ULIDs ------------------------------------------------------------------------


def test_new_ulid_matches_an_independent_encoding() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    randomness = bytes(range(1, 11))
    millis = 1767225600 * 1000
    expected = _crockford(millis << 80 | int.from_bytes(randomness, "big"), 26)
    assert new_ulid(now, randomness) == expected
    assert new_ulid(now, bytes(10)) == _crockford(millis, 10) + "0" * 16


@given(aware_instants, st.binary(min_size=10, max_size=10))
def test_new_ulid_is_deterministic_and_round_trips_its_timestamp(
    now: datetime, randomness: bytes
) -> None:
    value = new_ulid(now, randomness)
    assert value == new_ulid(now, randomness)
    assert is_ulid(value)
    truncated = now.replace(microsecond=now.microsecond // 1000 * 1000)
    assert ulid_timestamp(value) == truncated
    assert ulid_timestamp(value).tzinfo == UTC


@given(aware_instants, aware_instants, st.binary(min_size=10, max_size=10))
def test_ulids_sort_in_millisecond_order(a: datetime, b: datetime, randomness: bytes) -> None:
    """String order is time order, which is why fold order can be event_id order."""
    assume(
        a.replace(microsecond=a.microsecond // 1000) != b.replace(microsecond=b.microsecond // 1000)
    )
    earlier, later = sorted((a, b))
    # The earlier id gets the largest randomness: the timestamp must still dominate.
    assert new_ulid(earlier, b"\xff" * 10) < new_ulid(later, bytes(10))
    assert new_ulid(earlier, randomness) < new_ulid(later, randomness)


def test_new_ulid_uses_the_instant_not_the_wall_clock_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 1, 2, 0, tzinfo=plus_two)
    assert new_ulid(local, bytes(10)) == new_ulid(datetime(2026, 1, 1, tzinfo=UTC), bytes(10))
    assert ulid_timestamp(new_ulid(local, bytes(10))) == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "randomness"),
    [
        (datetime(2026, 1, 1), bytes(10)),
        (datetime(2026, 1, 1, tzinfo=UTC), bytes(9)),
        (datetime(2026, 1, 1, tzinfo=UTC), bytes(11)),
        (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), bytes(10)),
    ],
)
def test_new_ulid_rejects_naive_times_bad_randomness_and_pre_epoch(
    now: datetime, randomness: bytes
) -> None:
    with pytest.raises(ValueError):
        new_ulid(now, randomness)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01KDX1234567890ABCDEFGHJK",  # 25 chars
        "01KDX1234567890ABCDEFGHJKMN",  # 27 chars
        "01kdx1234567890abcdefghjkm",  # lower case
        "01KDX1234567890ABCDEFGHJKI",  # I is not Crockford
        "01KDX1234567890ABCDEFGHJKU",  # nor U
        "81KDX1234567890ABCDEFGHJKM",  # overflows 128 bits
    ],
)
def test_is_ulid_accepts_only_canonical_ulids(text: str) -> None:
    assert not is_ulid(text)
    with pytest.raises(ValueError):
        ulid_timestamp(text)


def test_is_ulid_accepts_canonical_and_rejects_non_strings() -> None:
    assert is_ulid("01KDX1234567890ABCDEFGHJKM")
    assert is_ulid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert not is_ulid(None)
    assert not is_ulid(b"01KDX1234567890ABCDEFGHJKM")


# --- retry backoff ------------------------------------------------------------------


def test_retry_backoff_formula_examples() -> None:
    assert retry_backoff(1, jitter=0.0) == 0.5
    assert retry_backoff(1, jitter=0.5) == 0.75
    assert retry_backoff(4, jitter=0.0) == 4.0
    assert retry_backoff(10, jitter=0.0) == 150.0  # min(300, 512) / 2
    assert retry_backoff(10_000, jitter=0.0) == 150.0  # overflowing growth is the cap
    assert retry_backoff(3, base_sec=0.0, jitter=0.9) == 0.0
    assert retry_backoff(5, base_sec=2.0, factor=3.0, cap_sec=1000.0, jitter=0.0) == 81.0


backoff_params = st.fixed_dictionaries(
    {
        "base_sec": st.floats(min_value=0.0, max_value=1e6),
        "factor": st.floats(min_value=1.0, max_value=100.0),
        "cap_sec": st.floats(min_value=0.0, max_value=1e9),
        "jitter": st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    }
)


@given(st.integers(min_value=1, max_value=100_000), backoff_params)
def test_retry_backoff_stays_within_bounds(attempt: int, params: dict[str, float]) -> None:
    delay = retry_backoff(attempt, **params)
    first = retry_backoff(1, **params)
    assert 0.0 <= delay <= params["cap_sec"]
    assert delay >= first
    assert delay >= min(params["cap_sec"], params["base_sec"]) / 2


@given(
    st.integers(min_value=1, max_value=2_000),
    st.integers(min_value=1, max_value=2_000),
    backoff_params,
)
def test_retry_backoff_never_shrinks_with_fixed_jitter(
    a: int, b: int, params: dict[str, float]
) -> None:
    low, high = sorted((a, b))
    assert retry_backoff(low, **params) <= retry_backoff(high, **params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": 0, "jitter": 0.0},
        {"attempt": 1, "jitter": 1.0},
        {"attempt": 1, "jitter": -0.1},
        {"attempt": 1, "jitter": float("nan")},
        {"attempt": 1, "jitter": 0.0, "factor": 0.5},
        {"attempt": 1, "jitter": 0.0, "base_sec": -1.0},
        {"attempt": 1, "jitter": 0.0, "cap_sec": float("inf")},
        {"attempt": 1, "jitter": 0.0, "base_sec": float("nan")},
    ],
)
def test_retry_backoff_rejects_out_of_range_arguments(kwargs: dict[str, float]) -> None:
    attempt = int(kwargs.pop("attempt"))
    with pytest.raises(ValueError):
        retry_backoff(attempt, **kwargs)


def test_sla_timer_ids_of_either_shape_name_their_run() -> None:
    """SPEC: `timer:sla:...` has the same shape: run-level or task-level."""
    assert timer_run_id("timer:sla:run_1:1767225600") == "run_1"
    assert timer_run_id("timer:sla:run_1:extract:1:1767225600") == "run_1"


def test_parse_timer_id_names_type_run_task_and_attempt() -> None:
    assert parse_timer_id(retry_timer_id("run_1", "a:b", 2, 99)) == ("RETRY", "run_1", "a:b", 2)
    assert parse_timer_id(heartbeat_timer_id("run_1", "t", 1, 5)) == ("HEARTBEAT_CHECK", "run_1", "t", 1)
    assert parse_timer_id(sla_timer_id("run_1", 5)) == ("SLA_CHECK", "run_1", None, None)
    assert parse_timer_id("timer:sla:run_1:t:3:5") == ("SLA_CHECK", "run_1", "t", 3)
    assert parse_timer_id(cron_timer_id("01JSCHED", 5)) == ("CRON", None, None, None)
    assert parse_timer_id("timer:other:run_1:5") is None
    assert parse_timer_id("nonsense") is None
