"""Training examples for the two towers and the reranker, from judged queries and a catalog.

Judged pairs alone make a bad training set: every judged product was a result of the
shop's own engine, so off-topic products are almost absent and a model trained on them
learns to ignore topicality (../shared/datasets/README.md, "lessons"). So besides the
judged pairs this module adds, per query:

- **hard negatives**: products a base index ranks high for the query (lexical and dense
  top-``depth``, interleaved) that are not judged relevant, plus judged products graded
  below ``negative_threshold``. Products whose text equals that of a product judged at or
  above ``negative_threshold`` are never negatives (3.9% of Home Depot titles are shared);
- **random negatives**: uniform draws from the catalog, never a judged product.

The mined candidates come from :mod:`indexer.training.candidate_mining` (the mining
sources, the catalog's vectors and :func:`~indexer.training.candidate_mining.mine_candidates`);
this module turns them into examples (:func:`build_training_data`) and a dev subset
(:func:`build_dev_data`). Every draw is seeded per query, so the same inputs give
the same examples and the same :attr:`TrainingData.checksum`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopsearch.indexer.judgments import EvalDataset, JudgedQuery
from shopsearch.indexer.training.candidate_mining import (
    CandidateSource,
    TrainingDataError,
    mine_candidates,
)
from shopsearch.indexer.training.dev_metrics import RetrievalDevSet
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.types import Product

__all__ = [
    "DEFAULT_NEGATIVE_THRESHOLD",
    "DEFAULT_POSITIVE_THRESHOLD",
    "DevData",
    "MiningOptions",
    "QueryExamples",
    "TrainingData",
    # Defined with the mining sources (which raise it too); the error of this module's
    # options and builders as well.
    "TrainingDataError",
    "build_dev_data",
    "build_training_data",
]

log = logging.getLogger(__name__)

#: A judged product is a positive at or above this grade (Home Depot's 1..3 scale).
DEFAULT_POSITIVE_THRESHOLD = 2.5
#: A judged product below this grade counts as a negative.
DEFAULT_NEGATIVE_THRESHOLD = 2.0


@dataclass(frozen=True, slots=True)
class MiningOptions:
    """How negatives are chosen (see the module docstring).

    ``depth``: top-k taken from each mining source; ``hard_negatives``: hard negatives kept
    per query (drawn uniformly from the pool, judged low-grade ones first);
    ``random_negatives``: random catalog products per query.
    """

    positive_threshold: float = DEFAULT_POSITIVE_THRESHOLD
    negative_threshold: float = DEFAULT_NEGATIVE_THRESHOLD
    depth: int = 30
    hard_negatives: int = 8
    random_negatives: int = 2
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.negative_threshold > self.positive_threshold:
            raise TrainingDataError(
                f"negative_threshold {self.negative_threshold} is above positive_threshold "
                f"{self.positive_threshold}; a product cannot be both"
            )
        for name in ("depth", "hard_negatives", "random_negatives"):
            if getattr(self, name) < 0:
                raise TrainingDataError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class QueryExamples:
    """One training query: its judgments, positives and chosen negatives (product ids)."""

    qid: str
    text: str
    judgments: Mapping[str, float]
    positives: tuple[str, ...]
    hard_negatives: tuple[str, ...]
    random_negatives: tuple[str, ...]


@dataclass(frozen=True)
class TrainingData:
    """Training queries with positives and negatives, and the text of every product they name.

    ``grade_range`` is the (lowest, highest) grade of the scale, used to map grades to
    reranker labels in [0, 1]. ``checksum`` identifies the examples (it goes on the
    model card).
    """

    name: str
    queries: tuple[QueryExamples, ...]
    item_texts: Mapping[str, str]
    options: MiningOptions
    grade_range: tuple[float, float]
    checksum: str
    catalog_size: int

    def label(self, grade: float) -> float:
        """A grade as a reranker label: ``(grade - lo) / (hi - lo)`` clipped to [0, 1]."""
        lo, hi = self.grade_range
        return float(min(max((grade - lo) / (hi - lo), 0.0), 1.0))

    def tower_triplets(self) -> list[tuple[str, str, str]]:
        """``(query, positive text, negative text)``: one per positive, negatives cycled.

        The negative is the query's next hard negative (random negatives when it has
        none); queries without any negative are left out.
        """
        out = []
        for q in self.queries:
            negatives = q.hard_negatives or q.random_negatives
            if not negatives:
                continue
            for j, pid in enumerate(q.positives):
                neg = negatives[j % len(negatives)]
                out.append((q.text, self.item_texts[pid], self.item_texts[neg]))
        return out

    def reranker_pairs(
        self, *, hard_per_query: int | None = None, random_per_query: int | None = None
    ) -> list[tuple[str, str, float]]:
        """``(query, item text, label)``: every judged pair with its graded label, plus
        negatives (label 0): ``hard_per_query`` hard and ``random_per_query`` random ones
        per query (default: all that were chosen)."""
        out = []
        for q in self.queries:
            for pid, grade in q.judgments.items():
                if pid in self.item_texts:
                    out.append((q.text, self.item_texts[pid], self.label(grade)))
            hard = (
                q.hard_negatives[:hard_per_query]
                if hard_per_query is not None
                else q.hard_negatives
            )
            rand = (
                q.random_negatives[:random_per_query]
                if random_per_query is not None
                else q.random_negatives
            )
            for pid in (*hard, *rand):
                if pid not in q.judgments:
                    out.append((q.text, self.item_texts[pid], 0.0))
        return out

    def stats(self) -> dict[str, Any]:
        """Counts for logs and the model card."""
        return {
            "dataset": self.name,
            "queries": len(self.queries),
            "queries_with_positives": sum(1 for q in self.queries if q.positives),
            "judged_pairs": sum(len(q.judgments) for q in self.queries),
            "positives": sum(len(q.positives) for q in self.queries),
            "hard_negatives": sum(len(q.hard_negatives) for q in self.queries),
            "judged_low_negatives": sum(
                1 for q in self.queries for pid in q.hard_negatives if pid in q.judgments
            ),
            "random_negatives": sum(len(q.random_negatives) for q in self.queries),
            "catalog_products": self.catalog_size,
        }


@dataclass(frozen=True)
class DevData:
    """A dev subset for per-epoch measurement during training.

    ``retrieval`` ranks a sub-corpus (judged + mined candidates of the subset's queries +
    random distractors) with the towers; ``rerank_queries``/``rerank_texts``/``rerank_gains``
    are candidate lists (judged products with their gain, mined ones at gain 0 unless
    judged) for the reranker; ``rerank_judged`` marks the judged ones (protocol B).
    """

    retrieval: RetrievalDevSet
    rerank_queries: list[str]
    rerank_texts: list[list[str]]
    rerank_gains: list[list[float]]
    rerank_judged: list[list[bool]] = field(default_factory=list)


def _texts_by_id(products: Sequence[Product]) -> dict[str, str]:
    return {p.id: item_text(p) for p in products}


def _query_rng(seed: int, qid: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(qid.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _negatives_for(
    query: JudgedQuery,
    candidates: Sequence[str],
    texts: Mapping[str, str],
    catalog_ids: Sequence[str],
    options: MiningOptions,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    rng = _query_rng(options.seed, query.qid)
    not_negative = {pid for pid, g in query.judgments.items() if g >= options.negative_threshold}
    protected_texts = {texts[pid].casefold() for pid in not_negative if pid in texts}
    judged_low = sorted(
        pid for pid, g in query.judgments.items() if g < options.negative_threshold and pid in texts
    )
    mined = [
        pid
        for pid in candidates
        if pid not in query.judgments
        and pid in texts
        and texts[pid].casefold() not in protected_texts
    ]
    hard = judged_low[: options.hard_negatives]
    room = options.hard_negatives - len(hard)
    if room > 0 and mined:
        picks = rng.choice(len(mined), size=min(room, len(mined)), replace=False)
        hard += [mined[i] for i in sorted(picks.tolist())]  # keep rank order: hardest first
    random: list[str] = []
    if options.random_negatives and catalog_ids:
        taken = set(query.judgments) | set(hard)
        tries = 0
        while len(random) < options.random_negatives and tries < 20 * options.random_negatives:
            pid = catalog_ids[int(rng.integers(len(catalog_ids)))]
            tries += 1
            if pid not in taken:
                taken.add(pid)
                random.append(pid)
    return tuple(hard), tuple(random)


def _checksum(
    name: str, queries: Sequence[QueryExamples], texts: Mapping[str, str], options: MiningOptions
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"name": name, "options": repr(options)}).encode())
    used: set[str] = set()
    for q in queries:
        record = [
            q.qid,
            q.text,
            sorted(q.judgments.items()),
            q.positives,
            q.hard_negatives,
            q.random_negatives,
        ]
        digest.update(json.dumps(record).encode("utf-8"))
        used.update(q.judgments)
        used.update(q.hard_negatives)
        used.update(q.random_negatives)
    for pid in sorted(used):
        digest.update(f"{pid}\x00{texts.get(pid, '')}\x01".encode())
    return digest.hexdigest()


def build_training_data(
    dataset: EvalDataset,
    products: Sequence[Product],
    candidates: Mapping[str, Sequence[str]],
    options: MiningOptions | None = None,
) -> TrainingData:
    """Positives, hard negatives (from ``candidates``, see :func:`mine_candidates`) and
    random negatives for every judged query of ``dataset``.

    Judged products missing from ``products`` are dropped (and counted in the log).

    Raises:
        TrainingDataError: the catalog is empty, or no query has a positive.
    """
    options = options or MiningOptions()
    if not products:
        raise TrainingDataError("the catalog is empty; pass the catalog the judgments refer to")
    texts = _texts_by_id(products)
    catalog_ids = [p.id for p in products]
    missing = 0
    queries: list[QueryExamples] = []
    for query in dataset.queries:
        judgments = {pid: g for pid, g in query.judgments.items() if pid in texts}
        missing += len(query.judgments) - len(judgments)
        if not judgments:
            continue
        judged = JudgedQuery(query.qid, query.text, judgments)
        positives = tuple(
            sorted(pid for pid, g in judgments.items() if g >= options.positive_threshold)
        )
        hard, random = _negatives_for(
            judged, candidates.get(query.qid, ()), texts, catalog_ids, options
        )
        queries.append(QueryExamples(query.qid, query.text, judgments, positives, hard, random))
    if missing:
        log.warning(
            "%s: %d judged products are not in the catalog; left out", dataset.name, missing
        )
    if not any(q.positives for q in queries):
        raise TrainingDataError(
            f"{dataset.name}: no judged product reaches the positive threshold "
            f"{options.positive_threshold}; lower --positive-threshold or check the grades"
        )
    grades = [g for q in queries for g in q.judgments.values()]
    grade_range = (dataset.gain_offset, max(grades))
    if grade_range[1] <= grade_range[0]:
        raise TrainingDataError(
            f"{dataset.name}: every grade is <= the scale's lowest grade {grade_range[0]}; "
            "check gain_offset"
        )
    used = {pid for q in queries for pid in (*q.judgments, *q.hard_negatives, *q.random_negatives)}
    item_texts = {pid: texts[pid] for pid in sorted(used)}
    data = TrainingData(
        name=dataset.name,
        queries=tuple(queries),
        item_texts=item_texts,
        options=options,
        grade_range=grade_range,
        checksum=_checksum(dataset.name, queries, item_texts, options),
        catalog_size=len(products),
    )
    log.info("training data %s: %s", dataset.name, data.stats())
    return data


def build_dev_data(
    dataset: EvalDataset,
    products: Sequence[Product],
    sources: Sequence[CandidateSource],
    *,
    n_queries: int = 150,
    depth: int = 10,
    n_distractors: int = 1000,
    threshold: float = DEFAULT_POSITIVE_THRESHOLD,
    seed: int = 1234,
) -> DevData:
    """A seeded subset of ``dataset``'s queries that have a relevant product, with a
    sub-corpus for the towers and candidate lists for the reranker (see :class:`DevData`).

    Raises:
        TrainingDataError: no query of ``dataset`` has a relevant product in ``products``.
    """
    texts = _texts_by_id(products)
    eligible = [
        q
        for q in dataset.queries
        if any(g >= threshold and pid in texts for pid, g in q.judgments.items())
    ]
    if not eligible:
        raise TrainingDataError(
            f"{dataset.name}: no query has a product graded >= {threshold} in the catalog; "
            "pass the dev split of the same dataset"
        )
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(eligible), size=min(n_queries, len(eligible)), replace=False)
    subset = [eligible[i] for i in sorted(picks.tolist())]
    mined = mine_candidates(subset, sources, depth)
    corpus: dict[str, int] = {}

    def row(pid: str) -> int:
        return corpus.setdefault(pid, len(corpus))

    rerank_texts: list[list[str]] = []
    rerank_gains: list[list[float]] = []
    rerank_judged: list[list[bool]] = []
    gains: list[dict[int, float]] = []
    relevant: list[frozenset[int]] = []
    for q in subset:
        judged = {pid: g for pid, g in q.judgments.items() if pid in texts}
        listed = list(judged) + [pid for pid in mined[q.qid] if pid not in judged and pid in texts]
        rerank_texts.append([texts[pid] for pid in listed])
        rerank_gains.append([dataset.gain(judged[pid]) if pid in judged else 0.0 for pid in listed])
        rerank_judged.append([pid in judged for pid in listed])
        rows = {pid: row(pid) for pid in listed}
        gains.append(
            {rows[pid]: dataset.gain(g) for pid, g in judged.items() if dataset.gain(g) > 0}
        )
        relevant.append(frozenset(rows[pid] for pid, g in judged.items() if g >= threshold))
    ids = [p.id for p in products]
    for i in rng.choice(len(ids), size=min(n_distractors, len(ids)), replace=False).tolist():
        row(ids[i])
    corpus_texts = [texts[pid] for pid in corpus]
    retrieval = RetrievalDevSet(
        queries=[q.text for q in subset], corpus=corpus_texts, gains=gains, relevant=relevant
    )
    log.info(
        "dev subset: %d queries, sub-corpus of %d products, %d rerank candidates",
        len(subset),
        len(corpus_texts),
        sum(len(t) for t in rerank_texts),
    )
    return DevData(
        retrieval=retrieval,
        rerank_queries=[q.text for q in subset],
        rerank_texts=rerank_texts,
        rerank_gains=rerank_gains,
        rerank_judged=rerank_judged,
    )
