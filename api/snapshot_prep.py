"""Getting a loaded snapshot ready to serve, before :class:`api.service.SearchService`
swaps it in: its item tower checked against the service's query tower, its query
rewriter built, the server's search settings applied and the first query's one-off
costs paid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from shopsearch.api.retrieval_stages import elapsed_ms
from shopsearch.api.settings import Settings
from shopsearch.indexer.match_threshold import ensure_calibrated
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY
from shopsearch.retrieval.query_rewrite import QueryRewriter, product_words
from shopsearch.retrieval.types import Product

__all__ = ["REWRITER_KEY", "carry_rewriter", "check_models", "prepare_snapshot"]

log = logging.getLogger(__name__)

#: Where a loaded snapshot keeps its query rewriter (built from its products' words).
REWRITER_KEY = "query_rewriter"


def prepare_snapshot(
    snap: LoadedSnapshot, settings: Settings, encoder: Encoder, query_encoder: Encoder
) -> None:
    """Check models, apply search settings and warm up ``snap`` before it serves.

    ``encoder`` is the service's item tower, ``query_encoder`` its query tower (the same
    weights). Raises :class:`SnapshotError` on a model mismatch (see :func:`check_models`).
    """
    check_models(snap, encoder)
    if (settings.spelling or settings.units) and REWRITER_KEY not in snap.extra:
        snap.extra[REWRITER_KEY] = _build_rewriter(snap, encoder)
    # Requests pass the server's nprobe and refine factor with every search
    # (SearchParams); set as the index's own too, before it is shared, for the readers
    # that search it without a SearchParams (recommendations' text neighbours).
    snap.vectors.set_search_params(nprobe=settings.nprobe, refine_factor=settings.refine_factor)
    # Warm up on the new snapshot before it takes traffic: the first query through
    # torch and FAISS pays one-off allocation costs (~250 ms here).
    snap.vectors.search(query_encoder.encode_query(["warm up"]), 10)
    try:
        snap.lexical.search("warm up", 10)
        # Older snapshots, and a query tower of another precision than the build's.
        ensure_calibrated(snap, query_encoder.encode_query, query_encoder.backend)
    except LexicalIndexError as exc:
        # Serve anyway: every answer degrades to the dense leg until the cluster is back.
        log.warning("lexical leg of %s unavailable at load: %s", snap.version, exc)


def carry_rewriter(old: LoadedSnapshot, new: LoadedSnapshot, upserts: Sequence[Product]) -> None:
    """Give ``new`` (an update of ``old`` with ``upserts``) ``old``'s query rewriter, if
    it has one, knowing the upserted products' words too, and ``old``'s load-time
    dense-match threshold, if it has one (it belongs to the models and the catalog, which
    an update barely changes: measuring it again would cost a second per update)."""
    if MATCH_SET_KEY in old.extra:
        new.extra[MATCH_SET_KEY] = old.extra[MATCH_SET_KEY]
    rewriter = old.extra.get(REWRITER_KEY)
    if rewriter is not None:
        # New products' words must not be "corrected" away; rebuilding the
        # rewriter per update would cost about a second per 50k products.
        rewriter.add_known(product_words(p) for p in upserts)
        new.extra[REWRITER_KEY] = rewriter


def _build_rewriter(snap: LoadedSnapshot, encoder: Encoder) -> QueryRewriter:
    """A query rewriter over the live products' titles, brands and categories."""
    t = time.perf_counter()
    products = snap.table.products
    rewriter = QueryRewriter.for_products(
        (products[row] for row in snap.table.row_of.values()),
        known_words=encoder.known_words(),
    )
    log.info(
        "query rewriting: %d catalog words from snapshot %s (%.0f ms)",
        rewriter.spelling.vocabulary_size,
        snap.version,
        elapsed_ms(t),
    )
    return rewriter


def check_models(snap: LoadedSnapshot, encoder: Encoder) -> None:
    """Raise :class:`SnapshotError` when ``snap`` was built with an item tower other
    than ``encoder`` (the service's), naming the model to serve it with."""
    built = snap.item_model
    ours = encoder.info
    if built["sha256"] != ours.sha256:
        raise SnapshotError(
            f"snapshot {snap.version} was built with item tower {built['id']} "
            f"(sha256 {built['sha256'][:12]}), but this server's query tower is {ours.id} "
            f"(sha256 {ours.sha256[:12]}); serve with --model {built['path']}"
            f" and SHOPSEARCH_ENCODER_BACKEND={built.get('backend', 'torch')},"
            " or rebuild the snapshot"
        )
