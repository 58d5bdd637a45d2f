"""Elasticsearch snapshots and resilience on a real node: versioned indices behind an alias,
atomic promotion under concurrent queries, rollback, pruning, rejected documents reported
by id, and a cluster that is unreachable, too slow or stopped mid-run.

Needs the node that ``make test`` starts (``.ci/elasticsearch.sh start``; URL from
``SHOPSEARCH_ES_URL``). Without one the ``elasticsearch``-marked tests are skipped, except
under ``CI=true`` where they fail. The last test starts and stops a second node of its own
with the same script, so the shared node is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ES_URL, es_unavailable

from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.types import Product

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "elasticsearch.sh"


@pytest.fixture
def prefix(es_client: Any) -> Iterator[str]:
    """A fresh index prefix; every ``<prefix>-*`` index is deleted afterwards."""
    name = f"test-alias-{uuid.uuid4().hex[:10]}"
    yield name
    existing = es_client.indices.get(index=f"{name}*", allow_no_indices=True, features="settings")
    if existing.body:
        # Named, not wildcard: the node refuses wildcard deletes (destructive_requires_name).
        es_client.indices.delete(index=",".join(existing.body))


def products(n: int, word: str = "widget") -> list[Product]:
    return [
        Product(id=f"{word}-{i}", title=f"{word.title()} number {i}", brand="Acme", price=float(i))
        for i in range(n)
    ]


def es_index(es_client: Any, name: str, **kwargs: Any) -> Any:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    return ElasticsearchIndex(name, client=es_client, **{"timeout": 5.0, **kwargs})


def built_versions(es_client: Any, prefix: str, sizes: list[int]) -> list[str]:
    admin = es_index(es_client, prefix)
    names = []
    for i, n in enumerate(sizes):
        handle = admin.create_versioned_index(prefix, f"v{i:03d}")
        handle.build(products(n))
        names.append(handle.index)
    return names


# -- promotion, rollback, pruning ----------------------------------------------------------


@pytest.mark.elasticsearch
def test_promote_under_concurrent_queries_never_fails_a_query(es_client: Any, prefix: str) -> None:
    sizes = [5, 8, 11]
    names = built_versions(es_client, prefix, sizes)
    admin = es_index(es_client, prefix)
    admin.promote(prefix, names[0])
    reader = es_index(es_client, prefix)  # searches through the alias

    stop = threading.Event()
    failures: list[str] = []
    seen: list[int] = []

    def query_loop() -> None:
        while not stop.is_set():
            try:
                hits = reader.search("widget", 50)
            except Exception as exc:  # any failure at all is what this test looks for
                failures.append(repr(exc))
                continue
            seen.append(len(hits))
            if not hits:
                failures.append("empty result")

    thread = threading.Thread(target=query_loop, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        for i in range(1, 13):
            admin.promote(prefix, names[i % len(names)])
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == []
    assert len(seen) >= 20, f"only {len(seen)} queries ran during the promotions"
    assert set(seen) <= set(sizes)
    assert len(set(seen)) >= 2, "the readers never saw a promotion"
    assert admin.current_index(prefix) == names[12 % len(names)]


@pytest.mark.elasticsearch
def test_promote_rollback_and_the_alias_as_a_search_target(es_client: Any, prefix: str) -> None:
    v0, v1, v2 = built_versions(es_client, prefix, [3, 4, 6])
    admin = es_index(es_client, prefix)
    alias = es_index(es_client, prefix)
    assert admin.current_index(prefix) is None
    for name in (v0, v1, v2):
        admin.promote(prefix, name)
    assert admin.current_index(prefix) == v2
    assert alias.count() == 6
    assert alias.describe()["concrete_index"] == v2
    assert admin.rollback(prefix, prefix) == v1
    assert alias.count() == 4
    assert admin.rollback(prefix, prefix) == v0
    assert alias.count() == 3
    with pytest.raises(LexicalIndexError, match="older than"):
        admin.rollback(prefix, prefix)
    assert admin.rollback(prefix, prefix, to=v2) == v2
    assert len(alias.search("widget", 100)) == 6


@pytest.mark.elasticsearch
def test_promote_refuses_what_is_not_a_built_index(es_client: Any, prefix: str) -> None:
    (v0,) = built_versions(es_client, prefix, [2])
    admin = es_index(es_client, prefix)
    with pytest.raises(LexicalIndexError, match="no such index"):
        admin.promote(prefix, f"{prefix}-missing")
    with pytest.raises(LexicalIndexError, match="already exists"):
        admin.create_versioned_index(prefix, "v000")
    with pytest.raises(LexicalIndexError, match="not a valid Elasticsearch index name"):
        admin.create_versioned_index(prefix, "Bad Version")
    admin.promote(prefix, v0)
    with pytest.raises(LexicalIndexError, match="is an alias"):
        es_index(es_client, prefix).build(products(1))
    with pytest.raises(LexicalIndexError, match="index of that name exists"):
        admin.promote(v0, v0)


@pytest.mark.elasticsearch
def test_prune_keeps_the_newest_k_and_never_the_aliased_one(es_client: Any, prefix: str) -> None:
    admin = es_index(es_client, prefix)
    names = [admin.create_versioned_index(prefix, f"v{i:03d}").index for i in range(5)]
    assert admin.versions(prefix) == names
    admin.promote(prefix, names[0])  # a rollback left the oldest serving
    assert admin.prune(prefix, keep=2) == names[1:3]
    assert admin.versions(prefix) == [names[0], names[3], names[4]]
    admin.promote(prefix, names[4])
    assert admin.prune(prefix, keep=1) == [names[0], names[3]]
    assert admin.versions(prefix) == [names[4]]
    assert admin.prune(prefix, keep=1) == []
    with pytest.raises(LexicalIndexError, match="keep=0"):
        admin.prune(prefix, keep=0)


@pytest.mark.elasticsearch
def test_the_analyzer_is_the_engines_by_default_and_is_recorded(
    es_client: Any, prefix: str
) -> None:
    from elasticsearch import BadRequestError

    admin = es_index(es_client, prefix)
    handle = admin.create_versioned_index(prefix, "v000")
    handle.build(products(2))
    assert handle.describe()["analyzer"] == "en_stem"
    admin.promote(prefix, handle.index)
    # A new handle reads the analyzer from the index's mapping, not from its options.
    assert es_index(es_client, prefix, analyzer="standard").describe()["analyzer"] == "en_stem"
    try:
        es_client.indices.analyze(analyzer="english", text="drills")
        offered = True
    except BadRequestError:
        offered = False  # the test distribution: no analysis-common module
    if not offered:
        forced = es_index(es_client, f"{prefix}-forced", analyzer="english")
        with pytest.raises(LexicalIndexError, match="english"):
            forced.build(products(2))


# -- rejected documents --------------------------------------------------------------------


@pytest.mark.elasticsearch
def test_rejected_documents_fail_the_build_by_id_and_leave_the_alias(
    es_client: Any, prefix: str
) -> None:
    from shopsearch.retrieval.es_bulk import RejectedDocumentsError

    (serving,) = built_versions(es_client, prefix, [4])
    admin = es_index(es_client, prefix)
    admin.promote(prefix, serving)
    bad = [
        # A NaN price, as a pandas reader gives for an empty cell: not valid JSON.
        Product(id="nan-price", title="Widget without a price", price=float("nan")),
        # A brand longer than Lucene's largest term (32766 bytes) cannot be a keyword.
        Product(id="huge-brand", title="Widget with a huge brand", brand="x" * 40_000),
    ]
    handle = admin.create_versioned_index(prefix, "v001")
    with pytest.raises(RejectedDocumentsError) as caught:
        handle.build([*products(5, "gadget"), *bad])
    assert {pid for pid, _ in caught.value.rejected} == {"nan-price", "huge-brand"}
    message = str(caught.value)
    assert "nan-price" in message and "huge-brand" in message
    assert "rejected 2 document(s)" in message
    # Nothing was dropped silently: the good ones are there, the alias did not move.
    assert handle.count() == 5
    assert admin.current_index(prefix) == serving

    with pytest.raises(RejectedDocumentsError) as caught_upsert:
        es_index(es_client, prefix).upsert([products(1, "gizmo")[0], bad[0]])
    assert [pid for pid, _ in caught_upsert.value.rejected] == ["nan-price"]
    assert "gizmo-0" in [h.id for h in es_index(es_client, prefix).search("gizmo", 5)]


# -- an unreachable, slow or stopped cluster -----------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_cluster_raises_lexical_index_error_quickly() -> None:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    index = ElasticsearchIndex(
        "products", url=f"http://user:s3cret@127.0.0.1:{_closed_port()}", timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(LexicalIndexError, match="cannot connect") as caught:
        index.search("drill", 10)
    assert time.monotonic() - started < 2.0
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(index)
    with pytest.raises(LexicalIndexError):
        index.count()
    index.close()


def test_a_cluster_slower_than_the_timeout_raises_lexical_index_error() -> None:
    """A socket that accepts connections and never answers: a hung cluster."""
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        index = ElasticsearchIndex("products", url=url, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(LexicalIndexError, match="timed out"):
            index.search("drill", 10)
        assert time.monotonic() - started < 2.0
        index.close()


def _script(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.elasticsearch
def test_stopping_the_node_mid_run_turns_queries_into_lexical_index_errors(
    es_client: Any,
) -> None:
    """Runs last: a node of its own (same script, another port) is stopped under a query
    loop. Every query either answers or raises LexicalIndexError within the timeout's
    order of magnitude; once the node is gone, every one raises it."""
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    env = {
        **os.environ,
        "SHOPSEARCH_ES_NAME": f"stoptest-{os.getpid()}",
        "SHOPSEARCH_ES_PORT": "auto",
        "SHOPSEARCH_ES_HEAP": "256m",
    }
    try:
        started = _script(env, "start")
        if started.returncode != 0:
            es_unavailable(f"could not start a second node: {started.stderr[-2000:]}")
        url = _script(env, "url").stdout.strip()
        assert url != ES_URL
        index = ElasticsearchIndex("stoptest", url=url, timeout=0.5, admin_timeout=30.0)
        index.build(products(20))
        assert len(index.search("widget", 5)) == 5

        outcomes: list[tuple[float, float, str]] = []  # (started at, seconds, outcome)
        stop = threading.Event()

        def query_loop() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    index.search("widget", 5)
                    outcome = "ok"
                except LexicalIndexError:
                    outcome = "lexical-error"
                except Exception as exc:  # anything else is a bug the service would 500 on
                    outcome = f"other: {exc!r}"
                outcomes.append((t0, time.monotonic() - t0, outcome))
                time.sleep(0.02)

        thread = threading.Thread(target=query_loop, daemon=True)
        thread.start()
        time.sleep(0.5)
        stopped = _script(env, "stop")
        gone_at = time.monotonic()
        assert stopped.returncode == 0, stopped.stderr
        deadline = gone_at + 20
        while time.monotonic() < deadline:
            if sum(1 for t0, _, o in outcomes if t0 > gone_at and o == "lexical-error") >= 10:
                break
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=30)
    finally:
        _script(env, "stop")

    before = [o for t0, _, o in outcomes if t0 < gone_at]
    after = [(d, o) for t0, d, o in outcomes if t0 > gone_at]
    assert "ok" in before[:5], outcomes[:5]
    assert [o for o in before + [o for _, o in after] if o.startswith("other")] == []
    assert len(after) >= 10
    assert all(o == "lexical-error" for _, o in after), after
    slowest = max(d for d, _ in after)
    assert slowest < 2.0, f"a query on the stopped node took {slowest:.2f} s to fail"
