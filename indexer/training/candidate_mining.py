"""Candidate mining for the training examples of :mod:`indexer.training.mined_data`: the
products a base index ranks high for each judged query, from which the hard negatives
are drawn.

Mining sources are plain callables (:data:`CandidateSource`), built from a snapshot
(:func:`snapshot_sources`) or from the catalog in memory (:func:`lexical_source`,
:func:`dense_source` over :func:`catalog_embeddings`, which caches the vectors per model
checksum and item text). :func:`mine_candidates` interleaves their top-``depth`` per query.

The examples themselves (positives, hard and random negatives, the checksum) and the
dev subset are built in :mod:`indexer.training.mined_data`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.embedding_cache import EmbeddingCache
from shopsearch.indexer.judgments import JudgedQuery
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.types import Product, ShopsearchError

__all__ = [
    "CandidateSource",
    "TrainingDataError",
    "catalog_embeddings",
    "dense_source",
    "lexical_source",
    "mine_candidates",
    "snapshot_sources",
]

log = logging.getLogger(__name__)

#: ``source(query_texts, k)`` -> the top-``k`` product ids for each query, best first.
CandidateSource = Callable[[Sequence[str], int], list[list[str]]]


class TrainingDataError(ShopsearchError):
    """The judged queries and the catalog cannot make a training set."""


def lexical_source(index: LexicalIndex) -> CandidateSource:
    """A :data:`CandidateSource` over a BM25 index."""

    def search(queries: Sequence[str], k: int) -> list[list[str]]:
        return [[hit.id for hit in index.search(q, k)] for q in queries]

    return search


def dense_source(
    encoder: Encoder,
    item_vectors: npt.NDArray[np.float32],
    ids: Sequence[str],
    *,
    chunk: int = 256,
) -> CandidateSource:
    """A :data:`CandidateSource` that searches ``item_vectors`` exactly (inner product).

    ``item_vectors`` row ``i`` is product ``ids[i]``; queries go through the query tower.
    """
    if len(item_vectors) != len(ids):
        raise TrainingDataError(
            f"{len(item_vectors)} vectors for {len(ids)} product ids; pass one vector per id"
        )
    id_array = np.asarray(ids, dtype=object)

    def search(queries: Sequence[str], k: int) -> list[list[str]]:
        k = min(k, len(id_array))
        out: list[list[str]] = []
        for start in range(0, len(queries), chunk):
            qv = encoder.encode_query(list(queries[start : start + chunk]))
            scores = qv @ item_vectors.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, cols in enumerate(top):
                order = cols[np.argsort(-scores[row, cols], kind="stable")]
                out.append([str(x) for x in id_array[order]])
        return out

    return search


def snapshot_sources(
    snapshot: LoadedSnapshot, encoder: Encoder
) -> tuple[CandidateSource, CandidateSource]:
    """Lexical and dense sources over a loaded snapshot (``encoder`` must be its query tower).

    Raises:
        TrainingDataError: ``encoder`` is not the tower that encoded the snapshot.
    """
    built = snapshot.item_model
    if built["sha256"] != encoder.info.sha256:
        raise TrainingDataError(
            f"snapshot {snapshot.version} was encoded by {built['id']} (sha256 "
            f"{built['sha256'][:12]}) but the mining encoder is {encoder.info.id}; mine with "
            f"the model at {built['path']} or without --index-dir"
        )
    products = snapshot.table.products

    def dense(queries: Sequence[str], k: int) -> list[list[str]]:
        out: list[list[str]] = []
        for start in range(0, len(queries), 256):
            qv = encoder.encode_query(list(queries[start : start + 256]))
            _, rows = snapshot.vectors.search(qv, k)
            out.extend([[products[r].id for r in row if r >= 0] for row in rows])
        return out

    return lexical_source(snapshot.lexical), dense


def catalog_embeddings(
    encoder: Encoder,
    products: Sequence[Product],
    cache_dir: Path | None = None,
    *,
    batch_size: int = 64,
    progress: ProgressFactory = no_progress,
) -> npt.NDArray[np.float32]:
    """Item-tower vectors of ``products`` (row i = product i).

    With ``cache_dir`` the vectors go through an :class:`indexer.embedding_cache.EmbeddingCache`
    there (one cache per model checksum, keyed by item text), so a rerun, or a build that
    shares the cache directory, encodes only texts it has not seen.
    """
    texts = [item_text(p) for p in products]
    with progress("encoding catalog", len(texts)) as advance:

        def encode(batch: Sequence[str]) -> npt.NDArray[np.float32]:
            return encoder.encode_document(batch, batch_size=batch_size, progress=advance)

        if cache_dir is None:
            return encode(texts)
        cache = EmbeddingCache(Path(cache_dir), encoder.info.sha256, encoder.dim)
        vectors, hits = cache.encode(texts, encode)
        advance(hits)
    log.info("catalog vectors: %d of %d from the cache in %s", hits, len(texts), cache.dir)
    return vectors


def mine_candidates(
    queries: Sequence[JudgedQuery],
    sources: Sequence[CandidateSource],
    depth: int,
    *,
    progress: ProgressFactory = no_progress,
    chunk: int = 512,
) -> dict[str, list[str]]:
    """Top-``depth`` of every source for each query, interleaved (rank 1 of each, then rank
    2, ...) without duplicates: ``{qid: product ids}``."""
    out: dict[str, list[str]] = {q.qid: [] for q in queries}
    if depth == 0 or not sources:
        return out
    with progress("mining candidates", len(queries)) as advance:
        for start in range(0, len(queries), chunk):
            batch = list(queries[start : start + chunk])
            texts = [q.text for q in batch]
            lists = [source(texts, depth) for source in sources]
            for i, q in enumerate(batch):
                seen: set[str] = set()
                merged: list[str] = []
                for rank in range(depth):
                    for ranking in lists:
                        if rank < len(ranking[i]) and ranking[i][rank] not in seen:
                            seen.add(ranking[i][rank])
                            merged.append(ranking[i][rank])
                out[q.qid] = merged
            advance(len(batch))
    return out
