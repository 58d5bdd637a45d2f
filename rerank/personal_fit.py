"""Learning the blend weights of :mod:`rerank.personal` from past searches' purchases.

The loss is listwise (ListNet with the relevant items as the target): for each query, the
softmax of the blended scores over its candidates should put its mass on the items bought,
``-mean_{relevant} log softmax(X w)`` plus a small L2 term, minimised with L-BFGS-B
(``w_base >= 0.01``, so the personal component never flips the base order's sign). Only
queries whose shopper has history and that have at least one relevant candidate teach
anything; the others are left out.

The examples are split by shopper (a stable hash, 80/20) into fit and held-out parts;
the model card reports MRR@10 on both (and of the base order), so an overfitted blend
shows; the weights that ship are then refitted on all examples. :func:`train_rescorer` then ships the weights with the statistics of the whole
history (:class:`indexer.training.personal.PreparedPersonal`, read by shape).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.optimize
import scipy.sparse as sp

from shopsearch.rerank.personal import (
    FEATURES,
    STRATEGY_FEATURES,
    ForYouScorer,
    PersonalError,
    PersonalParams,
    PersonalRescorer,
    Strategy,
    default_weights,
)
from shopsearch.retrieval.recommend.base import HistoryItem

__all__ = [
    "MIN_EXAMPLES",
    "Example",
    "FitReport",
    "fit_weights",
    "is_held_out",
    "mrr_at_10",
    "require_enough",
    "train_rescorer",
    "usable",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
L2 = 1e-3
HELD_OUT_SHARE = 0.2
#: Fewest usable training queries: below it the weights fit noise (a few dozen demo
#: queries gave a co-purchase weight of 7.5 and a negative attention weight).
MIN_EXAMPLES = 200


def usable(example: Example) -> bool:
    """Whether an example teaches anything: its shopper has history and it has a relevant
    candidate."""
    return bool(example.history) and bool(example.relevant.any())


def require_enough(count: int) -> None:
    """Raise :class:`PersonalError` when ``count`` usable examples are under :data:`MIN_EXAMPLES`."""
    if count < MIN_EXAMPLES:
        raise PersonalError(
            f"{count} training queries have a shopper history and a bought candidate; a "
            f"blend of {len(FEATURES)} weights needs at least {MIN_EXAMPLES} (more history, "
            "or keep the built-in weights)"
        )


class Example(Protocol):
    """One training query (:class:`indexer.training.personal.TrainingExample`)."""

    @property
    def qid(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def query_vec(self) -> npt.NDArray[np.float32]: ...
    @property
    def candidate_ids(self) -> tuple[str, ...]: ...
    @property
    def candidate_vecs(self) -> npt.NDArray[np.float32]: ...
    @property
    def base_scores(self) -> FloatArray: ...
    @property
    def relevant(self) -> npt.NDArray[np.bool_]: ...
    @property
    def history(self) -> tuple[HistoryItem, ...]: ...
    @property
    def now(self) -> datetime: ...


class Stats(Protocol):
    """The statistics a re-scorer is built from (:class:`indexer.training.personal.PersonalStats`)."""

    @property
    def items(self) -> tuple[str, ...]: ...
    @property
    def item_vectors(self) -> npt.NDArray[np.float32]: ...
    @property
    def copurchase(self) -> sp.csr_matrix: ...
    @property
    def baskets(self) -> FloatArray: ...


class Prepared(Protocol):
    """:class:`indexer.training.personal.PreparedPersonal`, read by shape."""

    @property
    def train_stats(self) -> Stats: ...
    @property
    def full_stats(self) -> Stats: ...
    @property
    def examples(self) -> list[Any]: ...
    @property
    def stats_range(self) -> tuple[str, str]: ...
    @property
    def valid_range(self) -> tuple[str, str]: ...
    @property
    def query_weight(self) -> float: ...


def mrr_at_10(scores: FloatArray, relevant: npt.NDArray[np.bool_], ids: Sequence[str]) -> float:
    """Reciprocal rank of the first relevant item in the top 10 (ties: id ascending)."""
    order = sorted(range(len(ids)), key=lambda k: (-scores[k], ids[k]))[:10]
    for rank, k in enumerate(order, start=1):
        if relevant[k]:
            return 1.0 / rank
    return 0.0


def _stack(
    xs: Sequence[FloatArray], ys: Sequence[npt.NDArray[np.bool_]]
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int64]]:
    x = np.vstack(xs)
    y = np.concatenate(ys).astype(np.float64)
    sizes = np.array([len(v) for v in ys])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    seg = np.repeat(np.arange(len(ys)), sizes)
    target = y / np.repeat(np.add.reduceat(y, starts), sizes)
    return x, target, seg.astype(np.float64), starts


def fit_weights(
    xs: Sequence[FloatArray], ys: Sequence[npt.NDArray[np.bool_]], columns: Sequence[int]
) -> FloatArray:
    """Weights over feature ``columns`` (the first is ``base``) minimising the listwise loss."""
    x_all, target, seg, starts = _stack(xs, ys)
    x = x_all[:, list(columns)]
    seg_idx = seg.astype(np.int64)
    n_queries = len(starts)

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        z = x @ w
        zmax = np.maximum.reduceat(z, starts)
        e = np.exp(z - zmax[seg_idx])
        denom = np.add.reduceat(e, starts)
        logp = z - zmax[seg_idx] - np.log(denom[seg_idx])
        value = -(target * logp).sum() / n_queries + L2 * float(w @ w)
        p = e / denom[seg_idx]
        grad = ((p - target)[:, None] * x).sum(axis=0) / n_queries + 2 * L2 * w
        return float(value), grad

    w0 = np.zeros(len(columns))
    w0[0] = 1.0
    bounds = [(0.01, None)] + [(None, None)] * (len(columns) - 1)
    result = scipy.optimize.minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(result.x, dtype=np.float64)


def is_held_out(customer: str) -> bool:
    """Whether the fit holds ``customer`` out (a fixed ~20% of shoppers, by a hash)."""
    digest = hashlib.sha256(customer.encode()).digest()
    return digest[0] < 256 * HELD_OUT_SHARE


class FitReport(dict[str, Any]):
    """Metrics of a fit (goes into the model card)."""


def train_rescorer(
    prepared: Prepared,
    *,
    params: PersonalParams | None = None,
    max_minutes: float | None = None,
    version: str | None = None,
    foryou_train: ForYouScorer | None = None,
    foryou_full: ForYouScorer | None = None,
) -> tuple[PersonalRescorer, FitReport]:
    """Learn every strategy's weights on ``prepared.examples`` (features from the
    statistics before the validation month) and return the re-scorer that ships: those
    weights over the statistics of the whole history, with its model card.

    ``foryou_train`` and ``foryou_full`` are for-you rankers fitted on the history before
    the validation month and on all of it: the ``foryou`` feature of the examples and of
    the returned re-scorer (which keeps ``foryou_full`` attached). Without them that
    feature is 0 and its weight 0.

    Raises:
        PersonalError: fewer than :data:`MIN_EXAMPLES` examples have both a history and a
            relevant candidate.
    """
    params = params or PersonalParams()
    started = time.monotonic()
    s = prepared.train_stats
    scorer = PersonalRescorer(
        s.items,
        s.item_vectors,
        s.copurchase,
        s.baskets,
        default_weights(),
        params,
        {},
        foryou_train,
    )
    xs: list[FloatArray] = []
    ys: list[npt.NDArray[np.bool_]] = []
    held: list[bool] = []
    kept: list[Any] = []
    for ex in prepared.examples:
        if max_minutes is not None and time.monotonic() - started > max_minutes * 60 * 0.8:
            log.warning("personal fit: budget spent after %d examples' features", len(xs))
            break
        if not usable(ex):
            continue
        xs.append(
            scorer.features(
                ex.query_vec,
                ex.candidate_ids,
                ex.candidate_vecs,
                ex.base_scores,
                ex.history,
                now=ex.now,
            )
        )
        ys.append(ex.relevant)
        held.append(is_held_out(ex.customer))
        kept.append(ex)
    require_enough(len(xs))
    fit_idx = [k for k, h in enumerate(held) if not h] or list(range(len(xs)))
    weights: dict[str, dict[str, float]] = {}
    for strategy, names in STRATEGY_FEATURES.items():
        columns = [FEATURES.index(n) for n in names]
        w = fit_weights([xs[k] for k in fit_idx], [ys[k] for k in fit_idx], columns)
        weights[strategy] = {n: float(v) for n, v in zip(names, w, strict=True)}
    scorer.weights = weights

    report = FitReport()
    for part, idx in (("fit", fit_idx), ("held_out", [k for k, h in enumerate(held) if h])):
        if not idx:
            continue
        base_mrr = np.mean(
            [mrr_at_10(kept[k].base_scores, ys[k], kept[k].candidate_ids) for k in idx]
        )
        report[f"{part}.mrr@10.base"] = round(float(base_mrr), 4)
        for strategy in weights:
            st: Strategy = strategy  # type: ignore[assignment]
            values = [
                mrr_at_10(
                    scorer.combine(xs[k], kept[k].base_scores, st).scores,
                    ys[k],
                    kept[k].candidate_ids,
                )
                for k in idx
            ]
            report[f"{part}.mrr@10.{strategy}"] = round(float(np.mean(values)), 4)
        report[f"{part}.queries"] = len(idx)
    # The held-out figures are in the report; the weights that ship use every example.
    for strategy, names in STRATEGY_FEATURES.items():
        columns = [FEATURES.index(n) for n in names]
        w = fit_weights(xs, ys, columns)
        weights[strategy] = {n: float(v) for n, v in zip(names, w, strict=True)}
    f = prepared.full_stats
    card = {
        "name": "personal-rescorer",
        "version": version or datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        "features": list(FEATURES),
        "strategies": {k: list(v) for k, v in STRATEGY_FEATURES.items()},
        "weights": weights,
        "params": {
            "tau": params.tau,
            "half_life_days": params.half_life_days,
            "max_history": params.max_history,
        },
        "trained_on": {
            "statistics": list(prepared.stats_range),
            "validation_queries": list(prepared.valid_range),
            # The base the weights were fitted over (R3 rebuilds it from here).
            "search_relevance": {"popularity_log": 1.0, "query_similarity": prepared.query_weight},
            "foryou_ranker": foryou_train is not None,
        },
        "shipped_statistics_items": len(f.items),
        "metrics": dict(report),
        "fit_seconds": round(time.monotonic() - started, 1),
    }
    shipped = PersonalRescorer(
        f.items, f.item_vectors, f.copurchase, f.baskets, weights, params, card, foryou_full
    )
    return shipped, report
