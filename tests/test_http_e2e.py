"""End to end over HTTP: a real uvicorn server on a free port serving the sample catalog.

Covers fields, filters, facets, timings, explain, 422s, metrics, a snapshot switch under
load with no failed request, a build killed midway leaving serving intact, and rollback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shopsearch.api.cli import sample_catalog_path
from shopsearch.eval.loadtest import free_port
from shopsearch.indexer.catalog import load_catalog
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.encoders import Encoder

pytestmark = pytest.mark.slow

SHOPSEARCH = [sys.executable, "-m", "shopsearch.api.cli"]


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("e2e-index")
    products, report = load_catalog(sample_catalog_path())
    build_snapshot(products, report, path, encoder, BuildOptions(probe_count=50))
    return path


@pytest.fixture(scope="module")
def server(index_dir: Path) -> Iterator[httpx.Client]:
    port = free_port()
    log = (index_dir / "server.log").open("w")
    proc = subprocess.Popen(
        [
            *SHOPSEARCH,
            "serve",
            "--index-dir",
            str(index_dir),
            "--port",
            str(port),
            "--reload-interval",
            "0.5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "SHOPSEARCH_ADMIN_TOKEN": "test-token",
            "SHOPSEARCH_USER_KEY": "http-e2e-test-key-0123456789",
        },
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_until(lambda: client.get("/readyz").status_code == 200, 180, "the server to be ready")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_search_box_query(server: httpx.Client, index_dir: Path) -> None:
    r = server.get("/v1/search", params={"q": "cordless drill"})
    assert r.status_code == 200
    body = r.json()
    assert body["hits"][0]["category"] == "Tools > Power Tools > Drills"
    assert sum(h["category"] == "Tools > Power Tools > Drills" for h in body["hits"][:5]) >= 4
    assert body["index_version"] == SnapshotStore(index_dir).current()
    assert {"encode", "dense", "lexical", "fuse", "filter", "total"} <= set(body["timings_ms"])
    assert body["degraded"] == [] and body["rerank"] == "off" and len(body["query_id"]) == 32
    hit = body["hits"][0]
    assert {"id", "score", "title", "brand", "category", "price", "in_stock", "image_url"} <= set(
        hit
    )
    assert "explain" not in hit and "rewrite" not in body  # nothing to rewrite
    typo = server.get("/v1/search", params={"q": "cordles dril"}).json()
    assert typo["rewrite"]["searched_q"] == "cordless drill"
    assert [c["reason"] for c in typo["rewrite"]["changes"]] == ["spelling", "spelling"]
    assert [h["id"] for h in typo["hits"]] == [h["id"] for h in body["hits"]]
    product = server.get(f"/v1/products/{hit['id']}").json()
    assert product["title"] == hit["title"]
    assert server.get("/v1/products/NOPE").status_code == 404


def test_post_with_filters_facets_explain(server: httpx.Client) -> None:
    r = server.post(
        "/v1/search",
        json={
            "q": "drill",
            "size": 5,
            "filters": {"category": "Tools > Power Tools", "price": {"max": 150}, "in_stock": True},
            "facets": ["brand", "price", "color"],
            "explain": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hits"]
    for hit in body["hits"]:
        assert (
            hit["category"].startswith("Tools > Power Tools")
            and hit["price"] <= 150
            and hit["in_stock"]
        )
        assert "fused_score" in hit["explain"]
    assert set(body["facets"]) == {"brand", "price", "color"}
    assert sum(b["count"] for b in body["facets"]["price"]) == body["total"]


@pytest.mark.parametrize(
    ("method", "payload", "field"),
    [
        ("GET", {"q": "   "}, "q"),
        ("GET", {"q": "x" * 513}, "q"),
        ("GET", {"q": "drill", "size": 101}, "size"),
        ("GET", {"q": "drill", "page": -1}, "page"),
        ("GET", {"q": "drill", "size": "ten"}, "size"),
        ("POST", {"q": ""}, "q"),
        ("POST", {"q": "drill", "filters": {"colour": "red"}}, "colour"),
        ("POST", {"q": "drill", "filters": {"price": {"min": 50, "max": 10}}}, "price"),
        ("POST", {"q": "drill", "filters": {"in_stock": "perhaps"}}, "in_stock"),
        ("POST", {"q": "drill", "page": 0}, "page"),
        ("POST", {"q": "drill", "mode": "fuzzy"}, "mode"),
        ("POST", {"q": "drill", "sise": 5}, "sise"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    server: httpx.Client, method: str, payload: dict, field: str
) -> None:  # type: ignore[type-arg]
    if method == "GET":
        r = server.get("/v1/search", params=payload)
    else:
        r = server.post("/v1/search", json=payload)
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any(field in loc for loc in locs), (field, locs)


def test_metrics_and_health(server: httpx.Client) -> None:
    server.get("/v1/search", params={"q": "hammer"})
    text = server.get("/metrics").text
    assert 'shopsearch_stage_latency_seconds_count{stage="encode"}' in text
    assert 'shopsearch_requests_total{endpoint="/v1/search",status="200"}' in text
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/v1/admin/snapshots").status_code == 401
    listed = server.get(
        "/v1/admin/snapshots", headers={"Authorization": "Bearer test-token"}
    ).json()
    assert [s["current"] for s in listed].count(True) == 1


def test_new_snapshot_is_served_without_dropping_requests(
    server: httpx.Client, index_dir: Path, encoder: Encoder
) -> None:
    store = SnapshotStore(index_dir)
    old = store.current()
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(server.base_url), timeout=30) as client:
            while not stop.is_set():
                r = client.get("/v1/search", params={"q": "garden hose"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    versions.add(r.json()["index_version"])

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        products, report = load_catalog(sample_catalog_path())
        manifest = build_snapshot(
            products[:-1], report, index_dir, encoder, BuildOptions(probe_count=20)
        )
        new = manifest["version"]
        assert store.current() == new != old
        wait_until(
            lambda: server.get("/v1/search", params={"q": "drill"}).json()["index_version"] == new,
            60,
            "the server to switch to the new snapshot",
        )
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    assert {old, new} <= versions  # answered from both, with no failure in between
    assert server.get("/readyz").json()["products"] == len(products) - 1


def test_killed_build_leaves_serving_intact(server: httpx.Client, index_dir: Path) -> None:
    store = SnapshotStore(index_dir)
    before = store.current()
    versions_before = store.versions()
    proc = subprocess.Popen(
        [
            *SHOPSEARCH,
            "build",
            "--catalog",
            str(sample_catalog_path()),
            "--index-dir",
            str(index_dir),
            "--no-embedding-cache",  # so the build is still encoding when it is killed
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(p.name.startswith(".building-") for p in store.snapshots_dir.iterdir()),
            120,
            "the build to start writing",
        )
        time.sleep(0.5)  # midway: encoding 352 products takes seconds
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert store.current() == before
    assert store.versions() == versions_before
    r = server.get("/v1/search", params={"q": "cordless drill"})
    assert r.status_code == 200 and r.json()["index_version"] == before
    # The next build sweeps the half-written directory away.
    store.clean_partial()
    assert not any(p.name.startswith(".") for p in store.snapshots_dir.iterdir())


def test_rollback_is_picked_up(server: httpx.Client, index_dir: Path) -> None:
    store = SnapshotStore(index_dir)
    current = store.current()
    result = subprocess.run(
        [*SHOPSEARCH, "rollback", "--index-dir", str(index_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    previous = store.current()
    assert previous != current and previous in store.versions()
    wait_until(
        lambda: server.get("/v1/search", params={"q": "drill"}).json()["index_version"] == previous,
        30,
        "the server to serve the rolled-back snapshot",
    )
