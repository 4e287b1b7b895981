"""Identifier validation and tenant/workspace scoping: nothing accepted can escape or collide."""

from __future__ import annotations

import posixpath
import unicodedata
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo._errors import InvalidId
from servo.storage import (
    BatchConflict,
    IdKind,
    MemoryStore,
    ScopedStore,
    validate_id,
    validate_object_name,
)

# The scope properties are the proof that no tenant can reach another's objects,
# and they are cheap: run at least 400 examples, more under a deeper profile.
EXAMPLES = max(settings().max_examples, 400)

KINDS: tuple[IdKind, ...] = get_args(IdKind)
PLAIN_KINDS = [k for k in KINDS if k != "event"]
VALID_ULID = "01KDWPVNG07T4ZHFH0R9SDG7BQ"

# Near-miss alphabets: mostly legal characters plus every troublemaker.
TRICKY_CHARS = [
    *"aZ09_.-",
    "/",
    "\\",
    ":",
    "\x00",
    "\n",
    " ",
    "\uff0e",
    "\uff0f",
    "\u00e9",
    "\u200b",
    "\u0430",
]
tricky_text = st.text(alphabet=st.sampled_from(TRICKY_CHARS), max_size=12)
id_like = st.one_of(
    st.text(max_size=20),
    tricky_text,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
)
segment_like = st.one_of(st.sampled_from([".", "..", "", "a", "b.json", "..."]), tricky_text)
relative_like = st.one_of(
    st.text(max_size=30), st.lists(segment_like, min_size=1, max_size=5).map("/".join)
)


def accepted_scope(tenant: str, workspace: str) -> ScopedStore | None:
    try:
        return ScopedStore(MemoryStore(), tenant, workspace)
    except InvalidId:
        return None


@settings(max_examples=EXAMPLES, deadline=None)
@given(tenant=id_like, workspace=id_like, relative=relative_like)
def test_no_accepted_input_produces_a_name_outside_its_prefix(
    tenant: str, workspace: str, relative: str
) -> None:
    scope = accepted_scope(tenant, workspace)
    if scope is None:
        return
    assert scope.prefix == f"tenants/{tenant}/workspaces/{workspace}/"
    try:
        full = scope.full_name(relative)
    except InvalidId:
        return
    assert full == scope.prefix + relative
    assert posixpath.normpath(full) == full  # no '.', '..' or '//' left to resolve
    assert not posixpath.isabs(full)
    assert full.isascii() and unicodedata.normalize("NFKC", full) == full
    assert full.split("/")[:4] == ["tenants", tenant, "workspaces", workspace]
    scope.put_if_absent(relative, b"x")
    assert scope.store.list_prefix("") == [full]


@settings(max_examples=EXAMPLES, deadline=None)
@given(first=st.tuples(id_like, id_like), second=st.tuples(id_like, id_like))
def test_distinct_valid_scopes_never_collide_or_nest(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    a, b = accepted_scope(*first), accepted_scope(*second)
    if a is None or b is None or first == second:
        return
    assert not a.prefix.startswith(b.prefix)
    assert not b.prefix.startswith(a.prefix)


@settings(max_examples=EXAMPLES, deadline=None)
@given(kind=st.sampled_from(PLAIN_KINDS), value=id_like)
def test_accepted_ids_are_single_safe_segments(kind: IdKind, value: str) -> None:
    try:
        validate_id(kind, value)
    except InvalidId as error:
        assert "\n" not in str(error) and kind in str(error)
        return
    assert 1 <= len(value) <= 128
    assert value.isascii() and unicodedata.normalize("NFKC", value) == value
    assert value not in (".", "..")
    assert not set(value) & set("/\\: \x00")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        "/",
        "\x00",
        "a\x00",
        "a/../b",
        "a/b",
        "a\\b",
        "\uff0e\uff0e",  # fullwidth '..' (NFKC-folds to '..')
        "\uff41cme",  # fullwidth 'a'
        "\u0430cme",  # Cyrillic small a
        "ac\u200bme",  # zero-width space
        " acme",
        "acme ",
        "-acme",
        "_acme",
        ".acme",
        "a:b",
        "x" * 10_000,
    ],
)
def test_unsafe_or_malformed_ids_are_rejected_with_a_one_line_message(
    kind: IdKind, value: str
) -> None:
    with pytest.raises(InvalidId) as caught:
        validate_id(kind, value)
    message = str(caught.value)
    assert message.startswith(f"invalid {kind} id")
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("kind", PLAIN_KINDS)
@pytest.mark.parametrize(
    "value", ["acme", "prod", "run_pld2gkejnpskxkz3vbnut5sq74", "extract.v2-a_b", "A", "x" * 128]
)
def test_well_formed_ids_are_accepted_unchanged(kind: IdKind, value: str) -> None:
    assert validate_id(kind, value) == value


def test_run_id_with_colon_is_rejected_because_dispatch_ids_split_on_colon() -> None:
    with pytest.raises(InvalidId, match="separator of dispatch ids"):
        validate_id("run", "run:1")


def test_id_length_cap_is_128() -> None:
    assert validate_id("tenant", "t" * 128)
    with pytest.raises(InvalidId, match="129 characters"):
        validate_id("tenant", "t" * 129)


def test_non_ascii_id_message_names_the_code_point() -> None:
    with pytest.raises(InvalidId, match="U\\+FF0E"):
        validate_id("workspace", "\uff0e\uff0e")


def test_event_ids_must_be_canonical_ulids() -> None:
    assert validate_id("event", VALID_ULID) == VALID_ULID
    for bad in [
        VALID_ULID.lower(),
        VALID_ULID[:-1],
        VALID_ULID + "0",
        "8" + VALID_ULID[1:],
        VALID_ULID[:-1] + "U",
    ]:
        with pytest.raises(InvalidId, match="ULID"):
            validate_id("event", bad)


@pytest.mark.parametrize(
    "relative",
    [
        "",
        "..",
        ".",
        "/etc/passwd",
        "a/../b",
        "a/./b",
        "../x",
        "a//b",
        "a/",
        "a\\b",
        "a\x00",
        "\uff0e\uff0e/x",
        "x" * 10_000,
    ],
)
def test_scoped_store_rejects_names_that_could_escape(relative: str) -> None:
    scope = ScopedStore(MemoryStore(), "acme", "prod")
    with pytest.raises(InvalidId):
        scope.put_if_absent(relative, b"x")
    assert scope.store.list_prefix("") == []


def test_scoped_name_length_is_capped_so_the_full_name_fits_gcs() -> None:
    scope = ScopedStore(MemoryStore(), "acme", "prod")
    room = 1024 - len(scope.prefix)
    longest = "/".join(["x" * 200] * 5)[:room]
    scope.put_if_absent(longest, b"x")
    with pytest.raises(InvalidId, match="limit"):
        scope.put_if_absent(longest + "x", b"x")


def test_scoped_store_prefixes_names_and_lists_relative_names_of_its_scope_only() -> None:
    raw = MemoryStore()
    acme = ScopedStore(raw, "a", "prod")
    other = ScopedStore(raw, "ab", "prod")
    acme.put_if_absent("ledger/1.json", b"acme")
    other.put_if_absent("ledger/1.json", b"other")
    assert raw.list_prefix("") == [
        "tenants/a/workspaces/prod/ledger/1.json",
        "tenants/ab/workspaces/prod/ledger/1.json",
    ]
    assert acme.list_prefix("") == ["ledger/1.json"]
    assert acme.list_prefix("led") == ["ledger/1.json"]
    assert acme.get("ledger/1.json").data == b"acme"
    assert other.get("ledger/1.json").data == b"other"
    generation = acme.head("ledger/1.json")
    assert generation is not None
    acme.put_if_generation_match("ledger/1.json", b"acme2", generation)
    assert other.get("ledger/1.json").data == b"other"
    with pytest.raises(InvalidId):
        acme.list_prefix("../")


def test_scoped_batch_conflict_names_relative_objects() -> None:
    scope = ScopedStore(MemoryStore(), "acme", "prod")
    scope.put_if_absent("x", b"1")
    with pytest.raises(BatchConflict) as caught:
        scope.put_many_if_absent([("x", b"2"), ("y", b"3")])
    assert caught.value.conflicting == ["x"]
    assert caught.value.created == [False, True]


@pytest.mark.parametrize(
    "name", ["tenants/acme/x.json", "a:b/c=d,e@f+g~h", "a/.hidden", "a/...", "x" * 255]
)
def test_object_names_with_allowed_characters_are_accepted(name: str) -> None:
    assert validate_object_name(name) == name


def test_object_name_segment_longer_than_a_filename_is_rejected() -> None:
    with pytest.raises(InvalidId, match="segment"):
        validate_object_name("x" * 256)


def test_scoped_store_deletes_in_its_scope_and_never_a_ledger_object() -> None:
    """P1: the ledger is append-only, so a scoped store refuses to delete under `ledger/`."""
    raw = MemoryStore()
    scope = ScopedStore(raw, "acme", "prod")
    scope.put_if_absent("state/l0/1.parquet", b"x")
    scope.put_if_absent("ledger/orchestration/2026-01-01/e.json", b"{}")
    assert scope.delete("state/l0/1.parquet") is True
    assert raw.list_prefix("") == ["tenants/acme/workspaces/prod/ledger/orchestration/2026-01-01/e.json"]
    with pytest.raises(InvalidId, match="append-only"):
        scope.delete("ledger/orchestration/2026-01-01/e.json")
    assert scope.head("ledger/orchestration/2026-01-01/e.json") is not None
