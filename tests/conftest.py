"""Shared fixtures: the real MiniLM loaded once per session, the sample catalog, data paths.

Tests that need ../shared/datasets or a service FAIL when CI=true and it is missing
(a green CI must mean the test ran), and skip otherwise.

Session fixtures are shared by every test of a run. Those documented as read-only
(``encoder``, ``sample_index``, ``sample_service``, ``cross_encoder_dir``) are guarded: the
encoder refuses attribute changes, and after each test that uses one (and at the end of
the session) its state is compared with the state it was created in, so a test that
modifies one fails by name instead of a later test failing for a reason not its own. A
test that needs to change one takes its own copy: ``own_encoder``, ``own_sample_service``,
``sample_index_copy``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shopsearch.api.cli import sample_catalog_path
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import load_catalog
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.encoders import Encoder, default_model_path
from shopsearch.retrieval.types import Product

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
#: The Elasticsearch node `make test` starts (see .ci/elasticsearch.sh).
ES_URL = os.environ.get("SHOPSEARCH_ES_URL", "http://127.0.0.1:9201")


def require(condition: bool, why: str) -> None:
    """Fail under CI, skip elsewhere, when a test's data or service is missing."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: a missing prerequisite is a failure)")
    pytest.skip(why)


def wait_for_server(
    url: str, proc: subprocess.Popen[Any], log_name: str, *, timeout_s: float = 180.0
) -> None:
    """Poll ``url`` (e.g. ``.../healthz``) until it answers 200; fail, pointing at the
    server's log, when ``proc`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server did not start; see {log_name}")
        time.sleep(0.2)


def es_unavailable(why: str) -> None:
    """Skip (fail under CI=true) an Elasticsearch test that has no node, saying how to get one."""
    require(
        False,
        f"{why}; run `make test`, or `.ci/elasticsearch.sh start` and "
        "SHOPSEARCH_ES_URL=$(.ci/elasticsearch.sh url)",
    )


@pytest.fixture(scope="session")
def es_client() -> Iterator[Any]:
    """A client on the test node (``SHOPSEARCH_ES_URL``)."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(ES_URL, request_timeout=10)
    try:
        client.cluster.health(wait_for_status="yellow", timeout="5s")
    except Exception as exc:
        client.close()
        es_unavailable(
            f"no Elasticsearch node at {ES_URL} ({type(exc).__name__}: {str(exc)[:200]})"
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def homedepot_dir() -> Path:
    path = DATASETS / "homedepot"
    require((path / "products.csv").is_file(), f"Home Depot data not found at {path}")
    return path


# -- read-only session fixtures -----------------------------------------------------

#: Guarded session fixtures: name -> (a function returning its state, the state it was
#: created in).
_READ_ONLY: dict[str, tuple[Callable[[], object], object]] = {}


def _guard(name: str, state: Callable[[], object]) -> None:
    _READ_ONLY[name] = (state, state())


def _changed(names: Iterator[str] | list[str]) -> list[str]:
    return [n for n in names if n in _READ_ONLY and _READ_ONLY[n][0]() != _READ_ONLY[n][1]]


def dir_state(path: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``path``, by relative path: a
    file written, added or removed changes it (cheap enough to take after every test)."""
    out = {}
    for file in sorted(path.rglob("*")):
        if file.is_file():
            st = file.stat()
            out[file.relative_to(path).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def patched_names(obj: object) -> list[str]:
    """Callables bound on ``obj`` itself that shadow its class's: a monkeypatched method."""
    own = getattr(obj, "__dict__", {})
    return sorted(
        n for n, v in own.items() if callable(v) and callable(getattr(type(obj), n, None))
    )


def service_state(svc: SearchService) -> dict[str, object]:
    """What a search-only use of a service never changes: the serving snapshot, the
    settings, the models, and the methods of the service, its snapshot and the legs."""
    snap = svc.snapshot
    parts = {"service": svc, "snapshot": snap, "lexical": snap.lexical, "vectors": snap.vectors}
    return {
        "snapshot": (id(snap), snap.version, snap.generation, snap.live_count),
        "settings": svc.settings.model_dump(),
        "models": (id(svc.encoder), id(svc.reranker)),
        "patched": {name: patched_names(obj) for name, obj in parts.items()},
    }


class ReadOnlyEncoder(Encoder):
    """The session ``encoder``: an :class:`Encoder` whose attributes cannot be set or
    deleted once it is loaded. A test that needs another identity or setting takes
    ``own_encoder`` (a copy sharing the loaded weights) or loads one."""

    _loaded = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_loaded", True)

    def _refuse(self, name: str) -> None:
        if self._loaded:
            raise AttributeError(
                f"the session fixture `encoder` is read-only: cannot change {name!r}; "
                "use the `own_encoder` fixture or load an Encoder of the test's own"
            )

    def __setattr__(self, name: str, value: object) -> None:
        self._refuse(name)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse(name)
        super().__delattr__(name)


def encoder_state(encoder: Encoder) -> dict[str, object]:
    """What :class:`ReadOnlyEncoder` cannot refuse: changes inside the loaded model
    (not its train/eval mode, which every ``encode`` sets)."""
    return {
        "max_seq_length": encoder.model.max_seq_length,
        "patched": patched_names(encoder.model),
    }


@pytest.fixture(autouse=True)
def _read_only_fixtures_unchanged(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail the test that changed a read-only session fixture it used. Depends on
    ``monkeypatch`` so the check runs before the test's monkeypatches are undone."""
    yield
    changed = _changed(list(request.fixturenames))
    if changed:
        pytest.fail(
            f"{request.node.nodeid} modified the read-only session fixture(s) "
            f"{', '.join(changed)}; give the test its own copy (own_encoder, "
            "own_sample_service, sample_index_copy)",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _read_only_fixtures_unchanged_at_the_end() -> Iterator[None]:
    """The same check once more after the last test: a module fixture, or a test that
    wrote into a fixture's directory without naming the fixture, is caught here."""
    yield
    changed = _changed(list(_READ_ONLY))
    if changed:
        pytest.fail(
            f"read-only session fixture(s) {', '.join(changed)} changed during the session",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real all-MiniLM-L6-v2 on CPU, loaded once (read-only: see ReadOnlyEncoder)."""
    loaded = ReadOnlyEncoder(device="cpu")
    _guard("encoder", lambda: encoder_state(loaded))
    return loaded


@pytest.fixture
def own_encoder(encoder: Encoder) -> Encoder:
    """A plain copy of the session encoder whose attributes (``info``, ``device``...) the
    test may rebind; it shares the loaded model, which stays read-only."""
    copy = Encoder.__new__(Encoder)
    copy.__dict__.update(vars(encoder))
    return copy


@pytest.fixture(scope="session")
def sample_products() -> list[Product]:
    products, _ = load_catalog(sample_catalog_path())
    return products


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    """An index dir with one promoted snapshot of the sample catalog (do not modify)."""
    index_dir = tmp_path_factory.mktemp("sample-index")
    products, report = load_catalog(sample_catalog_path())
    build_snapshot(products, report, index_dir, encoder, BuildOptions(probe_count=50))
    _guard("sample_index", lambda: dir_state(index_dir))
    return index_dir


@pytest.fixture
def sample_index_copy(sample_index: Path, tmp_path: Path) -> Path:
    """A copy of ``sample_index`` of the test's own, for what writes into an index
    directory (rollback, promotion, updates, pruning: each takes a lock file there)."""
    copy = tmp_path / "sample-index"
    shutil.copytree(sample_index, copy)
    return copy


@pytest.fixture(scope="session")
def sample_service(sample_index: Path, encoder: Encoder) -> SearchService:
    """A service over ``sample_index`` with default settings, but for the result cache
    (search only; do not modify). Without it every search runs its stages, whatever the
    tests before asked; tests/test_caches.py tests the cache on services of its own."""
    svc = SearchService(
        Settings(index_dir=sample_index, reload_interval_s=0, result_cache_size=0),
        encoder=encoder,
    )
    svc.load()
    _guard("sample_service", lambda: service_state(svc))
    return svc


@pytest.fixture
def own_sample_service(sample_index: Path, encoder: Encoder) -> SearchService:
    """A service over ``sample_index`` of the test's own (about a second to load): its
    snapshot objects may be patched or swapped. The index directory is still shared:
    never write to it (updates, promotion, pruning need a copy of the directory)."""
    svc = SearchService(
        Settings(index_dir=sample_index, reload_interval_s=0, result_cache_size=0),
        encoder=encoder,
    )
    svc.load()
    return svc


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CrossEncoder directory: MiniLM weights with a fresh (seeded) one-logit head
    (read-only: copy it to train or export into it)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(
        str(default_model_path()), num_labels=1, device="cpu", local_files_only=True
    )
    path = tmp_path_factory.mktemp("cross-encoder")
    model.save(str(path))
    _guard("cross_encoder_dir", lambda: dir_state(path))
    return path


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``SHOPSEARCH_CACHE`` for this module, with the network closed."""
    cache = tmp_path_factory.mktemp("shopsearch-cache")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access during an ONNX test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHOPSEARCH_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        yield cache
