"""The lexical lifecycle: the factory, the tantivy no-op contract, the Elasticsearch
administration without a cluster (and, against the test node, the alias moved back when
``CURRENT`` cannot be written), and the snapshot store driving any lifecycle."""

from __future__ import annotations

import inspect
import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import ES_URL

import shopsearch.indexer.snapshot as snapshot_module
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.lexical_lifecycle import (
    LEXICAL_BACKENDS,
    ElasticsearchLifecycle,
    LexicalBuild,
    LexicalLifecycle,
    SwitchAction,
    TantivyLifecycle,
    Undo,
    es_index_name,
    lexical_lifecycle,
    lifecycle_of,
)
from shopsearch.indexer.progress import no_progress
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.types import Product

ES_MANIFEST: dict[str, Any] = {
    "version": "20240101T000000Z-abcdef12",
    "lexical_index": {
        "backend": "elasticsearch",
        "index": "shop-20240101t000000z-abcdef12",
        "alias": "shop",
        "cluster": "http://127.0.0.1:9201",
    },
}


def _never() -> set[str]:
    raise AssertionError("the kept names were asked for")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the factory ----------------------------------------------------------------------------


def test_the_factory_maps_each_backend_to_its_lifecycle() -> None:
    assert LEXICAL_BACKENDS == ("tantivy", "elasticsearch")
    for backend in LEXICAL_BACKENDS:
        assert lexical_lifecycle(backend).backend == backend
    assert isinstance(
        lifecycle_of({"lexical_index": {"backend": "tantivy"}}, None), TantivyLifecycle
    )
    # The first manifests had no lexical_index section: tantivy.
    assert isinstance(lifecycle_of({"version": "v"}, None), TantivyLifecycle)

    es = ElasticsearchConnection(f"http://127.0.0.1:{_closed_port()}")  # lazy: no request
    remote = lifecycle_of(ES_MANIFEST, es)
    assert isinstance(remote, ElasticsearchLifecycle)
    assert remote.es is es and remote.prefix == "shop"  # the manifest's alias
    built = lexical_lifecycle("elasticsearch", es=es, es_prefix="products")
    assert isinstance(built, ElasticsearchLifecycle) and built.prefix == "products"
    es.close()


def test_an_unknown_backend_names_the_field_and_the_valid_values(tmp_path: Path) -> None:
    manifest = {"version": "v1", "lexical_index": {"backend": "solr"}}
    with pytest.raises(SnapshotError) as caught:
        lifecycle_of(manifest, None)
    message = str(caught.value)
    assert "lexical_index.backend" in message and "'solr'" in message
    assert "tantivy, elasticsearch" in message and "v1" in message

    # A build with an unknown backend fails before it locks or writes anything.
    products = [Product(id="p1", title="Cordless drill")]
    report = CatalogReport(path="t", format="jsonl", sha256="a" * 8, rows_read=1, products=1)
    with pytest.raises(SnapshotError, match=r"BuildOptions\.lexical\) 'solr' is not one of"):
        build_snapshot(
            products, report, tmp_path, cast(Encoder, None), BuildOptions(lexical="solr")
        )
    assert list(tmp_path.iterdir()) == []


def test_both_lifecycles_implement_every_method_of_the_interface() -> None:
    members = {
        name: inspect.signature(fn)
        for name, fn in vars(LexicalLifecycle).items()
        if inspect.isfunction(fn) and not name.startswith("_")
    }
    assert {"build", "open", "switch", "drop", "prepare_build", "names"} <= set(members)
    for cls in (TantivyLifecycle, ElasticsearchLifecycle):
        assert cls.backend in LEXICAL_BACKENDS
        for name, signature in members.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == list(
                signature.parameters
            ), f"{cls.__name__}.{name}"


# -- tantivy: everything but build and open is a no-op ------------------------------------


def test_the_tantivy_lifecycle_builds_and_opens_inside_the_snapshot_and_does_nothing_else(
    tmp_path: Path, sample_products: list[Product]
) -> None:
    lexical = TantivyLifecycle()
    products = sample_products[:20]
    lexical.check_build()
    assert lexical.prepare_build(_never) == []  # never reads the kept snapshots

    built = lexical.build(tmp_path, "v1", products, no_progress)
    assert built == LexicalBuild(meta=built.meta, file="lexical")
    assert built.meta["backend"] == "tantivy" and (tmp_path / "lexical").is_dir()
    manifest = {"version": "v1", "lexical_index": built.meta}
    index = lexical.open(tmp_path, manifest, built.file)
    assert index.count() == len(products) and index.search("drill", 5)

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for action in ("promote", "rollback"):
        lexical.check_switch("v1", action)  # type: ignore[arg-type]
        undo = lexical.switch("v1", manifest, action, "v0")  # type: ignore[arg-type]
        assert undo() is None
    lexical.discard("v1")
    lexical.drop("v1", manifest)
    assert lexical.names(manifest) == set()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# -- Elasticsearch without a cluster ------------------------------------------------------


def test_the_elasticsearch_lifecycle_without_a_connection_says_how_to_give_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lexical = ElasticsearchLifecycle(None, "shop")
    version = ES_MANIFEST["version"]
    with pytest.raises(SnapshotError, match="--lexical elasticsearch needs the cluster"):
        lexical.check_build()
    with pytest.raises(SnapshotError, match="needs the cluster"):
        lexical.prepare_build(_never)
    with pytest.raises(SnapshotError, match="rolling back to it needs the cluster"):
        lexical.check_switch(version, "rollback")
    with pytest.raises(SnapshotError, match="promoting it needs the cluster"):
        lexical.switch(version, ES_MANIFEST, "promote", "older")
    with pytest.raises(SnapshotError, match="--es-url"):
        lexical.open(tmp_path, ES_MANIFEST, None)
    assert lexical.names(ES_MANIFEST) == {ES_MANIFEST["lexical_index"]["index"]}
    lexical.discard(version)  # nothing to reach: the next build's sweep deletes it
    caplog.set_level(logging.WARNING, logger="shopsearch.indexer.lexical_lifecycle")
    lexical.drop(version, ES_MANIFEST)
    assert "without a cluster connection" in caplog.text


def test_the_elasticsearch_lifecycle_on_a_cluster_that_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening makes no request; switching fails having changed nothing; dropping and
    discarding only log."""
    url = f"http://127.0.0.1:{_closed_port()}"
    with ElasticsearchConnection(url, timeout=0.2, admin_timeout=2.0) as down:
        lexical = ElasticsearchLifecycle(down, "shop")
        version = ES_MANIFEST["version"]
        index = lexical.open(tmp_path, ES_MANIFEST, None)
        assert index.index == ES_MANIFEST["lexical_index"]["index"]  # type: ignore[attr-defined]
        with pytest.raises(SnapshotError, match="CURRENT still names older"):
            lexical.switch(version, ES_MANIFEST, "promote", "older")
        caplog.set_level(logging.WARNING, logger="shopsearch.indexer.es_alias_lifecycle")
        lexical.drop(version, ES_MANIFEST)
        lexical.discard(version)
    assert "of pruned snapshot" in caplog.text and "failed build's lexical index" in caplog.text


# -- the store drives any lifecycle the same way ------------------------------------------


class Recording:
    """A lifecycle that records what the store asks of it."""

    backend = "recording"

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        self.calls = calls

    def check_build(self) -> None:
        self.calls.append(("check_build", ""))

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        return []

    def build(
        self, work: Path, version: str, products: Sequence[Product], progress: Any
    ) -> LexicalBuild:
        raise NotImplementedError

    def discard(self, version: str) -> None:
        self.calls.append(("discard", version))

    def open(
        self, path: Path, manifest: Mapping[str, Any], lexical_file: str | None
    ) -> LexicalIndex:
        raise NotImplementedError

    def check_switch(self, version: str, action: SwitchAction) -> None:
        self.calls.append(("check_switch", version))

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        self.calls.append((action, version))
        return lambda: self.calls.append(("undo", version))

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        # Dropped after the snapshot became a tombstone: no longer listed.
        assert version not in SnapshotStore(self.root).versions()
        self.calls.append(("drop", version))

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        return {f"index-{manifest['version']}"}

    root: Path


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []
    fake = Recording(calls)
    fake.root = tmp_path
    monkeypatch.setattr(snapshot_module, "lifecycle_of", lambda manifest, es: fake)
    yield calls


def _fake_snapshots(root: Path, versions: list[str]) -> SnapshotStore:
    for version in versions:
        path = root / "snapshots" / version
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"version": version}))
    return SnapshotStore(root)


def test_the_store_undoes_the_leg_switch_when_current_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[tuple[str, str]]
) -> None:
    store = _fake_snapshots(tmp_path, ["v1", "v2"])
    store.promote("v1")
    assert recorded == [("promote", "v1")]

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(snapshot_module, "write_atomic", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.promote("v2")
    assert recorded[1:] == [("promote", "v2"), ("undo", "v2")]
    assert store.current() == "v1"


def test_the_store_prunes_legs_after_tombstoning_and_names_the_kept_ones(
    tmp_path: Path, recorded: list[tuple[str, str]]
) -> None:
    store = _fake_snapshots(tmp_path, ["v1", "v2", "v3"])
    for version in ("v1", "v2", "v3"):
        store.promote(version)
    assert store.prune(2) == ["v1"]
    assert ("drop", "v1") in recorded
    assert store.lexical_names() == {"index-v2", "index-v3"}
    assert store.rollback(load=lambda version: None).version == "v2"
    assert recorded[-2:] == [("check_switch", "v2"), ("rollback", "v2")]


# -- against the test node ----------------------------------------------------------------


@pytest.fixture
def prefix(es_client: Any) -> Iterator[str]:
    name = f"test-lifecycle-{uuid.uuid4().hex[:10]}"
    yield name
    existing = es_client.indices.get(index=f"{name}*", allow_no_indices=True, features="settings")
    if existing.body:
        es_client.indices.delete(index=",".join(existing.body))


@pytest.mark.elasticsearch
def test_the_alias_moves_back_when_current_cannot_be_written(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es_client: Any,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    products = list(sample_products[:30])
    versions = []
    with ElasticsearchConnection(ES_URL, timeout=5.0) as es:
        for tag, promote in (("a", True), ("b", False)):
            report = CatalogReport(
                path="t", format="jsonl", sha256=tag * 8, rows_read=30, products=30
            )
            options = BuildOptions(
                probe_count=10, lexical="elasticsearch", es_index_prefix=prefix, promote=promote
            )
            versions.append(build_snapshot(products, report, tmp_path, encoder, options, es=es))
        serving, built = (m["version"] for m in versions)

        def alias_target() -> str:
            (name,) = es_client.indices.get_alias(name=prefix).body
            return str(name)

        assert alias_target() == es_index_name(prefix, serving)

        def disk_full(*args: object, **kwargs: object) -> None:
            raise OSError("No space left on device")

        monkeypatch.setattr(snapshot_module, "write_atomic", disk_full)
        store = SnapshotStore(tmp_path, es=es)
        with pytest.raises(OSError, match="No space"):
            store.promote(built)
        assert store.current() == serving
        assert alias_target() == es_index_name(prefix, serving)
        monkeypatch.undo()
        store.promote(built)
        assert alias_target() == es_index_name(prefix, built)
