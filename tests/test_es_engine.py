"""The engine with its lexical leg on a real Elasticsearch node: snapshots built into
``<prefix>-<version>`` indices, searched through the ``SearchService``, promotion and
rollback moving ``CURRENT`` and the alias together, pruning deleting indices, failed and
killed builds leaving both where they were, and a cluster that is down or hung turning
answers into ``degraded: ["lexical"]`` ones instead of errors.

Needs the node that ``make test`` starts (``SHOPSEARCH_ES_URL``); without one these tests
are skipped, except under ``CI=true`` where they fail. The stop test starts and stops a
second node of its own (same script, another port), so the shared node is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ES_URL, es_unavailable
from fastapi.testclient import TestClient

from shopsearch.api.app import create_app
from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.lexical_lifecycle import es_index_name
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_bulk import RejectedDocumentsError
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.types import Product

pytestmark = pytest.mark.elasticsearch

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "elasticsearch.sh"


def report_for(products: list[Product], tag: str) -> CatalogReport:
    return CatalogReport(
        path="test", format="jsonl", sha256=tag * 8, rows_read=len(products), products=len(products)
    )


def delete_prefix(client: Any, prefix: str) -> None:
    existing = client.indices.get(index=f"{prefix}*", allow_no_indices=True, features="settings")
    if existing.body:
        # Named, not wildcard: the node refuses wildcard deletes (destructive_requires_name).
        client.indices.delete(index=",".join(existing.body))


def indices(client: Any, prefix: str) -> set[str]:
    resp = client.indices.get(index=f"{prefix}-*", allow_no_indices=True, features="settings")
    return set(resp.body)


def alias_target(client: Any, alias: str) -> str | None:
    if not client.indices.exists_alias(name=alias):
        return None
    (name,) = client.indices.get_alias(name=alias).body
    return str(name)


@pytest.fixture
def prefix(es_client: Any) -> Iterator[str]:
    name = f"test-engine-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(es_client, name)


@pytest.fixture
def es(es_client: Any) -> Iterator[ElasticsearchConnection]:
    with ElasticsearchConnection(ES_URL, timeout=5.0) as conn:
        yield conn


def es_options(prefix: str, **kwargs: Any) -> BuildOptions:
    return BuildOptions(
        **{"probe_count": 20, "lexical": "elasticsearch", "es_index_prefix": prefix, **kwargs}
    )


def service_on(index_dir: Path, encoder: Encoder, url: str = ES_URL, **kw: Any) -> SearchService:
    settings = Settings(
        index_dir=index_dir, reload_interval_s=0, es_url=url, **{"es_timeout": 5.0, **kw}
    )
    return SearchService(settings, encoder=encoder)


def test_build_records_the_index_and_the_service_searches_it(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    es_client: Any,
    prefix: str,
) -> None:
    manifest = build_snapshot(
        sample_products,
        report_for(sample_products, "a"),
        tmp_path,
        encoder,
        es_options(prefix),
        es=es,
    )
    version = manifest["version"]
    lexical = manifest["lexical_index"]
    assert lexical["backend"] == "elasticsearch"
    assert lexical["index"] == es_index_name(prefix, version) == f"{prefix}-{version.lower()}"
    assert lexical["alias"] == prefix and lexical["analyzer"] == "en_stem"
    assert lexical["cluster"] == ES_URL
    assert manifest["files"]["lexical"] is None
    assert manifest["validation"]["lexical_answered"] >= 0.9
    path = SnapshotStore(tmp_path).path(version)
    assert not (path / "lexical").exists()
    assert alias_target(es_client, prefix) == lexical["index"]

    svc = service_on(tmp_path, encoder)
    assert svc.load() == version
    for mode in ("hybrid", "lexical"):
        response = svc.search(SearchRequest(q="cordless drill", size=5, mode=mode, explain=True))  # type: ignore[arg-type]
        assert response.degraded == []
        assert all(h.category == "Tools > Power Tools > Drills" for h in response.hits[:3]), mode
        assert any(h.explain and h.explain.lexical_rank for h in response.hits)
    ryobi = svc.search(
        SearchRequest(q="cordless", size=20, mode="lexical", filters={"brand": "Ryobi"})
    )
    assert ryobi.hits and all(h.brand == "Ryobi" for h in ryobi.hits)
    # Without the cluster's URL the snapshot cannot load, and says how to fix it.
    bare = SearchService(
        Settings(index_dir=tmp_path, reload_interval_s=0, es_url=None), encoder=encoder
    )
    with pytest.raises(SnapshotError, match="--es-url"):
        bare.load()
    svc.close()


def test_promote_rollback_and_prune_move_current_and_the_alias_together(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    es_client: Any,
    prefix: str,
) -> None:
    products = list(sample_products[:40])
    versions = []
    for tag in "abc":
        manifest = build_snapshot(
            products,
            report_for(products, tag),
            tmp_path,
            encoder,
            es_options(prefix, keep=2),
            es=es,
        )
        versions.append(manifest["version"])
    store = SnapshotStore(tmp_path, es=es)
    names = [es_index_name(prefix, v) for v in versions]
    # keep=2 pruned the first snapshot and its index.
    assert store.versions() == versions[1:]
    assert indices(es_client, prefix) == set(names[1:])
    assert store.current() == versions[2] and alias_target(es_client, prefix) == names[2]

    assert store.rollback().version == versions[1]
    assert store.current() == versions[1] and alias_target(es_client, prefix) == names[1]
    with pytest.raises(SnapshotError, match="oldest snapshot kept"):
        store.rollback()
    # Pruning never deletes the current snapshot nor the index the alias points at.
    assert store.prune(1) == []
    assert indices(es_client, prefix) == set(names[1:])
    store.promote(versions[2])
    assert store.current() == versions[2] and alias_target(es_client, prefix) == names[2]
    assert store.prune(1) == [versions[1]]
    assert indices(es_client, prefix) == {names[2]}
    assert alias_target(es_client, prefix) == names[2]

    # Without the cluster, an Elasticsearch snapshot is not promoted halfway.
    with pytest.raises(SnapshotError, match="needs the cluster"):
        SnapshotStore(tmp_path).promote(versions[2])


def test_failed_builds_leave_current_the_alias_and_no_index_behind(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    es_client: Any,
    prefix: str,
) -> None:
    products = list(sample_products[:30])
    serving = build_snapshot(
        products, report_for(products, "a"), tmp_path, encoder, es_options(prefix), es=es
    )["version"]
    serving_index = es_index_name(prefix, serving)
    store = SnapshotStore(tmp_path)

    def unchanged() -> None:
        assert store.current() == serving
        assert store.versions() == [serving]
        assert alias_target(es_client, prefix) == serving_index
        assert indices(es_client, prefix) == {serving_index}
        assert not [p for p in store.snapshots_dir.iterdir() if p.name.startswith(".building")]

    # 1. Validation refuses the snapshot after its index was written.
    with pytest.raises(SnapshotError, match="min-recall"):
        build_snapshot(
            products,
            report_for(products, "b"),
            tmp_path,
            encoder,
            es_options(prefix, min_recall=1.5),
            es=es,
        )
    unchanged()
    # 2. The cluster rejects documents: reported by id, and the half-built index is dropped.
    bad = [*products, Product(id="huge-brand", title="Widget", brand="x" * 40_000)]
    with pytest.raises(RejectedDocumentsError) as caught:
        build_snapshot(bad, report_for(bad, "c"), tmp_path, encoder, es_options(prefix), es=es)
    assert [pid for pid, _ in caught.value.rejected] == ["huge-brand"]
    unchanged()
    # 3. The cluster is unreachable: the build fails before writing anything.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with (
        ElasticsearchConnection(f"http://127.0.0.1:{closed}", timeout=0.5) as down,
        pytest.raises(LexicalIndexError, match="cannot connect"),
    ):
        build_snapshot(
            products, report_for(products, "d"), tmp_path, encoder, es_options(prefix), es=down
        )
    unchanged()
    # 4. An orphan (a build killed after creating its index) goes with the next build.
    orphan = es.index(prefix).create_versioned_index(prefix, "20200101t000000z-deadbeef").index
    newer = build_snapshot(
        products, report_for(products, "e"), tmp_path, encoder, es_options(prefix), es=es
    )["version"]
    assert orphan not in indices(es_client, prefix)
    assert indices(es_client, prefix) == {serving_index, es_index_name(prefix, newer)}


@pytest.mark.slow
def test_a_killed_build_leaves_current_and_the_alias_and_the_next_build_cleans_up(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    es_client: Any,
    prefix: str,
) -> None:
    index_dir = tmp_path / "index"
    serving = build_snapshot(
        sample_products,
        report_for(sample_products, "a"),
        index_dir,
        encoder,
        es_options(prefix),
        es=es,
    )["version"]
    serving_index = es_index_name(prefix, serving)
    # A catalog big enough that indexing takes a while; its texts are all in the embedding
    # cache already, so the killed build spends no time encoding.
    catalog = tmp_path / "big.jsonl"
    with catalog.open("w") as fh:
        for copy in range(15):
            for p in sample_products:
                fh.write(json.dumps({**p.to_dict(), "id": f"{p.id}-{copy}"}) + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopsearch.api.cli",
            "build",
            "--catalog",
            str(catalog),
            "--index-dir",
            str(index_dir),
            "--lexical",
            "elasticsearch",
            "--es-url",
            ES_URL,
            "--es-index-prefix",
            prefix,
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if indices(es_client, prefix) - {serving_index}:
                break  # the build has created its index: kill it while it indexes
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    store = SnapshotStore(index_dir)
    assert store.current() == serving
    assert alias_target(es_client, prefix) == serving_index
    left = indices(es_client, prefix) - {serving_index}
    assert len(left) == 1  # the half-built index, never aliased

    newer = build_snapshot(
        sample_products[:50],
        report_for(sample_products, "b"),
        index_dir,
        encoder,
        es_options(prefix),
        es=es,
    )["version"]
    assert indices(es_client, prefix) == {serving_index, es_index_name(prefix, newer)}
    assert alias_target(es_client, prefix) == es_index_name(prefix, newer)


def test_a_hung_cluster_degrades_answers_to_dense_within_the_timeout(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    prefix: str,
) -> None:
    """A socket that accepts connections and never answers stands in for the cluster."""
    products = list(sample_products[:40])
    build_snapshot(
        products, report_for(products, "a"), tmp_path, encoder, es_options(prefix), es=es
    )
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        svc = service_on(tmp_path, encoder, url=url, es_timeout=0.3)
        svc.load()  # loads although the lexical warm-up times out
        for _ in range(3):
            started = time.monotonic()
            response = svc.search(SearchRequest(q="cordless drill", size=5))
            assert time.monotonic() - started < 2.0
            assert response.degraded == ["lexical"]
            assert response.hits and response.hits[0].category.startswith("Tools")
        svc.close()


def test_a_hung_cluster_opens_the_breaker_and_is_logged_once_per_reason(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After es_breaker_failures timed-out queries, answers stay degraded but no longer
    reach the hung node, so they no longer wait for the timeout; the failure is logged once
    per reason, not once per query."""
    products = list(sample_products[:40])
    build_snapshot(
        products, report_for(products, "a"), tmp_path, encoder, es_options(prefix), es=es
    )
    timeout = 0.3
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        hung.settimeout(0.05)
        # The node accepts connections and never answers; counting them shows whether a
        # query was sent, which a wall-clock bound on a shared machine cannot show reliably.
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept_forever() -> None:
            while not stop.is_set():
                try:
                    accepted.append(hung.accept()[0])
                except OSError:
                    continue

        acceptor = threading.Thread(target=accept_forever, daemon=True)
        acceptor.start()
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        svc = service_on(
            tmp_path,
            encoder,
            url=url,
            es_timeout=timeout,
            es_breaker_failures=2,
            es_breaker_reset_s=60.0,
            degraded_log_interval_s=60.0,
        )
        svc.load()  # the warm-up query is the first failure
        assert svc.es is not None and svc.es.breaker is not None
        caplog.set_level(logging.WARNING, logger="shopsearch.api.service")
        seconds = []
        connections_when_opened = 0
        for i in range(20):
            started = time.monotonic()
            response = svc.search(SearchRequest(q="cordless drill", size=5))
            seconds.append(time.monotonic() - started)
            assert response.degraded == ["lexical"] and response.hits
            if i == 0:
                time.sleep(0.3)  # untimed: lets the acceptor catch up even on a stalled machine
                connections_when_opened = len(accepted)
        assert svc.es.breaker.state == "open"
        assert seconds[0] >= timeout * 0.9  # the second failure opened it
        assert connections_when_opened >= 1
        assert len(accepted) == connections_when_opened  # nothing sent once it was open
        assert sorted(seconds[1:])[len(seconds) // 2] < timeout / 2, seconds
        stop.set()
        acceptor.join(timeout=5)
        for conn in accepted:
            conn.close()
        warnings = [r.getMessage() for r in caplog.records if "lexical search failed" in r.message]
        assert len(warnings) == 2, warnings  # the timeout once, the open breaker once
        assert "timed out" in warnings[0] and "circuit breaker is open" in warnings[1]
        svc.close()


def _script(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_stopping_the_node_mid_run_degrades_answers_and_fails_builds_cleanly(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product], es_client: Any
) -> None:
    """A node of its own is stopped under a loop of searches through the service: every
    answer is a 200-style response, degraded to the dense leg once the node is gone; a
    server that starts while it is down serves degraded answers over HTTP; a build
    against it fails and leaves serving as it was."""
    env = {
        **os.environ,
        "SHOPSEARCH_ES_NAME": f"engine-stop-{os.getpid()}",
        "SHOPSEARCH_ES_PORT": "auto",
        "SHOPSEARCH_ES_HEAP": "256m",
    }
    products = list(sample_products[:60])
    outcomes: list[tuple[float, float, str]] = []  # (started at, seconds, outcome)
    try:
        started = _script(env, "start")
        if started.returncode != 0:
            es_unavailable(f"could not start a second node: {started.stderr[-2000:]}")
        url = _script(env, "url").stdout.strip()
        assert url != ES_URL
        with ElasticsearchConnection(url, timeout=5.0) as own:
            serving = build_snapshot(
                products,
                report_for(products, "a"),
                tmp_path,
                encoder,
                es_options("stoptest"),
                es=own,
            )["version"]
        # Result cache off: the loop repeats one query, and a cached answer (computed
        # while the node was up, same snapshot) would be served whole during the outage.
        svc = service_on(tmp_path, encoder, url=url, es_timeout=0.5, result_cache_size=0)
        svc.load()
        stop = threading.Event()

        def query_loop() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    response = svc.search(SearchRequest(q="cordless drill", size=5))
                    outcome = ",".join(response.degraded) or "ok"
                    if not response.hits:
                        outcome = "empty"
                except Exception as exc:  # what the API would turn into a 500
                    outcome = f"error: {exc!r}"
                outcomes.append((t0, time.monotonic() - t0, outcome))
                time.sleep(0.02)

        thread = threading.Thread(target=query_loop, daemon=True)
        thread.start()
        time.sleep(1.0)
        stopped = _script(env, "stop")
        gone_at = time.monotonic()
        assert stopped.returncode == 0, stopped.stderr
        deadline = gone_at + 20
        while time.monotonic() < deadline:
            if sum(1 for t0, _, o in outcomes if t0 > gone_at and o == "lexical") >= 10:
                break
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=30)

        # A server started while the cluster is down is ready and answers degraded.
        fresh = service_on(tmp_path, encoder, url=url, es_timeout=0.5)
        with TestClient(create_app(fresh.settings, service=fresh)) as client:
            fresh.load()
            r = client.get("/v1/search", params={"q": "cordless drill"})
            assert r.status_code == 200, r.text
            assert r.json()["degraded"] == ["lexical"] and r.json()["hits"]
            assert client.get("/readyz").status_code == 200
        # A build against the stopped cluster fails cleanly; serving stays.
        with (
            ElasticsearchConnection(url, timeout=0.5) as down,
            pytest.raises(LexicalIndexError),
        ):
            build_snapshot(
                products,
                report_for(products, "b"),
                tmp_path,
                encoder,
                es_options("stoptest"),
                es=down,
            )
        assert SnapshotStore(tmp_path).current() == serving
        assert SnapshotStore(tmp_path).versions() == [serving]
        svc.close()
        fresh.close()
    finally:
        _script(env, "stop")

    before = [o for t0, _, o in outcomes if t0 < gone_at]
    after = [(d, o) for t0, d, o in outcomes if t0 > gone_at]
    assert before and before[0] == "ok", before[:5]
    # While the node is going down a search can find it up for the lexical leg and gone
    # for the result-set count a millisecond later: that answer is still whole hits,
    # served and marked "match_set". Errors and empty answers are never allowed.
    allowed_before = ("ok", "lexical", "match_set")
    assert [o for o in before if o not in allowed_before] == [], before
    assert len(after) >= 10
    assert all(o == "lexical" for _, o in after), after
    slowest = max(d for d, _ in after)
    assert slowest < 2.0, f"a search on the stopped node took {slowest:.2f} s"


def test_cli_build_with_credentials_never_shows_the_secret(
    tmp_path: Path, es_client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The test node runs without security, so it ignores the credentials it is sent."""
    from typer.testing import CliRunner

    from shopsearch.api.cli import app, sample_catalog_path

    secret = "s3cret-Pa55word"
    with caplog.at_level("DEBUG"):
        result = CliRunner().invoke(
            app,
            [
                "build",
                "--catalog",
                str(sample_catalog_path()),
                "--limit",
                "40",
                "--index-dir",
                str(tmp_path),
                "--lexical",
                "elasticsearch",
                "--es-url",
                ES_URL,
                "--es-index-prefix",
                prefix,
                "--es-username",
                "elastic",
                "--es-password",
                secret,
                "--device",
                "cpu",
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["lexical_index"]["backend"] == "elasticsearch"
    assert alias_target(es_client, prefix) == manifest["lexical_index"]["index"]
    on_disk = (SnapshotStore(tmp_path).path(manifest["version"]) / "manifest.json").read_text()
    assert secret not in result.output and secret not in on_disk and secret not in caplog.text
    # Half the basic-auth pair is refused with the reason, not a traceback.
    half = CliRunner().invoke(
        app, ["rollback", "--index-dir", str(tmp_path), "--es-url", ES_URL, "--es-username", "u"]
    )
    assert half.exit_code == 2 and "es_password" in half.output
