"""Training data of shopper-aware re-scoring, carved from the purchase history.

The blend of :mod:`rerank.personal` is learned on "R3-style" search queries of the last
month of the history (the validation month), with every statistic the features read
(co-purchase counts, popularity) taken from the months before it.
For the development split (history before 2011-10-01) that is: statistics before
2011-09-01, queries of September 2011; October is never read. A shopper's history at a query is every line of theirs before
it (September's earlier invoices included), as the event store would hold it; the
statistics stay frozen at ``valid_start``, as a nightly model does. The maintainer's later
months work the same way, as nothing here knows dates except ``valid_start``'s default.

The R3 query builder (protocol R3 of ``shared/datasets/README.md``) lives here, so the
training queries and the evaluation (:mod:`eval.recommend.r3`) are built by one code:

- for each invoice of a customer with history, up to 3 of its distinct items, drawn with
  ``numpy.random.default_rng(seed)`` (invoices in ascending id order);
- the query is the last word of the item's catalog description when it is alphabetic with
  4+ letters and at least 10 catalog descriptions contain it; candidates = the catalog
  items whose description has that word; relevant = the invoice's items that have it.

Words are the runs of ``[A-Z0-9]`` of the upper-cased description ("T-LIGHT" -> ``T``,
``LIGHT``), "contains" means "has that word".

Base relevance of a query's candidates, the plain (not personal) search relevance the
re-scorer re-orders: ``log1p`` of their popularity (invoices holding them) in the last
:data:`RECENT_DAYS` days of the statistics period, plus ``query_weight * c . q`` (the
item tower's similarity of candidate and query word), with ``query_weight`` fitted on the
validation queries without any history feature (:func:`fit_query_weight`). So the
personal part of a score stays "what the shopper's history adds" to a relevance that
already reads the query, as at serving time, where the base is the search's own score.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.rerank.personal_fit import fit_weights
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.interactions import ItemVocab, basket_item_matrix, cooccurrence

__all__ = [
    "ITEMS_PER_INVOICE",
    "MIN_WORD_ITEMS",
    "MIN_WORD_LETTERS",
    "RECENT_DAYS",
    "PersonalStats",
    "PreparedPersonal",
    "ShopperTimelines",
    "TrainingExample",
    "WordQuery",
    "description_words",
    "fit_query_weight",
    "month_start",
    "popularity",
    "prepare_personal_training",
    "search_relevance",
    "word_index",
    "word_queries",
]

log = logging.getLogger(__name__)

ITEMS_PER_INVOICE = 3
MIN_WORD_LETTERS = 4
MIN_WORD_ITEMS = 10
#: Window of the "recent popularity" base relevance, ending at the last statistics line.
RECENT_DAYS = 30
#: Newest history events a shopper's query sees (what serving reads from the store).
HISTORY_LIMIT = 200

_WORD = re.compile(r"[A-Z0-9]+")
FloatArray = npt.NDArray[np.float64]
Vectors = npt.NDArray[np.float32]
#: Item texts -> unit-length item tower vectors (``Encoder.encode_document``).
EncodeTexts = Callable[[Sequence[str]], Vectors]


def description_words(description: str) -> list[str]:
    """The words of a description, in order.

    >>> description_words("WHITE HANGING HEART T-LIGHT HOLDER")
    ['WHITE', 'HANGING', 'HEART', 'T', 'LIGHT', 'HOLDER']
    """
    return _WORD.findall(description.upper())


def word_index(descriptions: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each word -> the items whose description has it (ids sorted)."""
    items: dict[str, set[str]] = {}
    for item, text in descriptions.items():
        for word in set(description_words(text)):
            items.setdefault(word, set()).add(item)
    return {word: tuple(sorted(ids)) for word, ids in items.items()}


@dataclass(frozen=True)
class WordQuery:
    """One R3 query: ``qid`` = ``<invoice>:<item>``, the shopper, when, the word, its
    candidates (sorted ids) and the relevant items."""

    qid: str
    customer: str
    ts: datetime
    word: str
    candidates: tuple[str, ...]
    relevant: frozenset[str]


def _query_word(
    item: str, descriptions: Mapping[str, str], words: Mapping[str, Sequence[str]]
) -> str | None:
    parts = description_words(descriptions.get(item, ""))
    if not parts:
        return None
    last = parts[-1]
    if (
        last.isalpha()
        and len(last) >= MIN_WORD_LETTERS
        and len(words.get(last, ())) >= MIN_WORD_ITEMS
    ):
        return last
    return None


def word_queries(
    history: pd.DataFrame,
    test: pd.DataFrame,
    descriptions: Mapping[str, str],
    *,
    seed: int = 0,
) -> list[WordQuery]:
    """The R3 queries of the ``test`` lines for customers with ``history`` lines."""
    words = word_index(descriptions)
    known = set(history["customer"]) - {""}
    lines = test[test["customer"].isin(known)]
    rng = np.random.default_rng(seed)
    out: list[WordQuery] = []
    for invoice, group in lines.groupby("invoice", sort=True):
        items = list(dict.fromkeys(group["stock_code"]))
        drawn = items
        if len(items) > ITEMS_PER_INVOICE:
            picks = sorted(rng.choice(len(items), ITEMS_PER_INVOICE, replace=False).tolist())
            drawn = [items[k] for k in picks]
        for item in drawn:
            word = _query_word(item, descriptions, words)
            if word is None:
                continue
            candidates = words[word]
            matching = set(candidates)
            out.append(
                WordQuery(
                    qid=f"{invoice}:{item}",
                    customer=str(group["customer"].iloc[0]),
                    ts=group["ts"].iloc[0].to_pydatetime(),
                    word=word,
                    candidates=candidates,
                    relevant=frozenset(i for i in items if i in matching),
                )
            )
    return out


class ShopperTimelines:
    """Every customer's purchase lines in time order, to read the history a shopper had
    at a moment: the lines strictly before it, newest first (what the event store holds
    when the search is typed). Lines of one invoice share a time; the later file line
    counts as newer."""

    def __init__(self, *frames: pd.DataFrame) -> None:
        parts = [f[f["customer"] != ""][["customer", "stock_code", "ts"]] for f in frames if len(f)]
        lines = (
            pd.concat(parts) if parts else pd.DataFrame(columns=["customer", "stock_code", "ts"])
        )
        lines = lines.sort_values("ts", kind="stable")
        self._lines: dict[str, tuple[npt.NDArray[np.int64], list[str], list[datetime]]] = {}
        for customer, group in lines.groupby("customer", sort=False):
            stamps = group["ts"]
            self._lines[str(customer)] = (
                stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64),
                [str(i) for i in group["stock_code"]],
                list(stamps.dt.to_pydatetime()),
            )

    def __contains__(self, customer: object) -> bool:
        return customer in self._lines

    def history_at(
        self, customer: str, at: datetime, limit: int = HISTORY_LIMIT
    ) -> list[HistoryItem]:
        """The customer's newest ``limit`` lines before ``at`` (aware), newest first."""
        if limit < 1:
            raise ValueError(f"history limit must be >= 1, not {limit}")
        found = self._lines.get(customer)
        if found is None:
            return []
        stamps, items, times = found
        end = int(np.searchsorted(stamps, pd.Timestamp(at).value, side="left"))
        start = max(end - limit, 0)
        return [HistoryItem(items[k], "purchase", times[k]) for k in range(end - 1, start - 1, -1)]


def popularity(history: pd.DataFrame, days: int | None = None) -> dict[str, int]:
    """Invoices holding each item, over all ``history`` or its last ``days`` days."""
    lines = history
    if days is not None and len(history):
        lines = history[history["ts"] >= history["ts"].max() - pd.Timedelta(days=days)]
    return {str(k): int(v) for k, v in lines.groupby("stock_code")["invoice"].nunique().items()}


def month_start(lines: pd.DataFrame) -> pd.Timestamp:
    """The first day of the month of the newest line (the default validation start)."""
    if not len(lines):
        raise ValueError("no lines: cannot carve a validation month from an empty history")
    newest = lines["ts"].max()
    return pd.Timestamp(year=newest.year, month=newest.month, day=1, tz=newest.tz)


@dataclass
class PersonalStats:
    """What the re-scorer reads, from one period's lines: the items (catalog order), their
    item tower vectors, basket co-counts and baskets per item."""

    items: tuple[str, ...]
    item_vectors: Vectors
    copurchase: sp.csr_matrix
    baskets: FloatArray

    @classmethod
    def build(cls, lines: pd.DataFrame, vocab: ItemVocab, item_vectors: Vectors) -> PersonalStats:
        _, matrix = basket_item_matrix(list(lines["invoice"]), list(lines["stock_code"]), vocab)
        baskets = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
        return cls(vocab.items, item_vectors, cooccurrence(matrix), baskets)


@dataclass(frozen=True)
class TrainingExample:
    """One validation query as the re-scorer sees it (the shape
    :class:`rerank.personal_fit.Example` expects)."""

    qid: str
    customer: str
    query_vec: Vectors
    candidate_ids: tuple[str, ...]
    candidate_vecs: Vectors
    base_scores: FloatArray
    relevant: npt.NDArray[np.bool_]
    history: tuple[HistoryItem, ...]
    now: datetime


def search_relevance(
    popularity_log: FloatArray, query_similarity: FloatArray, query_weight: float
) -> FloatArray:
    """The base relevance of word queries: ``log1p(popularity) + query_weight * c . q``."""
    return np.asarray(popularity_log, dtype=np.float64) + query_weight * np.asarray(
        query_similarity, dtype=np.float64
    )


def fit_query_weight(
    popularity_logs: Sequence[FloatArray],
    query_similarities: Sequence[FloatArray],
    relevant: Sequence[npt.NDArray[np.bool_]],
) -> float:
    """The weight of ``c . q`` against ``log1p(popularity)`` that best orders the bought
    items first (the listwise loss of :func:`rerank.personal_fit.fit_weights` over those
    two columns alone); 0 without a query that has a relevant candidate."""
    keep = [k for k, r in enumerate(relevant) if r.any()]
    if not keep:
        return 0.0
    xs = [np.column_stack([popularity_logs[k], query_similarities[k]]) for k in keep]
    w = fit_weights(xs, [relevant[k] for k in keep], [0, 1])
    return float(w[1] / w[0])


@dataclass
class PreparedPersonal:
    """Everything training needs: statistics before ``valid_start`` (features of the
    examples), statistics of all lines (the model that ships), the examples, and the
    base relevance's ``query_weight`` (:func:`search_relevance`)."""

    train_stats: PersonalStats
    full_stats: PersonalStats
    examples: list[TrainingExample]
    stats_range: tuple[str, str]
    valid_range: tuple[str, str]
    n_queries: int
    query_weight: float = 0.0


def prepare_personal_training(
    lines: pd.DataFrame,
    descriptions: Mapping[str, str],
    encode_documents: EncodeTexts,
    encode_queries: EncodeTexts,
    *,
    valid_start: pd.Timestamp | None = None,
    seed: int = 0,
    max_queries: int | None = None,
    max_minutes: float | None = None,
    progress: ProgressFactory = no_progress,
) -> PreparedPersonal:
    """Carve validation queries from ``lines`` (retail lines, :func:`indexer.retail.load_lines`).

    ``valid_start`` (default :func:`month_start`): lines before it give the statistics,
    lines from it on the queries. ``max_queries`` caps the examples (seeded sample);
    ``max_minutes`` stops building examples when spent (the ones built are kept).

    Raises:
        ValueError: no line before or after ``valid_start``, or no query could be built.
    """
    start_time = time.monotonic()
    valid_start = month_start(lines) if valid_start is None else valid_start
    before = lines[lines["ts"] < valid_start]
    valid = lines[lines["ts"] >= valid_start]
    if not len(before) or not len(valid):
        raise ValueError(
            f"valid_start {valid_start} leaves {len(before)} lines before and {len(valid)} "
            "from it; pick a date inside the history"
        )
    catalog = {k: v for k, v in descriptions.items() if v}
    vocab = ItemVocab.of(sorted(catalog))
    texts = [catalog[i] for i in vocab.items]
    with progress("item vectors", len(texts)) as advance:
        item_vectors = encode_documents(texts)
        advance(len(texts))
    train_stats = PersonalStats.build(before, vocab, item_vectors)
    full_stats = PersonalStats.build(lines, vocab, item_vectors)

    queries = word_queries(before, valid, catalog, seed=seed)
    if max_queries is not None and len(queries) > max_queries:
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(queries), max_queries, replace=False).tolist())
        queries = [queries[k] for k in keep]
    if not queries:
        raise ValueError("no validation query: the validation month has no shopper with history")
    timelines = ShopperTimelines(before, valid)
    recent = popularity(before, RECENT_DAYS)
    words = sorted({q.word for q in queries})
    word_vecs = dict(zip(words, encode_queries([w.lower() for w in words]), strict=True))
    kept: list[WordQuery] = []
    pops: list[FloatArray] = []
    sims: list[FloatArray] = []
    relevant: list[npt.NDArray[np.bool_]] = []
    with progress("validation queries", len(queries)) as advance:
        for query in queries:
            if max_minutes is not None and time.monotonic() - start_time > max_minutes * 60:
                log.warning("personal training data: budget spent after %d queries", len(kept))
                break
            kept.append(query)
            pops.append(np.log1p([float(recent.get(c, 0)) for c in query.candidates]))
            vecs = item_vectors[vocab.indices(query.candidates)]
            sims.append((vecs @ word_vecs[query.word]).astype(np.float64))
            relevant.append(np.array([c in query.relevant for c in query.candidates]))
            advance(1)
    # The base is fitted first, without history; the examples carry it.
    query_weight = fit_query_weight(pops, sims, relevant)
    examples = [
        TrainingExample(
            qid=query.qid,
            customer=query.customer,
            query_vec=word_vecs[query.word],
            candidate_ids=query.candidates,
            candidate_vecs=item_vectors[vocab.indices(query.candidates)],
            base_scores=search_relevance(pop, sim, query_weight),
            relevant=rel,
            history=tuple(timelines.history_at(query.customer, query.ts)),
            now=query.ts,
        )
        for query, pop, sim, rel in zip(kept, pops, sims, relevant, strict=True)
    ]
    log.info("search relevance: log1p(popularity) + %.3f * c.q", query_weight)
    fmt = "%Y-%m-%d"
    return PreparedPersonal(
        train_stats=train_stats,
        full_stats=full_stats,
        examples=examples,
        stats_range=(before["ts"].min().strftime(fmt), before["ts"].max().strftime(fmt)),
        valid_range=(valid["ts"].min().strftime(fmt), valid["ts"].max().strftime(fmt)),
        n_queries=len(queries),
        query_weight=query_weight,
    )
