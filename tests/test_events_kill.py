"""Durability: kill -9 the real server while it takes event batches; after a restart,
every batch it acknowledged (200) is in the store, and every batch is all there or not
there at all."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import wait_for_server

from shopsearch.eval.events_bench import run_events_bench
from shopsearch.eval.loadtest import free_port

pytestmark = pytest.mark.slow

BATCH = 100
CLIENTS = 4


@contextmanager
def server(tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``shopsearch serve`` with an event store (no snapshot: search is not needed)."""
    port = free_port()
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopsearch.api.cli",
            "serve",
            "--index-dir",
            str(tmp_path / "index"),
            "--port",
            str(port),
            "--reload-interval",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "SHOPSEARCH_USER_KEY": "kill-test-key-0123456789",
            "SHOPSEARCH_EVENTS_DB": str(tmp_path / "events.db"),
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/healthz", proc, log.name)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def batch(client: int, number: int) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "events": [
            {
                "event_id": f"k{client}-{number}-{i}",
                "type": "view",
                "user": f"shopper-{i % 7}",
                "session": f"s{client}",
                "product_id": f"p{i}",
                "timestamp": now,
            }
            for i in range(BATCH)
        ]
    }


def test_acknowledged_events_survive_kill_9(tmp_path: Path) -> None:
    acked: list[str] = []  # "client-number" of batches answered 200
    sent: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream(url: str, client: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            for number in range(100_000):
                if stop.is_set():
                    return
                with lock:
                    sent.append(f"{client}-{number}")
                try:
                    r = http.post("/v1/events", json=batch(client, number))
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        acked.append(f"{client}-{number}")

    with server(tmp_path, "first") as (proc, url):
        threads = [threading.Thread(target=stream, args=(url, c)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:  # mid-stream, under load
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acked) >= 40, "the server acknowledged too few batches before the kill"
    assert len(sent) > len(acked)  # some batches were in flight when it died

    with server(tmp_path, "second") as (_, url):
        # The restarted server recovers the WAL and takes new events.
        r = httpx.post(f"{url}/v1/events", json=batch(99, 0), timeout=10)
        assert r.status_code == 200 and r.json()["stored"] == BATCH
        # A short run of the throughput benchmark (the full one: eval/events_bench.py).
        # The floor is half the 2,000 events/s target: a tripwire on a shared machine.
        bench = run_events_bench(url, batches=40, batch_size=100, clients=2, repeats=1)
        assert bench.errors == 0
        assert bench.median_events_per_s >= 1_000, bench
    conn = sqlite3.connect(tmp_path / "events.db")
    counts: dict[str, int] = {}
    for (event_id,) in conn.execute("SELECT event_id FROM events"):
        if event_id.startswith("bench-"):
            continue
        key = event_id[1:].rsplit("-", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    conn.close()
    lost = [b for b in acked if counts.get(b, 0) != BATCH]
    assert lost == [], f"{len(lost)} acknowledged batches lost or partial: {lost[:5]}"
    partial = {b: n for b, n in counts.items() if n != BATCH}
    assert partial == {}, f"batches half stored: {partial}"
