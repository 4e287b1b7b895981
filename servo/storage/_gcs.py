"""Google Cloud Storage ``ObjectStore``, through a small typed adapter over the untyped client.

Preconditions do the work: ``if_generation_match=0`` makes an upload
create-only, ``if_generation_match=g`` makes it a compare-and-swap, and GCS
answers 412 (``PreconditionFailed``) when either does not hold.

Retries are ours, not the library's (every call passes ``retry=None``): 429
and 5xx answers and transport errors are retried with capped exponential
backoff and jitter, a bounded number of times. Ours, because only we know
whether an earlier attempt of *this* call may have landed: a create whose
response was lost comes back as 412 on the retry. When that happens we read
the object back, and if it holds exactly our bytes we report success instead
of a false ``ObjectExists``/``CasConflict``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from servo._errors import CasConflict, ObjectExists, ObjectNotFound, StorageError
from servo.storage._protocol import StoredObject, put_each_if_absent
from servo.storage._scope import validate_object_name, validate_prefix

__all__ = ["GcsStore", "RetryPolicy"]

_T = TypeVar("_T")

# A private generator: jitter must not consume (or be replayed from) the global
# random state that tests and replay tools seed.
_jitter = random.Random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard ``GcsStore`` tries: attempts, backoff and per-request timeout (seconds)."""

    max_attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.timeout <= 0:
            raise ValueError("RetryPolicy needs max_attempts >= 1 and timeout > 0")
        if not 0 <= self.initial_delay <= self.max_delay or self.multiplier < 1:
            raise ValueError(
                "RetryPolicy needs 0 <= initial_delay <= max_delay and multiplier >= 1"
            )

    def delay(self, failed_attempts: int) -> float:
        """Backoff before the next attempt: exponential, capped, with jitter in [50%, 100%]."""
        exponent = min(max(failed_attempts - 1, 0), 64)  # 64 doublings exceed any sane cap
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return ceiling * _jitter.uniform(0.5, 1.0)


def _is_retryable(error: BaseException) -> bool:
    """408, 429 and 5xx answers, and transport failures (which may or may not have landed)."""
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in (408, 429, 500, 502, 503, 504)
    if isinstance(error, ValueError):  # e.g. requests' InvalidURL: a bug, not weather
        return False
    # requests' ConnectionError/Timeout are OSErrors; google-auth wraps others.
    return isinstance(error, OSError | auth_exceptions.TransportError)


class _Bucket:
    """The four calls Servo makes, typed. ``client`` is a ``google.cloud.storage.Client``."""

    def __init__(self, client: Any, bucket_name: str, timeout: float) -> None:
        self._client = client
        self._bucket = client.bucket(bucket_name)
        self._timeout = timeout

    def upload(self, name: str, data: bytes, if_generation_match: int) -> int:
        blob = self._bucket.blob(name)
        blob.upload_from_string(
            data,
            content_type="application/octet-stream",
            if_generation_match=if_generation_match,
            retry=None,
            timeout=self._timeout,
        )
        return int(blob.generation)

    def download(self, name: str) -> StoredObject:
        blob = self._bucket.blob(name)
        data = blob.download_as_bytes(retry=None, timeout=self._timeout)
        # The generation comes from the same response's x-goog-generation header,
        # so bytes and generation always belong together.
        return StoredObject(bytes(data), int(blob.generation))

    def generation(self, name: str) -> int | None:
        blob = self._bucket.get_blob(name, retry=None, timeout=self._timeout)
        return None if blob is None else int(blob.generation)

    def delete(self, name: str) -> None:
        self._bucket.delete_blob(name, retry=None, timeout=self._timeout)

    def list_names(self, prefix: str) -> list[str]:
        blobs = self._client.list_blobs(
            self._bucket, prefix=prefix, retry=None, timeout=self._timeout
        )
        return [str(blob.name) for blob in blobs]


class GcsStore:
    """An ``ObjectStore`` on one GCS bucket.

    ``client`` is a ``google.cloud.storage.Client``; the caller owns it (and
    closes it). ``sleep`` is injectable so tests can retry without waiting.

    Note: google-cloud-storage >= 3.17 starts a daemon thread per bucket that
    fetches bucket metadata for tracing (it needs ``storage.buckets.get`` and,
    against an unreachable endpoint, keeps retrying for up to two minutes).
    Set ``DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA=true`` to turn it off.
    """

    def __init__(
        self,
        bucket_name: str,
        client: Any,
        *,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket_name: Final = bucket_name
        self._bucket = _Bucket(client, bucket_name, retry.timeout)
        self._retry = retry
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"GcsStore({self.bucket_name!r})"

    def _call(
        self,
        what: str,
        operation: Callable[[], _T],
        *,
        expect: tuple[type[Exception], ...] = (),
        ambiguous: list[bool] | None = None,
    ) -> _T:
        """Run ``operation`` with bounded retries.

        Errors in ``expect`` propagate for the caller to interpret; anything
        else becomes ``StorageError``. ``ambiguous[0]`` is set when a failed
        attempt may nevertheless have been applied (anything but a 429).
        """
        attempt = 1
        while True:
            try:
                return operation()
            except expect:
                raise
            except Exception as error:
                if not _is_retryable(error):
                    raise StorageError(f"GCS {what} failed: {error}") from error
                if attempt >= self._retry.max_attempts:
                    raise StorageError(
                        f"GCS {what} failed after {attempt} attempts: {error}"
                    ) from error
                if ambiguous is not None and not isinstance(error, api_exceptions.TooManyRequests):
                    ambiguous[0] = True
                self._sleep(self._retry.delay(attempt))
                attempt += 1

    def _upload(self, name: str, data: bytes, if_generation_match: int) -> int | None:
        """Upload with a precondition; return the new generation, or None on 412.

        After an ambiguous attempt, a 412 whose object holds exactly ``data`` is
        taken as our own earlier write and its generation returned.
        """
        ambiguous = [False]
        try:
            return self._call(
                f"upload of gs://{self.bucket_name}/{name}",
                lambda: self._bucket.upload(name, data, if_generation_match),
                expect=(api_exceptions.PreconditionFailed,),
                ambiguous=ambiguous,
            )
        except api_exceptions.PreconditionFailed:
            if ambiguous[0]:
                current = self._get_or_none(name)
                if current is not None and current.data == data:
                    return current.generation
            return None

    def _get_or_none(self, name: str) -> StoredObject | None:
        try:
            return self._call(
                f"download of gs://{self.bucket_name}/{name}",
                lambda: self._bucket.download(name),
                expect=(api_exceptions.NotFound,),
            )
        except api_exceptions.NotFound:
            return None

    def get(self, name: str) -> StoredObject:
        """See ``ObjectStore.get``."""
        found = self._get_or_none(validate_object_name(name))
        if found is None:
            raise ObjectNotFound(f"object {name!r} does not exist")
        return found

    def put_if_absent(self, name: str, data: bytes) -> int:
        """See ``ObjectStore.put_if_absent``."""
        generation = self._upload(validate_object_name(name), data, 0)
        if generation is None:
            raise ObjectExists(f"object {name!r} already exists")
        return generation

    def put_if_generation_match(self, name: str, data: bytes, generation: int) -> int:
        """See ``ObjectStore.put_if_generation_match``."""
        validate_object_name(name)
        if generation < 0:
            raise CasConflict(f"object {name!r} cannot be at generation {generation}")
        new_generation = self._upload(name, data, generation)
        if new_generation is None:
            raise CasConflict(f"object {name!r} is no longer at generation {generation}")
        return new_generation

    def head(self, name: str) -> int | None:
        """See ``ObjectStore.head``."""
        validate_object_name(name)
        return self._call(
            f"metadata read of gs://{self.bucket_name}/{name}",
            lambda: self._bucket.generation(name),
        )

    def list_prefix(self, prefix: str) -> list[str]:
        """See ``ObjectStore.list_prefix``. Repair / anti-entropy only (P6)."""
        validate_prefix(prefix)
        return sorted(
            self._call(
                f"listing of gs://{self.bucket_name}/{prefix}",
                lambda: self._bucket.list_names(prefix),
            )
        )

    def delete(self, name: str) -> bool:
        """See ``ObjectStore.delete``; a 404 (already gone, or a retried delete) is False."""
        validate_object_name(name)
        try:
            self._call(
                f"delete of gs://{self.bucket_name}/{name}",
                lambda: self._bucket.delete(name),
                expect=(api_exceptions.NotFound,),
            )
        except api_exceptions.NotFound:
            return False
        return True

    def put_many_if_absent(self, items: Sequence[tuple[str, bytes]]) -> list[bool]:
        """See ``ObjectStore.put_many_if_absent`` (one upload per item)."""
        for name, _ in items:
            validate_object_name(name)
        return put_each_if_absent(self, items)
