"""Both legs on a real 3-node Elasticsearch cluster, with a node killed (``kill -9``)
under load: searches keep answering in full, acknowledged updates are never lost, and an
answer says ``degraded`` exactly while some shard has no live copy.

Needs the cluster that ``make test`` starts with ``.ci/es-cluster.sh``
(``SHOPSEARCH_ES_CLUSTER_URLS``); without it these tests are skipped, except under
``CI=true`` where they fail. Each test brings the node it killed back before it ends
(``.ci/es-cluster.sh start-node``), so the cluster is whole for whatever runs next.

Indices have 3 shards: with 1 replica each of the 3 nodes holds 2 of the 6 copies, so
killing one node leaves a live copy of every shard; with 0 replicas the killed node's
shard has none, which is the partial coverage the answers must report.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_connection import LexicalHits
from shopsearch.retrieval.types import Product

pytestmark = [pytest.mark.elasticsearch, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "es-cluster.sh"
CLUSTER_URLS = os.environ.get("SHOPSEARCH_ES_CLUSTER_URLS", "")
SHARDS = 3
#: Query budget in these tests: the default 0.5 s is the serving budget on a quiet
#: machine; this one has 2 cores shared with the other tests, and a slow answer would be
#: counted as a failed one.
TIMEOUT_S = 3.0


def run_script(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0 and args[0] != "pid":
        raise AssertionError(f"es-cluster.sh {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout.strip() if done.returncode == 0 else ""


def node_number(name: str) -> int:
    """``shopsearch-cluster-2`` -> 2 (the script names node N ``shopsearch-<name>-N``)."""
    return int(name.rsplit("-", 1)[1])


def heal(client: Any) -> None:
    """Start every node that does not run, and wait for the whole cluster to be green."""
    for n in (1, 2, 3):
        if not run_script("pid", str(n)):
            run_script("start-node", str(n))
    client.cluster.health(wait_for_nodes=3, wait_for_status="green", timeout="120s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A client on the three nodes; the cluster is whole (3 nodes, green) before and
    after every test of this module."""
    from elasticsearch import Elasticsearch

    require(
        bool(CLUSTER_URLS),
        "SHOPSEARCH_ES_CLUSTER_URLS is not set; run `make test`, or `.ci/es-cluster.sh start` "
        "and SHOPSEARCH_ES_CLUSTER_URLS=$(.ci/es-cluster.sh urls)",
    )
    client = Elasticsearch(CLUSTER_URLS.split(","), request_timeout=130, max_retries=5)
    try:
        health = client.cluster.health(wait_for_nodes=3, wait_for_status="green", timeout="60s")
        ok = health["number_of_nodes"] == 3 and not health["timed_out"]
    except Exception as exc:
        client.close()
        require(False, f"no 3-node cluster at {CLUSTER_URLS} ({type(exc).__name__}: {exc})")
    require(ok, f"the cluster at {CLUSTER_URLS} is not green with 3 nodes: {health.body}")
    yield client
    heal(client)
    client.close()


@pytest.fixture
def prefix(cluster: Any) -> Iterator[str]:
    name = f"test-cluster-{uuid.uuid4().hex[:10]}"
    yield name
    heal(cluster)
    existing = cluster.indices.get(index=f"{name}*", allow_no_indices=True, features="settings")
    if existing.body:
        cluster.indices.delete(index=",".join(existing.body))


def connection(replicas: int) -> ElasticsearchConnection:
    return ElasticsearchConnection(
        CLUSTER_URLS, timeout=TIMEOUT_S, admin_timeout=120, shards=SHARDS, replicas=replicas
    )


def shard_nodes(client: Any, index: str) -> dict[str, set[int]]:
    """``{"p": nodes holding a started primary, "r": ... a started replica}`` of ``index``."""
    out: dict[str, set[int]] = {"p": set(), "r": set()}
    for row in client.cat.shards(index=index, format="json").body:
        if row["state"] == "STARTED":
            out[row["prirep"]].add(node_number(row["node"]))
    return out


def kill_node(n: int) -> int:
    pid = int(run_script("pid", str(n)))
    os.kill(pid, 9)
    return pid


def ms(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def test_searches_survive_a_killed_node_and_report_partial_coverage(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product], cluster: Any, prefix: str
) -> None:
    report = CatalogReport(
        path="test", format="jsonl", sha256="c" * 64, rows_read=352, products=352
    )
    # The same catalog twice: one snapshot whose index has a replica of every shard, one
    # with none (so the killed node takes one shard of it away).
    services: dict[str, SearchService] = {}
    for replicas, name in ((1, "replicated"), (0, "bare")):
        with connection(replicas) as es:
            build_snapshot(
                sample_products,
                report,
                tmp_path / name,
                encoder,
                BuildOptions(
                    probe_count=20,
                    lexical="elasticsearch",
                    es_index_prefix=f"{prefix}-{name}",
                    cache_dir=tmp_path / "embedding-cache",  # the second build encodes nothing
                ),
                es=es,
            )
        services[name] = SearchService(
            Settings(
                index_dir=tmp_path / name,
                reload_interval_s=0,
                result_cache_size=0,
                es_url=CLUSTER_URLS,
                es_timeout=TIMEOUT_S,
                es_shards=SHARDS,
                es_replicas=replicas,
            ),
            encoder=encoder,
        )
        services[name].load()
    cluster.cluster.health(wait_for_status="green", timeout="60s")
    index_of = {n: s.snapshot.lexical.describe()["concrete_index"] for n, s in services.items()}
    replicated = shard_nodes(cluster, index_of["replicated"])
    bare = shard_nodes(cluster, index_of["bare"])
    # A node holding a primary of the replicated index and the only copy of a shard of
    # the bare one: every shard of the replicated index keeps a live copy, the bare one
    # loses one shard of three.
    victims = sorted(replicated["p"] & bare["p"])
    assert victims, f"no node holds primaries of both indices: {replicated} {bare}"
    victim = victims[0]

    def ask(name: str, q: str) -> Any:
        return services[name].search(SearchRequest(q=q, size=10, mode="lexical"))

    # Two title words of every 35th product: each query has hits, spread over the shards.
    candidates = sorted({" ".join(p.title.split()[:2]) for p in sample_products[::35]})
    expected = {q: [h.id for h in ask("replicated", q).hits] for q in candidates}
    queries = [q for q in candidates if expected[q]]
    assert len(queries) >= 5 and all(not ask("bare", q).degraded for q in queries)

    total = 300
    records: list[tuple[float, str, float, list[str], bool, str]] = []  # t, index, s, ...
    errors: list[str] = []
    killed_at: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop(worker: int) -> None:
        i = worker
        while not stop.is_set():
            with lock:
                if len([r for r in records if r[1] == "replicated"]) >= total:
                    return
            q = queries[i % len(queries)]
            i += 2
            for name in ("replicated", "bare"):
                t0 = time.perf_counter()
                try:
                    resp = ask(name, q)
                except Exception as exc:
                    with lock:
                        errors.append(f"{name} {q!r}: {type(exc).__name__}: {exc}")
                    continue
                took = time.perf_counter() - t0
                same = [h.id for h in resp.hits] == expected[q]
                with lock:
                    records.append((t0, name, took, list(resp.degraded), same, q))
            time.sleep(0.01)

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(2)]
    for w in workers:
        w.start()
    try:
        wait_until("60 queries before the kill", lambda: len(records) >= 60, 60)
        kill_started = time.perf_counter()
        pid = kill_node(victim)
        killed_at.append(time.perf_counter())
        for w in workers:
            w.join(timeout=240)
    finally:
        stop.set()
    assert not any(w.is_alive() for w in workers), "the query loop did not finish in 240 s"

    kill = killed_at[0]
    # A query in flight while the node was being killed may or may not see it go: it is
    # in neither list (it still must not fail, and the replicated index must stay whole).
    before = [r for r in records if r[0] + r[2] < kill_started]
    after = [r for r in records if r[0] >= kill]
    rep_after = [r for r in after if r[1] == "replicated"]
    bare_after = [r for r in after if r[1] == "bare"]
    degraded_rep = [r for r in records if r[1] == "replicated" and r[3]]
    degraded_bare = [r for r in bare_after if r[3]]
    calm = [r[2] for r in before if r[1] == "replicated"]
    rough = [r[2] for r in rep_after]
    print(
        f"\nkilled node {victim} (pid {pid}) after {len(before)} queries; "
        f"{len([r for r in records if r[1] == 'replicated'])} queries on the replicated index, "
        f"{len(errors)} failed, {len(degraded_rep)} degraded, "
        f"{sum(not r[4] for r in rep_after)} answers differing from before the kill; "
        f"latency before the kill p50 {ms(calm, 50):.1f} ms p99 {ms(calm, 99):.1f} ms, after "
        f"p50 {ms(rough, 50):.1f} ms p99 {ms(rough, 99):.1f} ms, max {max(r[2] for r in rep_after) * 1000:.0f} ms; "
        f"index without replicas: {len(degraded_bare)} of {len(bare_after)} answers after "
        f"the kill degraded ({sorted({d for r in degraded_bare for d in r[3]})})"
    )
    assert not errors, errors[:5]
    assert rep_after, "no query ran after the kill"
    # Every shard of the replicated index kept a live copy: full answers, never degraded,
    # and the same hits as before the kill.
    assert not degraded_rep, degraded_rep[:5]
    assert all(r[4] for r in rep_after), [r for r in rep_after if not r[4]][:5]
    # The index without replicas lost a shard: its answers say so, in numbers...
    assert not [r for r in before if r[1] == "bare" and r[3]]
    partial = f"lexical: {SHARDS - 1} of {SHARDS} shards"
    assert degraded_bare and all(r[3] == [partial] for r in degraded_bare), degraded_bare[:5]
    # ...from the moment the cluster knows the node is gone (not one answer later).
    first = bare_after.index(degraded_bare[0])
    assert all(r[3] for r in bare_after[first:]), (
        "an answer without the lost shard was not degraded"
    )
    assert first < len(bare_after) // 2, f"only {first} answers after the kill saw the loss"

    # The node comes back: its shard too, and the answers are whole again (not degraded).
    run_script("start-node", str(victim))
    cluster.cluster.health(wait_for_status="green", wait_for_nodes=3, timeout="120s")
    whole = [ask("bare", q) for q in queries]
    assert all(not r.degraded for r in whole), [r.degraded for r in whole]
    hits = services["bare"].snapshot.lexical.search("cordless drill", 10)
    assert isinstance(hits, LexicalHits) and hits.partial is None
    for svc in services.values():
        svc.close()


def new_product(i: int, tag: str) -> Product:
    # One token no other product has, so a search finds exactly this product.
    return Product(
        id=f"new-{tag}-{i}",
        title=f"Cluster widget zq{tag}x{i} cordless",
        brand="Acme",
        category="Tools > Power Tools > Drills",
        price=10.0 + i,
    )


def test_acknowledged_updates_survive_a_killed_node(
    sample_products: list[Product], cluster: Any, prefix: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    with connection(1) as es:
        index = es.index(prefix).create_versioned_index(prefix, "updates")
        index.build(sample_products)
        cluster.cluster.health(index=index.index, wait_for_status="green", timeout="60s")
        victim = sorted(shard_nodes(cluster, index.index)["p"])[0]

        batches, size = 40, 10
        acked: list[str] = []
        failed: list[str] = []
        took: list[tuple[float, float]] = []
        kill_after = 8

        def writer() -> None:
            for b in range(batches):
                batch = [new_product(b * size + j, tag) for j in range(size)]
                t0 = time.perf_counter()
                try:
                    index.upsert(batch)
                except Exception as exc:
                    failed.append(f"batch {b}: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                took.append((t0, time.perf_counter() - t0))
                acked.extend(p.id for p in batch)

        thread = threading.Thread(target=writer)
        thread.start()
        wait_until("the first batches", lambda: len(acked) >= kill_after * size, 120)
        pid = kill_node(victim)
        kill = time.perf_counter()
        thread.join(timeout=300)
        assert not thread.is_alive(), "the update loop did not finish in 300 s"

        # Recovered: every primary has a live copy again (yellow: the dead node's replicas
        # wait for it), then every acknowledged product must be found by its own token.
        cluster.cluster.health(index=index.index, wait_for_status="yellow", timeout="120s")
        cluster.indices.refresh(index=index.index)
        found = 0
        missing = []
        for pid_ in acked:
            i = pid_.rsplit("-", 1)[1]
            hits = index.search(f"zq{tag}x{i}", 3)
            if [h.id for h in hits] == [pid_]:
                found += 1
            else:
                missing.append(pid_)
        count = index.count()
        during = [t for t0, t in took if t0 >= kill]
        calm = [t for t0, t in took if t0 < kill]
        print(
            f"\nkilled node {victim} (pid {pid}) after {kill_after} batches of {size}: "
            f"{len(acked)} updates acknowledged, {len(failed)} batches failed, {found} of "
            f"{len(acked)} acknowledged found after recovery, {len(missing)} lost; batch "
            f"latency (refresh=wait_for) before the kill p50 {ms(calm, 50):.0f} ms, after "
            f"p50 {ms(during, 50):.0f} ms p99 {ms(during, 99):.0f} ms "
            f"max {max(during, default=0) * 1000:.0f} ms"
        )
        assert not failed, failed[:3]
        assert not missing, missing[:10]
        assert len(acked) == batches * size
        assert count == len(sample_products) + len(acked)

        run_script("start-node", str(victim))
        cluster.cluster.health(index=index.index, wait_for_status="green", timeout="120s")
        assert index.count() == len(sample_products) + len(acked)


# -- both legs on the cluster -------------------------------------------------------------

#: The degraded lines of a hybrid answer while one shard of each index has no live copy
#: (the dense leg runs first).
BOTH_PARTIAL = [
    f"dense: {SHARDS - 1} of {SHARDS} shards",
    f"lexical: {SHARDS - 1} of {SHARDS} shards",
]


@pytest.fixture(scope="module")
def both_legs(
    tmp_path_factory: pytest.TempPathFactory,
    encoder: Encoder,
    sample_products: list[Product],
    cluster: Any,
) -> Iterator[dict[str, SearchService]]:
    """The sample catalog four times: ``embedded`` (FAISS + tantivy, in the process),
    ``replicated`` (both legs on the cluster, 3 shards, 1 replica), ``bare`` (both legs
    on the cluster, 3 shards, no replica) and ``es_lexical`` (the lexical leg on the
    cluster, FAISS in the process: the configuration before the vector leg moved), each behind its own :class:`SearchService`
    with the same settings (no result cache: every search asks the cluster)."""
    root = tmp_path_factory.mktemp("both-legs")
    prefix = f"test-cluster-both-{uuid.uuid4().hex[:8]}"
    report = CatalogReport(
        path="test", format="jsonl", sha256="d" * 64, rows_read=352, products=352
    )
    services: dict[str, SearchService] = {}
    legs = {"lexical": "elasticsearch", "vector": "elasticsearch"}
    for name, replicas, backends in (
        ("embedded", None, {}),
        ("replicated", 1, legs),
        ("bare", 0, legs),
        ("es_lexical", 1, {"lexical": "elasticsearch"}),  # FAISS as the dense leg
    ):
        on_cluster = replicas is not None
        options = BuildOptions(
            probe_count=100,
            cache_dir=root / "embedding-cache",  # encoded once for every build
            es_index_prefix=f"{prefix}-{name}",
            **backends,
        )
        if on_cluster:
            with connection(int(replicas or 0)) as es:
                build_snapshot(sample_products, report, root / name, encoder, options, es=es)
            es_settings: dict[str, Any] = {
                "es_url": CLUSTER_URLS,
                "es_timeout": TIMEOUT_S,
                "es_shards": SHARDS,
                "es_replicas": replicas,
            }
        else:
            build_snapshot(sample_products, report, root / name, encoder, options)
            es_settings = {}
        services[name] = SearchService(
            Settings(
                index_dir=root / name, reload_interval_s=0, result_cache_size=0, **es_settings
            ),
            encoder=encoder,
        )
        services[name].load()
    cluster.cluster.health(wait_for_status="green", timeout="60s")
    yield services
    for svc in services.values():
        svc.close()
    heal(cluster)
    existing = cluster.indices.get(index=f"{prefix}*", allow_no_indices=True, features="settings")
    if existing.body:
        cluster.indices.delete(index=",".join(existing.body))


def hybrid_queries(products: list[Product]) -> list[str]:
    """Two title words of every 25th product, and a few shopper's phrases."""
    titles = sorted({" ".join(p.title.split()[:2]) for p in products[::25]})
    return [*titles, "cordless drill", "led light bulb", "garden hose", "kitchen faucet"]


def ids(resp: Any) -> list[str]:
    return [h.id for h in resp.hits]


def hybrid(svc: SearchService, q: str, mode: str = "hybrid") -> Any:
    return svc.search(SearchRequest(q=q, size=10, mode=mode))  # type: ignore[arg-type]


def leg_indices(svc: SearchService) -> tuple[str, str]:
    """The concrete lexical and vector indices the service's snapshot searches."""
    snap = svc.snapshot
    return str(snap.lexical.describe()["concrete_index"]), str(snap.vectors.describe()["index"])


def test_both_legs_on_the_cluster_agree_with_the_embedded_engine(
    both_legs: dict[str, SearchService], sample_products: list[Product], cluster: Any
) -> None:
    """3 shards and 1 replica reach the vector index too; the kNN leg's recall@100 against
    exact is >= 0.95 (at build, and on the test's queries with no refine); the hybrid
    answers are the embedded engine's."""
    from shopsearch.retrieval.stored_vectors import ExactIndex
    from shopsearch.retrieval.vector_index import recall_at_k

    for name, replicas in (("replicated", "1"), ("bare", "0")):
        for index in leg_indices(both_legs[name]):
            settings = cluster.indices.get_settings(index=index).body[index]["settings"]["index"]
            assert (settings["number_of_shards"], settings["number_of_replicas"]) == (
                str(SHARDS),
                replicas,
            ), (name, index, settings)
        manifest = both_legs[name].snapshot.manifest
        assert manifest["approx_vs_exact"]["recall@100"] >= 0.95, manifest["approx_vs_exact"]

    queries = hybrid_queries(sample_products)
    snap = both_legs["replicated"].snapshot
    qvecs = both_legs["replicated"].encoder.encode_query(queries)
    k = 100
    exact_rows = ExactIndex(np.asarray(snap.vectors.vectors)).search(qvecs, k)[1]
    # refine_factor 1: the cluster's own kNN order, not re-scored beyond the k it gives.
    knn = snap.vectors.search(qvecs, k, refine_factor=1)
    recall = recall_at_k(knn[1], exact_rows, k)
    # The dense leg alone: the same rows, in the same order, as FAISS in the process.
    faiss = both_legs["embedded"].snapshot.vectors.search(qvecs, 10)[1]
    cluster_top = snap.vectors.search(qvecs, 10)[1]
    dense_same = int((faiss == cluster_top).all(axis=1).sum())
    embedded = {q: ids(hybrid(both_legs["embedded"], q)) for q in queries}
    before = {q: ids(hybrid(both_legs["es_lexical"], q)) for q in queries}
    ours = {q: hybrid(both_legs["replicated"], q) for q in queries}
    same = [q for q in queries if ids(ours[q]) == before[q]]
    same_embedded = [q for q in queries if ids(ours[q]) == embedded[q]]
    overlap = statistics.mean(len(set(ids(ours[q])) & set(embedded[q])) / 10 for q in queries)
    print(
        f"\n{len(queries)} queries: kNN recall@{k} vs exact {recall:.4f} without refine (build "
        f"probes, refined: {snap.manifest['approx_vs_exact']['recall@100']:.4f}); dense top-10 "
        f"rows equal to FAISS's for {dense_same}; hybrid top-10 equal to the Elasticsearch "
        f"lexical + FAISS engine's for {len(same)}, to the embedded engine's (tantivy + FAISS) "
        f"for {len(same_embedded)}, mean top-10 overlap with the embedded engine {overlap:.3f}"
    )
    assert getattr(knn, "partial", "missing") is None
    assert all(not r.degraded for r in ours.values()), {q: r.degraded for q, r in ours.items()}
    assert recall >= 0.95
    assert dense_same == len(queries)
    # Moving the dense leg onto the cluster changes no answer: the hybrid top-10 is the one
    # the engine gave with FAISS in the process and the same lexical leg.
    assert len(same) == len(queries), [
        (q, ids(ours[q]), before[q]) for q in queries if q not in same
    ]
    # The lexical leg on the cluster scores as tantivy does: the engine's terms (en_stem)
    # and the whole index's statistics (dfs) over 3 shards give every query the same BM25
    # scores. Only the order of equal scores differs (tantivy: catalog order; the cluster:
    # shard by shard), and the sample catalog's product families tie often, which is
    # what moves some hybrid top-10s.
    for q in queries:
        cluster_scores = sorted(h.score for h in snap.lexical.search(q, 10))
        tantivy = both_legs["embedded"].snapshot.lexical.search(q, 10)
        assert cluster_scores == pytest.approx(sorted(h.score for h in tantivy), rel=1e-3), q
    assert overlap >= 0.6


def test_hybrid_searches_on_both_legs_survive_a_killed_node(
    both_legs: dict[str, SearchService], sample_products: list[Product], cluster: Any
) -> None:
    """Hybrid searches through the service, both legs on the cluster, while a node holding
    primaries of both replicated indices dies: none fails, none changes, none is degraded;
    on the indices without replicas both legs say which part of the answer is missing."""
    rep, bare = (leg_indices(both_legs[n]) for n in ("replicated", "bare"))
    primaries = [shard_nodes(cluster, index)["p"] for index in (*rep, *bare)]
    victims = sorted(set.intersection(*primaries))
    assert victims, f"no node holds primaries of all four indices: {primaries}"
    victim = victims[0]

    candidates = hybrid_queries(sample_products)
    expected = {q: ids(hybrid(both_legs["replicated"], q)) for q in candidates}
    queries = [q for q in candidates if expected[q]]
    assert len(queries) >= 10
    assert all(not hybrid(both_legs["bare"], q).degraded for q in queries)

    total = 240
    records: list[tuple[float, str, float, list[str], bool]] = []  # t0, index, s, ...
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop(worker: int) -> None:
        i = worker
        while not stop.is_set():
            with lock:
                if sum(r[1] == "replicated" for r in records) >= total:
                    return
            q = queries[i % len(queries)]
            i += 2
            for name in ("replicated", "bare"):
                t0 = time.perf_counter()
                try:
                    resp = hybrid(both_legs[name], q)
                except Exception as exc:
                    with lock:
                        errors.append(f"{name} {q!r}: {type(exc).__name__}: {exc}")
                    continue
                took = time.perf_counter() - t0
                with lock:
                    records.append((t0, name, took, list(resp.degraded), ids(resp) == expected[q]))

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(2)]
    for w in workers:
        w.start()
    try:
        wait_until("50 queries before the kill", lambda: len(records) >= 50, 120)
        sent = time.perf_counter()
        pid = kill_node(victim)
        kill = time.perf_counter()
        for w in workers:
            w.join(timeout=300)
    finally:
        stop.set()
    assert not any(w.is_alive() for w in workers), "the query loop did not finish in 300 s"

    reps = [r for r in records if r[1] == "replicated"]
    rep_after = [r for r in reps if r[0] >= kill]
    bare_after = [r for r in records if r[1] == "bare" and r[0] >= kill]
    degraded_rep = [r for r in reps if r[3]]
    degraded_bare = [r for r in bare_after if r[3]]
    calm = [r[2] for r in reps if r[0] < kill]
    rough = [r[2] for r in rep_after]
    print(
        f"\nhybrid, both legs on the cluster: killed node {victim} (pid {pid}) after "
        f"{len(calm)} queries; {len(reps)} queries on the replicated indices, {len(errors)} "
        f"failed, {len(degraded_rep)} degraded, {sum(not r[4] for r in rep_after)} answers "
        f"differing from before the kill; latency before the kill p50 {ms(calm, 50):.1f} ms "
        f"p99 {ms(calm, 99):.1f} ms, after p50 {ms(rough, 50):.1f} ms p99 {ms(rough, 99):.1f} "
        f"ms, max {max(rough, default=0) * 1000:.0f} ms; indices without replicas: "
        f"{len(degraded_bare)} of {len(bare_after)} answers after the kill degraded "
        f"({sorted({d for r in degraded_bare for d in r[3]})})"
    )
    assert not errors, errors[:5]
    assert rep_after, "no query ran after the kill"
    assert not degraded_rep, degraded_rep[:5]
    assert all(r[4] for r in rep_after), [r for r in rep_after if not r[4]][:5]
    # Without replicas each leg lost one shard of three, and each says so in numbers.
    # (An answer that ended before the kill was sent; one in flight may see the loss.)
    assert not [r for r in records if r[1] == "bare" and r[0] + r[2] < sent and r[3]]
    assert degraded_bare and all(set(r[3]) <= set(BOTH_PARTIAL) for r in degraded_bare)
    first = next(i for i, r in enumerate(bare_after) if r[3] == BOTH_PARTIAL)
    assert all(r[3] == BOTH_PARTIAL for r in bare_after[first:]), bare_after[first:][:5]
    assert first < len(bare_after) // 2, f"only {first} answers after the kill saw the loss"
    # The dense leg by itself, in dense mode and at the index: the same coverage.
    assert hybrid(both_legs["bare"], queries[0], "dense").degraded == BOTH_PARTIAL[:1]
    qvec = both_legs["bare"].encoder.encode_query([queries[0]])
    assert (
        getattr(both_legs["bare"].snapshot.vectors.search(qvec, 10), "partial", None)
        == (BOTH_PARTIAL[0])
    )

    # The node comes back with its shards: whole answers again.
    run_script("start-node", str(victim))
    cluster.cluster.health(wait_for_status="green", wait_for_nodes=3, timeout="120s")
    assert all(not hybrid(both_legs["bare"], q).degraded for q in queries)
    assert getattr(both_legs["bare"].snapshot.vectors.search(qvec, 10), "partial", 1) is None


def test_updates_on_both_legs_survive_a_killed_node(
    both_legs: dict[str, SearchService], sample_products: list[Product], cluster: Any
) -> None:
    """Incremental updates through the service (both legs on the replicated cluster
    indices) while a node holding their primaries dies: every batch is acknowledged, and
    every acknowledged product is in both legs afterwards: found by its own token in the
    lexical leg, and its row's document (vector and filter fields) in the vector index."""
    svc = both_legs["replicated"]
    lexical_index, vector_index = leg_indices(svc)
    primaries = [shard_nodes(cluster, index)["p"] for index in (lexical_index, vector_index)]
    victim = sorted(set.intersection(*primaries) or primaries[1])[0]
    tag = uuid.uuid4().hex[:6]
    batches, size, kill_after = 16, 5, 4
    acked: list[str] = []
    failed: list[str] = []

    def writer() -> None:
        for b in range(batches):
            batch = [new_product(b * size + j, tag) for j in range(size)]
            try:
                report = svc.apply_updates(batch, [])
            except Exception as exc:
                failed.append(f"batch {b}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            if report.rejected:
                failed.append(f"batch {b}: rejected {report.rejected[:3]}")
                continue
            acked.extend(p.id for p in batch)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until("the first batches", lambda: len(acked) >= kill_after * size, 180)
        pid = kill_node(victim)
    finally:
        thread.join(timeout=600)
    assert not thread.is_alive(), "the update loop did not finish in 600 s"

    for index in (lexical_index, vector_index):
        cluster.cluster.health(index=index, wait_for_status="yellow", timeout="120s")
        cluster.indices.refresh(index=index)
    snap = svc.snapshot
    lost_lexical = []
    for product_id in acked:
        i = product_id.rsplit("-", 1)[1]
        if [h.id for h in snap.lexical.search(f"zq{tag}x{i}", 3)] != [product_id]:
            lost_lexical.append(product_id)
    rows = {pid_: snap.table.row_of[pid_] for pid_ in acked}
    docs = cluster.mget(index=vector_index, ids=[str(r) for r in rows.values()]).body["docs"]
    lost_vector = [
        pid_
        for (pid_, row), doc in zip(rows.items(), docs, strict=True)
        if not doc.get("found") or doc["_source"].get("row") != row
    ]
    print(
        f"\nupdates on both legs: killed node {victim} (pid {pid}) after {kill_after} "
        f"batches of {size}; {len(acked)} products acknowledged, {len(failed)} batches "
        f"failed, lost: {len(lost_lexical)} lexical, {len(lost_vector)} vector"
    )
    assert not failed, failed[:3]
    assert len(acked) == batches * size
    assert not lost_lexical, lost_lexical[:10]
    assert not lost_vector, lost_vector[:10]
    assert snap.vectors.count() == snap.lexical.count() == len(sample_products) + len(acked)

    run_script("start-node", str(victim))
    cluster.cluster.health(wait_for_status="green", wait_for_nodes=3, timeout="120s")
