"""GcsStore beyond the shared contract: retries, backoff and ambiguous writes.

Failures are injected by wrapping the typed adapter's calls; the writes that
do happen go to the real fake-gcs-server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client

from servo._errors import CasConflict, ObjectExists, StorageError
from servo.storage import GcsStore, RetryPolicy

pytestmark = pytest.mark.gcs

Upload = Callable[[str, bytes, int], int]


def gcs_error(kind: type[Exception], message: str) -> Exception:
    """An api_core error, built through a typed seam (its constructors are unannotated)."""
    return kind(message)


def recording_store(client: Any, bucket: str, policy: RetryPolicy) -> tuple[GcsStore, list[float]]:
    """A store whose backoff sleeps are recorded instead of slept."""
    sleeps: list[float] = []
    return GcsStore(bucket, client, retry=policy, sleep=sleeps.append), sleeps


def wrap_upload(
    monkeypatch: pytest.MonkeyPatch,
    store: GcsStore,
    wrapper: Callable[[Upload, int, str, bytes, int], int],
) -> None:
    """Replace the adapter's upload with ``wrapper(real_upload, call_number, ...)``."""
    real: Upload = store._bucket.upload
    calls = [0]

    def upload(name: str, data: bytes, if_generation_match: int) -> int:
        calls[0] += 1
        return wrapper(real, calls[0], name, data, if_generation_match)

    monkeypatch.setattr(store._bucket, "upload", upload)


def test_create_whose_response_was_lost_is_not_reported_as_object_exists(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sleeps = recording_store(gcs_client, gcs_bucket, RetryPolicy())

    def landed_then_lost(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        generation = real(name, data, match)
        if call == 1:
            raise gcs_error(
                api_exceptions.ServiceUnavailable, "response lost after the write landed"
            )
        return generation

    wrap_upload(monkeypatch, store, landed_then_lost)
    generation = store.put_if_absent("ledger/e.json", b"event")
    assert generation == store.head("ledger/e.json")
    assert len(sleeps) == 1


def test_cas_whose_response_was_lost_returns_the_generation_it_wrote(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = recording_store(gcs_client, gcs_bucket, RetryPolicy())
    first = store.put_if_absent("pointer", b"v1")

    def landed_then_lost(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        generation = real(name, data, match)
        if call == 1:
            raise ConnectionResetError("connection reset after the write landed")
        return generation

    wrap_upload(monkeypatch, store, landed_then_lost)
    second = store.put_if_generation_match("pointer", b"v2", first)
    assert store.get("pointer").generation == second != first


def test_create_after_ambiguous_failure_conflicts_when_someone_else_wrote_other_bytes(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = recording_store(gcs_client, gcs_bucket, RetryPolicy())

    def other_writer_won(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        if call == 1:
            real(name, b"someone else's event", 0)
            raise gcs_error(api_exceptions.InternalServerError, "ambiguous")
        return real(name, data, match)

    wrap_upload(monkeypatch, store, other_writer_won)
    with pytest.raises(ObjectExists):
        store.put_if_absent("ledger/e.json", b"my event")
    assert store.get("ledger/e.json").data == b"someone else's event"


def test_cas_after_ambiguous_failure_conflicts_when_the_object_moved_on(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = recording_store(gcs_client, gcs_bucket, RetryPolicy())
    first = store.put_if_absent("pointer", b"v1")

    def other_writer_won(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        if call == 1:
            real(name, b"other", match)
            raise gcs_error(api_exceptions.GatewayTimeout, "ambiguous")
        return real(name, data, match)

    wrap_upload(monkeypatch, store, other_writer_won)
    with pytest.raises(CasConflict):
        store.put_if_generation_match("pointer", b"mine", first)


def test_rate_limited_writes_are_retried_with_capped_growing_backoff(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=1.5, multiplier=2.0)
    store, sleeps = recording_store(gcs_client, gcs_bucket, policy)

    def throttled(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        if call <= 3:
            raise gcs_error(api_exceptions.TooManyRequests, "slow down")
        return real(name, data, match)

    wrap_upload(monkeypatch, store, throttled)
    store.put_if_absent("hot", b"x")
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0
    assert all(0.75 <= s <= 1.5 for s in sleeps[1:])
    with pytest.raises(ObjectExists):  # 429 is never ambiguous: a real duplicate still conflicts
        store.put_if_absent("hot", b"x")


def test_persistent_server_errors_become_storage_error_after_max_attempts(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sleeps = recording_store(gcs_client, gcs_bucket, RetryPolicy(max_attempts=4))
    calls: list[int] = []

    def down(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        calls.append(call)
        raise gcs_error(api_exceptions.ServiceUnavailable, "down")

    wrap_upload(monkeypatch, store, down)
    with pytest.raises(StorageError, match="after 4 attempts"):
        store.put_if_absent("x", b"x")
    assert calls == [1, 2, 3, 4]
    assert len(sleeps) == 3


def test_non_retryable_errors_fail_at_once_as_storage_error(
    gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sleeps = recording_store(gcs_client, gcs_bucket, RetryPolicy())

    def forbidden(real: Upload, call: int, name: str, data: bytes, match: int) -> int:
        raise gcs_error(api_exceptions.Forbidden, "no access")

    wrap_upload(monkeypatch, store, forbidden)
    with pytest.raises(StorageError, match="no access") as caught:
        store.put_if_absent("x", b"x")
    assert not isinstance(caught.value, ObjectExists)
    assert sleeps == []


def test_missing_bucket_is_a_storage_error(gcs_client: Any) -> None:
    store = GcsStore("no-such-bucket", gcs_client, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(StorageError):
        store.put_if_absent("x", b"x")


def test_unreachable_server_fails_fast_with_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Otherwise the client starts a daemon thread fetching bucket metadata that
    # retries the dead endpoint for ~2 minutes, outliving this test.
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    client = Client(
        project="servo-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": "http://127.0.0.1:9"},
    )
    try:
        store = GcsStore(
            "b", client, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, timeout=2.0)
        )
        with pytest.raises(StorageError, match="after 2 attempts"):
            store.get("x")
        with pytest.raises(StorageError, match="after 2 attempts"):
            store.put_if_absent("x", b"x")
    finally:
        client.close()


def test_retry_delay_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_delay=0.1, max_delay=2.0, multiplier=2.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 2.0), (5000, 2.0)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"timeout": 0.0},
        {"initial_delay": -1.0},
        {"initial_delay": 10.0, "max_delay": 1.0},
        {"multiplier": 0.5},
    ],
)
def test_retry_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**bad)


def test_unexpected_client_errors_surface_as_storage_error(
    gcs_store: GcsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(name: str) -> Any:
        raise RuntimeError("checksum mismatch")

    monkeypatch.setattr(gcs_store._bucket, "download", corrupt)
    with pytest.raises(StorageError, match="checksum mismatch"):
        gcs_store.get("x")
