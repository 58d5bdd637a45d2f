"""Recommendation protocols R1, R1-new and R2 of ``shared/datasets/README.md`` and their
metrics (ranx), shared by the trainer (which tunes on a validation month carved from
history) and by ``shopsearch eval recommend`` (which reports the test month).

- **R1** (for you): each customer who bought in the test period and has history; the
  query is their history (newest first); relevant = the distinct items they bought in
  the test period.
- **R1-new**: the same with the items the customer bought before removed from the
  ranking (passed as ``exclude``) and from the relevant set; customers left with no
  relevant item are left out (their recall is undefined).
- **R2** (bought together): each test invoice with 2..50 distinct items; up to 3 of its
  items (a seeded sample) are queries; relevant = the invoice's other items.

Inputs are purchase frames of the interactions-table shape
(:data:`indexer.events.types.INTERACTION_COLUMNS`: ``user, item, ts, basket``; retail
lines convert with :func:`indexer.training.recommender.retail_interactions`).
Metrics are ranx's (``recall@20, ndcg@20, hit_rate@10, recall@10``), reported under
the names of :data:`METRICS` (``hit@10`` = ranx ``hit_rate@10``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopsearch.retrieval.recommend.base import HistoryItem, Scored

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "R2_MAX_ITEMS",
    "R2_PER_INVOICE",
    "ForYouQuery",
    "SimilarQuery",
    "customer_histories",
    "evaluate_run",
    "r1_queries",
    "r2_queries",
]

#: Report name -> ranx metric name.
METRICS: Mapping[str, str] = {
    "recall@20": "recall@20",
    "ndcg@20": "ndcg@20",
    "hit@10": "hit_rate@10",
    "recall@10": "recall@10",
}
PROTOCOLS: tuple[str, ...] = ("R1", "R1-new", "R2")
#: R2: invoices with 2..R2_MAX_ITEMS distinct items; up to R2_PER_INVOICE query items each.
R2_MAX_ITEMS = 50
R2_PER_INVOICE = 3
#: Ranking depth every strategy is asked for (the deepest cutoff of :data:`METRICS`).
DEPTH = 20


@dataclass(frozen=True)
class ForYouQuery:
    """R1/R1-new: a customer's history (newest first), what to exclude, what is relevant."""

    qid: str
    history: tuple[HistoryItem, ...]
    relevant: frozenset[str]
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SimilarQuery:
    """R2: an item of an invoice and the invoice's other items."""

    qid: str
    item: str
    relevant: frozenset[str]


def _purchases(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["kind"] == "purchase"] if "kind" in frame.columns else frame


def customer_histories(lines: pd.DataFrame) -> dict[str, tuple[HistoryItem, ...]]:
    """Each shopper's purchases as histories, newest first (guests left out)."""
    known = lines[lines["user"] != ""]
    known = known.sort_values("ts", kind="stable")
    ts = known["ts"].dt.to_pydatetime()
    items = known["item"].tolist()
    out: dict[str, list[HistoryItem]] = {}
    for customer, item, t in zip(known["user"].tolist(), items, ts, strict=True):
        out.setdefault(customer, []).append(HistoryItem(item, "purchase", t))
    return {c: tuple(reversed(h)) for c, h in out.items()}


def r1_queries(
    histories: Mapping[str, tuple[HistoryItem, ...]], test: pd.DataFrame, *, new: bool
) -> list[ForYouQuery]:
    """R1 (``new=False``) or R1-new queries, by customer id order."""
    test = _purchases(test)
    bought = test[test["user"] != ""].groupby("user")["item"].agg(frozenset)
    out = []
    for customer in sorted(bought.index):
        history = histories.get(customer)
        if not history:
            continue
        relevant: frozenset[str] = bought[customer]
        exclude: frozenset[str] = frozenset()
        if new:
            exclude = frozenset(h.item for h in history)
            relevant = relevant - exclude
            if not relevant:
                continue
        out.append(ForYouQuery(customer, history, relevant, exclude))
    return out


def r2_queries(test: pd.DataFrame, *, seed: int = 0) -> list[SimilarQuery]:
    """R2 queries: invoices in order of first appearance, items sampled with ``seed``."""
    rng = np.random.default_rng(seed)
    test = _purchases(test)
    out = []
    for invoice, codes in test.groupby("basket", sort=False)["item"]:
        items = sorted(set(codes))
        if not 2 <= len(items) <= R2_MAX_ITEMS:
            continue
        n = min(R2_PER_INVOICE, len(items))
        for item in rng.choice(items, size=n, replace=False).tolist():
            out.append(SimilarQuery(f"{invoice}:{item}", item, frozenset(items) - {item}))
    return out


def evaluate_run(
    relevant: Mapping[str, frozenset[str]], run: Mapping[str, Sequence[Scored]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Means and per-query values of :data:`METRICS` with ranx.

    The run is re-scored by rank (ranx breaks score ties arbitrarily); a query with an
    empty list scores 0. Every query of ``relevant`` counts.
    """
    import ranx  # deferred: importing ranx loads numba

    qrels = {q: {i: 1 for i in rel} for q, rel in relevant.items() if rel}
    run_dict: dict[str, dict[str, float]] = {}
    for q in qrels:
        ranked = run.get(q, [])
        run_dict[q] = {s.item: float(len(ranked) - r) for r, s in enumerate(ranked)}
        if not run_dict[q]:
            run_dict[q] = {"\x00none": 0.0}  # ranx needs one entry; never relevant
    names = list(METRICS.values())
    ranx_run = ranx.Run(run_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranx.evaluate(ranx.Qrels(qrels), ranx_run, names, make_comparable=True)
    means = {k: float(ranx_run.mean_scores[v]) for k, v in METRICS.items()}
    per_query = {
        k: {q: float(x) for q, x in ranx_run.scores[v].items()} for k, v in METRICS.items()
    }
    return means, per_query


def run_for_you(
    queries: Sequence[ForYouQuery],
    recommend: Callable[[ForYouQuery], list[Scored]],
) -> dict[str, list[Scored]]:
    """``{qid: ranking}`` of ``recommend`` over ``queries``."""
    return {q.qid: recommend(q) for q in queries}
