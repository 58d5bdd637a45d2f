"""Search quality in /metrics: live recall of the vector index (api/quality_monitor.py),
zero-result, rewrite and rerank-outcome counts, click-through per snapshot version
(api/click_through.py), and the Grafana dashboard that reads them.

The sample catalog (352 products) is below IVF_MIN_SIZE, so its build serves an exact
Flat index, whose recall is 1 at any nprobe. ``ivf_index`` is a copy of the sample index
whose snapshot serves a real IVF-PQ index (16 lists) over the same stored vectors,
loaded through the ordinary snapshot path, so ``Settings.nprobe`` applies as in serving.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from shopsearch.api.app import create_app
from shopsearch.api.quality_monitor import LiveRecallMonitor, rerank_outcome
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.generations import snapshot_files
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.vector_index import FaissIndex, FaissParams

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "api" / "dashboards" / "shopsearch-grafana.json"
QUERIES = [
    "cordless drill",
    "garden hose",
    "led light bulb",
    "paint roller",
    "step ladder",
    "kitchen faucet",
    "wood screws",
    "lawn mower",
]
NLIST = 16


@pytest.fixture(scope="module")
def ivf_index(sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``sample_index`` whose snapshot's vector index is IVF16 + 4-bit PQ +
    refine (the production layout, with the list count a 55k catalog would not need to
    force) over the snapshot's own stored vectors (do not modify)."""
    index_dir = tmp_path_factory.mktemp("ivf") / "index"
    shutil.copytree(sample_index, index_dir)
    store = SnapshotStore(index_dir)
    path = store.path(str(store.current()))
    manifest = json.loads((path / "manifest.json").read_text())
    vectors_dir = path / str(snapshot_files(manifest)["vectors"])
    vectors = np.load(vectors_dir / "vectors.npy")
    dim = vectors.shape[1]
    params = FaissParams(nlist=NLIST, pq_m=dim // 4, nprobe=NLIST, refine_factor=8)
    FaissIndex(vectors, params, use_gpu=False).save(vectors_dir)
    return index_dir


def _service(index_dir: Path, encoder: Encoder, **settings: Any) -> SearchService:
    # No result cache unless asked: each search must compute (and so be sampled).
    svc = SearchService(
        Settings(
            **{"index_dir": index_dir, "reload_interval_s": 0, "result_cache_size": 0, **settings}
        ),
        encoder=encoder,
    )
    svc.load()
    return svc


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _value(client: TestClient, name: str, **labels: str) -> float:
    return _samples(client).get((name, tuple(sorted(labels.items()))), 0.0)


def _monitor(app: FastAPI) -> LiveRecallMonitor:
    monitor = app.state.live_recall
    assert isinstance(monitor, LiveRecallMonitor)
    return monitor


def _mean_live_recall(svc: SearchService, queries: list[str]) -> tuple[float, float]:
    """(mean live recall, its sample count) of ``queries`` searched through the app."""
    app = create_app(svc.settings.model_copy(update={"live_recall_sample": 1.0}), service=svc)
    with TestClient(app) as client:
        for q in queries:
            assert client.get("/v1/search", params={"q": q, "mode": "dense"}).status_code == 200
        assert _monitor(app).flush(timeout=30)
        version = svc.snapshot.version
        count = _value(client, "shopsearch_live_recall_count", snapshot=version)
        total = _value(client, "shopsearch_live_recall_sum", snapshot=version)
    return total / count, count


# -- live recall ---------------------------------------------------------------------


def test_live_recall_is_in_metrics_and_the_worker_stops_with_the_app(
    ivf_index: Path, encoder: Encoder
) -> None:
    svc = _service(ivf_index, encoder, live_recall_sample=1.0)
    assert isinstance(svc.snapshot.vectors, FaissIndex)
    assert svc.snapshot.vectors.params.nlist == NLIST
    app = create_app(svc.settings, service=svc)
    with TestClient(app) as client:
        for q in QUERIES[:4]:
            for mode in ("hybrid", "dense"):
                r = client.get("/v1/search", params={"q": q, "mode": mode})
                assert r.status_code == 200
        # The lexical mode has no dense leg: nothing to measure.
        assert client.get("/v1/search", params={"q": "drill", "mode": "lexical"}).status_code == 200
        monitor = _monitor(app)
        assert monitor.running
        assert monitor.flush(timeout=30)
        samples = _samples(client)
        text = client.get("/metrics").text
    version = svc.snapshot.version
    snap = (("snapshot", version),)
    assert samples[("shopsearch_live_recall_count", snap)] == 8
    assert samples[("shopsearch_live_recall_bucket", (("le", "+Inf"), ("snapshot", version)))] == 8
    assert 0.0 < samples[("shopsearch_live_recall_sum", snap)] <= 8.0
    assert 0.0 < samples[("shopsearch_live_recall_recent", snap)] <= 1.0
    assert samples[("shopsearch_live_recall_samples_total", (("result", "measured"),))] == 8
    assert samples[("shopsearch_live_recall_samples_total", (("result", "dropped"),))] == 0
    assert "# TYPE shopsearch_live_recall histogram" in text
    assert not monitor.running  # closed on shutdown


def test_lowering_nprobe_lowers_live_recall(ivf_index: Path, encoder: Encoder) -> None:
    # leg_depth 10: the dense leg asks k=10. At k=100 a probe of a list or two of this
    # small catalog returns fewer than k candidates, and FaissIndex then answers with an
    # exact scan (FaissIndex._keep_allowed): recall 1 by construction, at any nprobe.
    high = _service(ivf_index, encoder, nprobe=NLIST, leg_depth=10)
    low = _service(ivf_index, encoder, nprobe=1, leg_depth=10)
    assert low.snapshot.vectors.params.nprobe == 1  # type: ignore[attr-defined]
    high_recall, high_count = _mean_live_recall(high, QUERIES)
    low_recall, low_count = _mean_live_recall(low, QUERIES)
    assert high_count == low_count == len(QUERIES)
    assert high_recall >= 0.95
    assert low_recall < high_recall - 0.1


def test_a_full_queue_drops_samples_and_never_blocks(
    sample_service: SearchService, encoder: Encoder
) -> None:
    snap = sample_service.snapshot
    query = encoder.encode_query(["cordless drill"])
    _, rows = snap.vectors.search(query, 10)
    hold = threading.Event()  # the worker waits for it before taking any sample
    monitor = LiveRecallMonitor(1.0, queue_size=2, gate=hold)
    try:
        started = time.perf_counter()
        queued = [monitor.offer(snap, query, rows[0], 10) for _ in range(5)]
        assert time.perf_counter() - started < 0.5  # five puts, no waiting on the worker
        assert queued == [True, True, False, False, False]
        stats = monitor.stats()
        assert (stats.pending, stats.dropped, stats.measured) == (2, 3, 0)
        assert not monitor.flush(timeout=0.05)  # held: nothing measured yet
        hold.set()
        assert monitor.flush(timeout=10)
        stats = monitor.stats()
        assert (stats.pending, stats.dropped, stats.measured, stats.failed) == (0, 3, 2, 0)
        # The sample catalog's Flat index is exact: recall 1.
        assert stats.versions[snap.version].total == 2.0
    finally:
        monitor.close()
    assert not monitor.running
    assert not monitor.offer(snap, query, rows[0], 10)  # closed: refused


def test_sampling_follows_the_fraction(sample_service: SearchService, encoder: Encoder) -> None:
    snap = sample_service.snapshot
    query = encoder.encode_query(["garden hose"])
    _, rows = snap.vectors.search(query, 10)
    off = LiveRecallMonitor(0.0)
    assert not off.running and not off.offer(snap, query, rows[0], 10)
    off.close()
    hold = threading.Event()  # nothing measured: only the draws are counted
    some = LiveRecallMonitor(0.25, queue_size=1000, gate=hold, seed=7)
    try:
        taken = sum(some.offer(snap, query, rows[0], 10) for _ in range(400))
        assert 60 <= taken <= 140
    finally:
        some.close()
    with pytest.raises(ValueError, match="within"):
        LiveRecallMonitor(1.5)
    with pytest.raises(Exception, match="less than or equal to 1"):
        Settings(live_recall_sample=2.0)


# -- answer counters -----------------------------------------------------------------


@pytest.fixture
def client(sample_service: SearchService) -> Iterator[TestClient]:
    settings = sample_service.settings.model_copy(update={"live_recall_sample": 0.0})
    with TestClient(create_app(settings, service=sample_service)) as c:
        yield c


def test_zero_result_and_rewrite_counters(client: TestClient) -> None:
    assert _value(client, "shopsearch_searches_total") == 0
    r = client.post("/v1/search", json={"q": "drill", "filters": {"price": {"min": 1e9}}})
    assert r.status_code == 200 and r.json()["total"] == 0
    assert _value(client, "shopsearch_zero_result_searches_total") == 1
    r = client.get("/v1/search", params={"q": "drill"})
    assert r.status_code == 200 and r.json()["total"] > 0 and "rewrite" not in r.json()
    # A page past the end has no hits but the search found some: not a zero-result one.
    r = client.get("/v1/search", params={"q": "drill", "page": 50, "size": 20})
    assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["total"] > 0
    assert _value(client, "shopsearch_zero_result_searches_total") == 1
    assert _value(client, "shopsearch_rewritten_searches_total") == 0
    r = client.get("/v1/search", params={"q": "cordles dril"})
    assert r.status_code == 200 and r.json()["rewrite"]["searched_q"] == "cordless drill"
    assert _value(client, "shopsearch_rewritten_searches_total") == 1
    assert _value(client, "shopsearch_searches_total") == 4


def test_rerank_outcome_counters(
    sample_index: Path, encoder: Encoder, cross_encoder_dir: Path, client: TestClient
) -> None:
    assert client.get("/v1/search", params={"q": "drill"}).json()["rerank"] == "off"
    r = client.post("/v1/search", json={"q": "drill", "rerank": True})
    assert r.json()["rerank"] == "skipped (no model)"
    assert _value(client, "shopsearch_rerank_total", outcome="off") == 1
    assert _value(client, "shopsearch_rerank_total", outcome="skipped") == 1

    settings = Settings(index_dir=sample_index, reload_interval_s=0, live_recall_sample=0.0)
    real = Reranker(cross_encoder_dir, device="cpu", backend="torch")
    # A real reranker that fails for real: CrossEncoder.predict refuses batch size 0.
    failing = Reranker(cross_encoder_dir, device="cpu", backend="torch", batch_size=0)
    for reranker, status, outcome in (
        (real, "applied (5 candidates)", "applied"),
        (failing, "skipped (error)", "degraded"),
    ):
        svc = SearchService(settings, encoder=encoder, reranker=reranker)
        svc.load()
        with TestClient(create_app(settings, service=svc)) as c:
            r = c.post("/v1/search", json={"q": "cordless drill", "rerank_depth": 5})
            assert r.status_code == 200 and r.json()["rerank"] == status
            assert _value(c, "shopsearch_rerank_total", outcome=outcome) == 1
            others = {"applied", "skipped", "degraded", "off"} - {outcome}
            assert all(_value(c, "shopsearch_rerank_total", outcome=o) == 0 for o in others)
    assert rerank_outcome("skipped (deadline)") == "skipped"


def test_click_through_per_snapshot_version(sample_service: SearchService, tmp_path: Path) -> None:
    settings = sample_service.settings.model_copy(
        update={
            "live_recall_sample": 0.0,
            "user_key": SecretStr("k" * 32),
            "events_db": tmp_path / "events.db",
        }
    )
    version = sample_service.snapshot.version
    with TestClient(create_app(settings, service=sample_service)) as c:
        answers = [c.get("/v1/search", params={"q": q}).json() for q in QUERIES[:4]]

        def click(event_id: str, answer: dict[str, Any], kind: str = "click") -> None:
            event = {
                "event_id": event_id,
                "type": kind,
                "session": "s1",
                "product_id": answer["hits"][0]["id"],
                "timestamp": datetime.now(UTC).isoformat(),
                "query_id": answer["query_id"],
                "position": 1,
            }
            assert c.post("/v1/events", json={"events": [event]}).status_code == 200

        click("e1", answers[0])
        click("e1", answers[0])  # resent: a duplicate
        click("e2", answers[0])  # a second click on the same search
        click("e3", answers[1], kind="view")  # not a click
        click("e4", answers[2])
        searches = _value(c, "shopsearch_snapshot_searches_total", snapshot=version)
        clicked = _value(c, "shopsearch_snapshot_clicked_searches_total", snapshot=version)
    assert (searches, clicked) == (4, 2)


# -- the dashboard -------------------------------------------------------------------


def test_dashboard_reads_only_metrics_the_app_exports(ivf_index: Path, encoder: Encoder) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(dashboard["panels"]) >= 7 and all(exprs)
    used = {name for e in exprs for name in re.findall(r"\bshopsearch_[a-z_]+\b", e)}
    svc = _service(ivf_index, encoder, live_recall_sample=1.0, result_cache_size=100)
    app = create_app(svc.settings, service=svc)
    with TestClient(app) as client:
        for _ in range(2):  # the second is a result-cache hit
            assert client.get("/v1/search", params={"q": "garden hose"}).status_code == 200
        assert _monitor(app).flush(timeout=30)
        exported = {name for name, _ in _samples(client)}
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    for stem in ("live_recall", "zero_result", "rewritten", "rerank", "cache_hits", "latency"):
        assert any(stem in name for name in used), stem
