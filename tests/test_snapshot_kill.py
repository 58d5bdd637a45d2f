"""kill -9 of the real commands inside every dangerous window (issue 12).

Each window -- a build about to rename its directory into place, a promotion between
its snapshot and ``CURRENT`` and between ``CURRENT`` and ``HISTORY``, a prune between its
tombstone and the delete, a rollback on both sides of its switch, an update on both
sides of its commit, the embedding cache before its commit, a nightly job after its
build and after its evaluation -- is held open by
:mod:`indexer.crashpoints` (``SHOPSEARCH_CRASHPOINT``), and the real ``shopsearch``
process is killed with SIGKILL there. After each kill: every listed snapshot loads
(``CURRENT`` included), the history never names a snapshot that did not serve, the next
build succeeds and cleans up, and a rollback then goes back to the version that served
when the process died.

The commands run in parallel (a few at a time, one thread each), each in its own copy
of one index directory. The module costs about 180 s of CPU (seven of the nine commands
load torch and the model): about two minutes on 2 idle cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shopsearch.api.cli import sample_catalog_path
from shopsearch.indexer.catalog import load_catalog
from shopsearch.indexer.crashpoints import CRASHPOINTS
from shopsearch.indexer.embedding_cache import CACHE_FILE
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.snapshot_load import load_snapshot
from shopsearch.indexer.updates import apply_updates
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.types import Product

pytestmark = pytest.mark.slow

SHOPSEARCH = [sys.executable, "-m", "shopsearch.api.cli"]
BASE_PRODUCTS = 40  # the catalog of the builds before the kill (first N sample rows)
PARALLEL = 3  # commands started at once (each loads torch and the model)


@dataclass(frozen=True)
class Window:
    """A crashpoint and the command killed there (``{index}``, ``{upserts}`` filled in)."""

    point: str
    command: list[str]
    #: Whether CURRENT moved before the kill (to the new build, or the rollback target).
    switched: bool = False


def build_command(limit: int = BASE_PRODUCTS, keep: int = 3) -> list[str]:
    return [
        "build", "--catalog", str(sample_catalog_path()), "--limit", str(limit),
        "--index-dir", "{index}", "--device", "cpu", "--keep", str(keep),
    ]  # fmt: skip


UPDATE = ["update", "--index-dir", "{index}", "--upserts", "{upserts}", "--device", "cpu"]
NIGHTLY = [
    "nightly", "--catalog", "{catalog}", "--index-dir", "{index}", "--queries", "{queries}",
    "--qrels", "{qrels}", "--device", "cpu",
]  # fmt: skip
WINDOWS = [
    Window("build.written", build_command()),
    Window("promote.before-current", build_command()),
    Window("promote.before-history", build_command(), switched=True),
    Window("prune.tombstoned", build_command(keep=2), switched=True),
    Window("rollback.before-current", ["rollback", "--index-dir", "{index}"]),
    Window("rollback.before-history", ["rollback", "--index-dir", "{index}"], switched=True),
    Window("update.before-commit", UPDATE),
    Window("update.after-commit", UPDATE),
    Window("cache.before-commit", build_command(limit=BASE_PRODUCTS + 20)),
    Window("nightly.built", NIGHTLY),
    Window("nightly.evaluated", NIGHTLY),
]


def test_every_crashpoint_is_exercised() -> None:
    assert sorted(w.point for w in WINDOWS) == sorted(CRASHPOINTS)


@dataclass
class Killed:
    """An index directory after its command was killed at ``window.point``."""

    window: Window
    index: Path
    served_before: list[str]  # the history before the command ran
    seconds_to_window: float
    log: str = ""
    versions_before: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    """Two promoted builds of the first 40 sample products; the serving one updated once
    (generation 1), so an update's commit has a generation to leak."""
    path = tmp_path_factory.mktemp("kill-base") / "index"
    products, report = load_catalog(sample_catalog_path(), limit=BASE_PRODUCTS)
    for _ in range(2):
        build_snapshot(products, report, path, encoder, BuildOptions(probe_count=10))
    store = SnapshotStore(path)
    apply_updates(store.path(store.current() or ""), retitled(products[:2], "v1"), [], encoder)
    return path


def retitled(products: list[Product], tag: str) -> list[Product]:
    return [dataclasses.replace(p, title=f"{p.title} ({tag})") for p in products]


def nightly_files(directory: Path, products: list[Product]) -> dict[str, str]:
    """A catalog the serving snapshot was not built from, and judged queries for it."""
    catalog = directory / "nightly-catalog.jsonl"
    with catalog.open("w") as fh:
        for p in retitled(products, "v9"):
            fh.write(json.dumps({"id": p.id, "title": p.title, "brand": p.brand}) + "\n")
    queries, qrels = directory / "queries.tsv", directory / "qrels.txt"
    queries.write_text("".join(f"q{i}\t{p.title}\n" for i, p in enumerate(products)))
    qrels.write_text("".join(f"q{i} 0 {p.id} 3\n" for i, p in enumerate(products)))
    return {"catalog": str(catalog), "queries": str(queries), "qrels": str(qrels)}


def upserts_file(directory: Path, products: list[Product]) -> Path:
    path = directory / "upserts.jsonl"
    with path.open("w") as fh:
        for p in retitled(products[2:5], "v2"):
            row = {"id": p.id, "title": p.title, "brand": p.brand, "price": p.price}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def killed(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Killed]:
    """Every window's command run in its own copy of ``base`` and killed there."""
    products, _ = load_catalog(sample_catalog_path(), limit=BASE_PRODUCTS)
    root = tmp_path_factory.mktemp("kills")
    upserts = upserts_file(root, products)
    nightly = nightly_files(root, products)
    pending = list(WINDOWS)
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float, Killed]] = {}
    done: dict[str, Killed] = {}
    deadline = time.monotonic() + 600
    while pending or running:
        while pending and len(running) < PARALLEL:
            window = pending.pop(0)
            work = root / window.point
            index = work / "index"
            shutil.copytree(base, index)
            store = SnapshotStore(index)
            marker = work / "marker"
            log = work / "log.txt"
            argv = [a.format(index=index, upserts=upserts, **nightly) for a in window.command]
            env = {
                **os.environ,
                "SHOPSEARCH_CRASHPOINT": window.point,
                "SHOPSEARCH_CRASHPOINT_MARKER": str(marker),
                # Several commands share the cores: one thread each, no oversubscription.
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*SHOPSEARCH, *argv], stdout=out, stderr=subprocess.STDOUT, env=env
                )
            running[window.point] = (
                proc,
                marker,
                time.monotonic(),
                Killed(window, index, store.history(), 0.0, str(log), store.versions()),
            )
        for point, (proc, marker, started, result) in list(running.items()):
            if marker.exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                assert proc.returncode == -signal.SIGKILL
                result.seconds_to_window = time.monotonic() - started
                done[point] = result
                del running[point]
            elif proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(
                    f"{point}: the command ended (or hung) before reaching the window:\n"
                    + Path(result.log).read_text()[-3000:]
                )
        time.sleep(0.05)
    return done


@pytest.fixture
def after(request: pytest.FixtureRequest, killed: dict[str, Killed]) -> Iterator[Killed]:
    yield killed[request.param]


def listed_snapshots_load(store: SnapshotStore) -> None:
    for version in store.versions():
        load_snapshot(store.path(version))  # raises if damaged


CHECKS: dict[str, Callable[[Killed, SnapshotStore], None]] = {}


def check(point: str) -> Callable[[Callable[[Killed, SnapshotStore], None]], object]:
    def register(fn: Callable[[Killed, SnapshotStore], None]) -> object:
        CHECKS[point] = fn
        return fn

    return register


@check("build.written")
def _(k: Killed, store: SnapshotStore) -> None:
    assert [p.name[:10] for p in store.snapshots_dir.iterdir() if p.name.startswith(".")] == [
        ".building-"
    ]


@check("promote.before-current")
def _(k: Killed, store: SnapshotStore) -> None:
    (never,) = set(store.versions()) - set(k.versions_before)
    assert never not in store.history()  # built, never served: no rollback goes there


@check("prune.tombstoned")
def _(k: Killed, store: SnapshotStore) -> None:
    hidden = [p.name for p in store.snapshots_dir.iterdir() if p.name.startswith(".")]
    assert hidden == [f".deleting-{k.versions_before[0]}"]
    assert k.versions_before[0] not in store.versions()


@check("update.before-commit")
def _(k: Killed, store: SnapshotStore) -> None:
    path = store.path(store.current() or "")
    assert load_snapshot(path).generation == 1  # the commit did not happen
    assert {"vectors.g2", "products.g2.parquet"} & {p.name for p in path.iterdir()}


@check("update.after-commit")
def _(k: Killed, store: SnapshotStore) -> None:
    path = store.path(store.current() or "")
    assert load_snapshot(path).generation == 2
    assert (path / "vectors").is_dir()  # generation 0: leaked by the kill, for now


@check("cache.before-commit")
def _(k: Killed, store: SnapshotStore) -> None:
    (cache_dir,) = (store.root / "embedding-cache").iterdir()
    names = sorted(p.name for p in cache_dir.iterdir())
    assert CACHE_FILE in names and any(n.endswith(".tmp") for n in names), names


@check("nightly.evaluated")
def _(k: Killed, store: SnapshotStore) -> None:
    (candidate,) = set(store.versions()) - set(k.versions_before)
    assert "evaluation" in store.manifest(candidate)  # evaluated, never promoted
    assert candidate not in store.history()


@pytest.mark.parametrize("after", [w.point for w in WINDOWS], indirect=True)
def test_kill_leaves_a_servable_index_and_a_true_rollback(after: Killed, encoder: Encoder) -> None:
    store = SnapshotStore(after.index)
    window = after.window
    current = store.current()
    assert current is not None
    # CURRENT moved only where the window is past the switch.
    assert (current != after.served_before[-1]) == window.switched, (current, after)
    listed_snapshots_load(store)  # CURRENT and every other snapshot a rollback may pick
    history = store.history()
    assert history[-1] == current
    assert set(history) <= set(after.served_before) | {current}  # nothing never served
    if window.point in CHECKS:
        CHECKS[window.point](after, store)

    limit = BASE_PRODUCTS + 20 if window.point == "cache.before-commit" else BASE_PRODUCTS
    products, report = load_catalog(sample_catalog_path(), limit=limit)
    if window.point.startswith("update."):
        # The next update sweeps what the killed one left: two generations remain.
        path = store.path(current)
        result = apply_updates(path, retitled(products[5:6], "v3"), [], encoder)
        generation = result.report.generation
        files = {p.name for p in path.iterdir() if p.name.startswith(("vectors", "products"))}
        assert files == {
            f"vectors.g{generation}", f"products.g{generation}.parquet",
            f"vectors.g{generation - 1}", f"products.g{generation - 1}.parquet",
        }  # fmt: skip

    # The next build succeeds, cleans up, and takes no --keep slot from a never-served one.
    manifest = build_snapshot(
        products, report, after.index, encoder, BuildOptions(probe_count=10, keep=2)
    )
    newest = manifest["version"]
    assert store.current() == newest
    assert not [p.name for p in store.snapshots_dir.iterdir() if p.name.startswith(".")]
    assert store.versions() == sorted({current, newest})
    listed_snapshots_load(store)
    if window.point == "cache.before-commit":
        assert manifest["build"]["embedding_cache_hits"] >= BASE_PRODUCTS
        (cache_dir,) = (store.root / "embedding-cache").iterdir()
        assert sorted(p.name for p in cache_dir.iterdir()) == [CACHE_FILE]

    # Rollback goes back to the version that served when the process was killed.
    assert store.rollback().version == current
    assert store.current() == current
    load_snapshot(store.path(current))
