"""Rollback, prune, the embedding cache and update generations stay safe when a step is
cut short (issue 12, defects 2, 3, 4, 9, 10). The real kill -9 of the real commands at
each window is in test_snapshot_kill.py (slow); here the same on-disk states are made
in-process, fast."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shopsearch.api.app import create_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.embedding_cache import CACHE_FILE, EmbeddingCache
from shopsearch.indexer.history import prune_plan, rollback_candidates, served_stack
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.snapshot_load import load_snapshot
from shopsearch.indexer.updates import apply_updates
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.types import Product

TOKEN = "safety-test-token-0123456789"


def report_for(products: list[Product], tag: str) -> CatalogReport:
    return CatalogReport(
        path="test", format="jsonl", sha256=tag * 8, rows_read=len(products), products=len(products)
    )


def build(
    index_dir: Path, encoder: Encoder, products: list[Product], tag: str, **options: Any
) -> str:
    manifest = build_snapshot(
        products,
        report_for(products, tag),
        index_dir,
        encoder,
        BuildOptions(probe_count=5, **options),
    )
    return str(manifest["version"])


def damage(store: SnapshotStore, version: str) -> None:
    """What a disk fault or a half-finished delete leaves: the manifest, no vectors."""
    shutil.rmtree(store.path(version) / "vectors")


# -- defect 2: rollback loads its target before switching ------------------------------


def test_rollback_refuses_a_damaged_target_and_leaves_current(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    first = build(tmp_path, encoder, products, "a")
    second = build(tmp_path, encoder, products, "b")
    store = SnapshotStore(tmp_path)
    damage(store, first)
    with pytest.raises(SnapshotError, match=f"no previously served snapshot loads.*{first}"):
        store.rollback()
    assert store.current() == second
    assert store.history() == [first, second]
    load_snapshot(store.path(store.current() or ""))  # what a restart loads


def test_rollback_passes_over_a_damaged_snapshot_to_the_one_before(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    a, b, c = (build(tmp_path, encoder, products, tag) for tag in "abc")
    store = SnapshotStore(tmp_path)
    damage(store, b)
    result = store.rollback()
    assert (result.version, result.previous) == (a, c)
    assert [v for v, _ in result.skipped] == [b]
    assert store.current() == a and store.history() == [a]


def test_admin_rollback_answers_409_without_paths_and_keeps_serving(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    first = build(tmp_path, encoder, products, "a")
    second = build(tmp_path, encoder, products, "b")
    store = SnapshotStore(tmp_path)
    damage(store, first)
    settings = Settings(index_dir=tmp_path, reload_interval_s=0, admin_token=TOKEN)
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    with TestClient(create_app(settings, service=svc)) as client:
        r = client.post("/v1/admin/rollback", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "no previously served snapshot loads" in detail and first in detail
        assert str(tmp_path) not in detail and str(tmp_path.resolve()) not in detail
        assert store.current() == second and svc.snapshot.version == second
        assert client.get("/v1/search", params={"q": "drill"}).json()["index_version"] == second

        # Repaired (rebuilt), the rollback goes through: loaded, then switched.
        third = build(tmp_path, encoder, products, "c")
        assert (
            client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).json()[
                "index_version"
            ]
            == third
        )
        r = client.post("/v1/admin/rollback", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index_version"] == second and body["previous"] == third
        assert body["skipped"] == []
        assert store.current() == second and svc.snapshot.version == second


# -- defect 3: a half-pruned snapshot is never listed -----------------------------------


def test_a_prune_cut_short_leaves_nothing_listed_half_deleted(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shopsearch.indexer.snapshot as module

    products = sample_products[:20]
    a, b, c = (build(tmp_path, encoder, products, tag, keep=5) for tag in "abc")
    store = SnapshotStore(tmp_path)
    real_rmtree = shutil.rmtree

    def dies_midway(path: Any, *args: Any, **kwargs: Any) -> None:
        # The process dies after removing vectors/ (the order observed in issue 12).
        if (Path(path) / "vectors").is_dir():
            real_rmtree(Path(path) / "vectors")
            raise KeyboardInterrupt("killed while deleting")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(module.shutil, "rmtree", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        store.prune(2)
    monkeypatch.undo()
    assert store.versions() == [b, c]
    assert [s.version for s in store.list_snapshots()] == [b, c]
    hidden = [p.name for p in store.snapshots_dir.iterdir() if p.name.startswith(".")]
    assert hidden == [f".deleting-{a}"]
    assert store.rollback().version == b
    with pytest.raises(SnapshotError, match="oldest snapshot kept"):
        store.rollback()  # never to the half-deleted one
    assert store.current() == b
    # The next rollback, prune, build or server start removes the tombstone.
    assert not [p for p in store.snapshots_dir.iterdir() if p.name.startswith(".")]


# -- defect 4: rollback goes to the previously served version ---------------------------


def test_rollback_skips_a_snapshot_that_never_served(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    a = build(tmp_path, encoder, products, "a", keep=2)
    b = build(tmp_path, encoder, products, "b", keep=2)
    # Built but never promoted: what a build killed just before its switch leaves.
    never = build(tmp_path, encoder, products, "c", promote=False)
    store = SnapshotStore(tmp_path)
    assert store.current() == b and never in store.versions()
    d = build(tmp_path, encoder, products, "d", keep=2)
    # keep=2: the never-promoted snapshot took no slot; the one that served before did.
    assert store.versions() == [b, d]
    assert store.history() == [a, b, d]
    assert store.rollback().version == b


def test_prune_keeps_current_the_rollback_target_and_a_pending_build(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    a, b, c = (build(tmp_path, encoder, products, tag, keep=5) for tag in "abc")
    store = SnapshotStore(tmp_path)
    assert store.rollback().version == b
    pending = build(tmp_path, encoder, products, "d", promote=False)
    # keep=2: the newest two (c rolled back from, the pending build) plus CURRENT (b)
    # and the rollback target (a).
    assert store.prune(2) == []
    store.promote(pending)
    assert store.history() == [a, b, pending]
    assert store.prune(2) == [a, c]  # c never served before pending; b is the target
    assert store.prune(1) == [b]  # keep=1 asks for no rollback
    assert store.versions() == [pending]


def test_history_reconciles_with_current_after_a_kill_between_them() -> None:
    stack = [{"version": v, "at": ""} for v in ("a", "b", "c")]
    names = lambda entries: [e["version"] for e in entries]  # noqa: E731
    # Promotion of d killed after CURRENT switched, before HISTORY: d served.
    assert names(served_stack(stack, "d", ["a", "b", "c", "d"])) == ["a", "b", "c", "d"]
    # Rollback to b killed after CURRENT switched: c is no longer served.
    assert names(served_stack(stack, "b", ["a", "b", "c"])) == ["a", "b"]
    # No HISTORY (an index dir from before it): every older snapshot counts as served.
    assert names(served_stack(None, "b", ["a", "b", "c"])) == ["a", "b"]
    assert served_stack(stack, None, []) == []
    assert rollback_candidates([{"version": v} for v in ("a", "b", "a", "c")]) == ["a", "b"]
    # Never-served "x" older than the newest served one takes no slot and is deleted.
    served = [*stack[:2], {"version": "y"}]
    assert prune_plan(["a", "b", "x", "y"], served, "y", 3) == ["x"]
    assert prune_plan(["a", "b", "x", "y"], served, "y", 2) == ["a", "x"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_plan(["a"], stack, "a", 0)


# -- defect 9: the embedding cache commits keys and vectors together --------------------


def fake_encode(texts: Any) -> np.ndarray:  # deterministic stand-in for a model
    return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("interrupted_call", [1, 2])
def test_embedding_cache_save_cut_short_keeps_the_previous_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_call: int
) -> None:
    cache = EmbeddingCache(tmp_path, "f" * 64, dim=2)
    first = [f"text {i}" for i in range(10)]
    cache.encode(first, fake_encode)
    real_replace = os.replace
    calls = 0

    def dies_at_a_rename(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == interrupted_call:
            raise KeyboardInterrupt("killed while saving the cache")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_a_rename)
    with contextlib.suppress(KeyboardInterrupt):
        cache.encode([*first, "new text"], fake_encode)
    monkeypatch.undo()
    # Whichever rename the save died at, the previous cache (or the new one) is whole.
    assert cache.encode(first, fake_encode)[1] == len(first)


def test_embedding_cache_removes_temp_files_of_killed_saves(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "f" * 64, dim=2)
    cache.encode(["a", "b"], fake_encode)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    pid = int(dead.stdout)
    stale = [cache.dir / f".{CACHE_FILE}.{pid}.tmp", cache.dir / f".vectors.npy.{pid}.tmp"]
    for path in stale:
        path.write_bytes(b"half a save")
    alive = cache.dir / f".{CACHE_FILE}.{os.getppid()}.tmp"  # a running save's
    alive.write_bytes(b"being written")
    assert cache.encode(["a", "b", "c"], fake_encode)[1] == 2
    assert not any(p.exists() for p in stale)
    assert alive.exists()
    assert sorted(p.name for p in cache.dir.iterdir()) == sorted([CACHE_FILE, alive.name])


def test_embedding_cache_reads_the_two_file_layout(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "f" * 64, dim=2)
    cache.dir.mkdir(parents=True)
    from shopsearch.indexer.embedding_cache import _key

    keys = np.frombuffer(b"".join(_key(t) for t in ("a", "bb")), np.uint8).reshape(-1, 16)
    np.save(cache.dir / "keys.npy", keys)
    np.save(cache.dir / "vectors.npy", fake_encode(["a", "bb"]))
    assert cache.encode(["a", "bb", "ccc"], fake_encode)[1] == 2
    assert sorted(p.name for p in cache.dir.iterdir()) == [CACHE_FILE]


# -- defect 10: files of old update generations are swept ------------------------------


def generation_files(path: Path) -> set[str]:
    names = {"manifest.json", ".update.lock"}
    return {p.name for p in path.iterdir() if p.name not in names}


def test_update_killed_after_commit_leaks_nothing_for_long(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:30]
    build(tmp_path, encoder, products, "a")
    store = SnapshotStore(tmp_path)
    path = store.path(store.current() or "")
    changed = [dataclasses.replace(p, price=(p.price or 0) + i + 1) for i, p in enumerate(products)]
    apply_updates(path, changed[:1], [], encoder)  # generation 1
    gen0 = tmp_path / "gen0"
    gen0.mkdir()
    for name in ("products.parquet", "vectors", "lexical"):
        (shutil.copytree if (path / name).is_dir() else shutil.copy)(path / name, gen0 / name)
    apply_updates(path, changed[1:2], [], encoder)  # generation 2 drops generation 0
    # Generation 2's commit killed before its clean-up: generation 0 is still there.
    for name in ("products.parquet", "vectors", "lexical"):
        (shutil.copytree if (gen0 / name).is_dir() else shutil.copy)(gen0 / name, path / name)
    apply_updates(path, changed[2:3], [], encoder)  # generation 3
    assert generation_files(path) == {
        "products.g3.parquet", "vectors.g3", "lexical.g3",
        "products.g2.parquet", "vectors.g2", "lexical.g2",
    }  # fmt: skip
    assert load_snapshot(path).generation == 3
    # A prune sweeps too (an update killed after its commit, and no update since).
    for name in ("products.g1.parquet", "vectors.g1", ".vectors.g4.tmp"):
        (path / name).mkdir()
    store.prune(3)
    assert "vectors.g1" not in generation_files(path)
    assert ".vectors.g4.tmp" not in generation_files(path)
    assert {"vectors.g3", "vectors.g2"} <= generation_files(path)
    assert load_snapshot(path).generation == 3


def test_manifest_of_a_sweep_is_the_only_truth(tmp_path: Path) -> None:
    """The sweep deletes nothing when the manifest cannot be read."""
    from shopsearch.indexer.generations import sweep_generations

    (tmp_path / "vectors.g7").mkdir()
    assert sweep_generations(tmp_path) == []
    (tmp_path / "manifest.json").write_text(json.dumps({"generation": 9}))
    assert sweep_generations(tmp_path) == ["vectors.g7"]


def test_temp_files_of_killed_writes_are_swept_by_the_next_build(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    store = SnapshotStore(tmp_path)
    (tmp_path / "snapshots" / ".deleting-old").mkdir(parents=True)
    pid = dead.stdout.strip()
    stale = [tmp_path / f".CURRENT.{pid}.tmp", tmp_path / f".HISTORY.{pid}.tmp"]
    for path in stale:
        path.write_text("half")
    alive = tmp_path / f".HISTORY.{os.getppid()}.tmp"
    alive.write_text("being written")
    with store.build_lock():
        store.clean_partial()
    assert not any(p.exists() for p in stale) and alive.exists()
    assert not (tmp_path / "snapshots" / ".deleting-old").exists()
