"""Choosing the recommender's settings by measurement on a validation month.

The trainer carves the last ``validation_days`` of its history off as validation
(history before it trains), builds the protocols of :mod:`indexer.recommend_protocols`
on it, and searches :class:`retrieval.recommend.bundle.RecommenderConfig` one group of
settings at a time (coordinate search: each step keeps the best value found so far), in
order of what matters most. Every candidate and its score is returned for the model
card. Nothing here ever sees the month the model is evaluated on.

Objectives: the similar model maximises R2 hit@10 (+ recall@10 as tie-break); the blend
maximises R1 nDCG@20; the discovery weights and the popularity half-life maximise
R1-new recall@20.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from shopsearch.indexer.recommend_protocols import (
    DEPTH,
    ForYouQuery,
    SimilarQuery,
    customer_histories,
    evaluate_run,
    r1_queries,
    r2_queries,
)
from shopsearch.retrieval.recommend.bundle import RecommenderBundle, RecommenderConfig, fit_bundle
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import Interactions

__all__ = [
    "SEARCH_SPACE",
    "SEARCH_SPACE_TRIALS",
    "TuningResult",
    "ValidationSet",
    "tune",
    "validation_set",
]

log = logging.getLogger(__name__)

#: Coordinate search, in order: (objective, {config field: candidate values}). Values of
#: one step are tried as a product; each step starts from the best config so far.
SEARCH_SPACE: tuple[tuple[str, dict[str, Sequence[Any]]], ...] = (
    (
        "similar",
        {
            "similar_variant": ["rp3beta:0.2", "rp3beta:0.35", "cosine", "count"],
        },
    ),
    ("similar", {"similar_half_life_days": [math.inf, 120.0, 60.0]}),
    ("similar", {"text_weight": [0.0, 0.15, 0.3], "user_weight": [0.0, 0.3]}),
    ("similar", {"pop_weight": [0.0, 0.05, 0.1]}),
    ("discovery", {"history_params.lambda": [400.0, 1000.0]}),
    ("discovery", {"history_half_life_days": [14.0, 30.0, 90.0]}),
    ("discovery", {"popularity_half_life_days": [7.0, 30.0, 90.0]}),
    ("for_you", {"repurchase_half_life_days": [30.0, 90.0, 180.0, math.inf]}),
    ("for_you", {"blend.neighbours": [0.0, 0.1, 0.3, 0.6], "blend.popularity": [0.0, 0.05, 0.15]}),
    ("discovery", {"blend_discovery.popularity": [0.0, 0.05, 0.1, 0.2, 0.4]}),
)
#: Every trial of :data:`SEARCH_SPACE` (for progress bars): one config per entry.


def _grid(space: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in space.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


SEARCH_SPACE_TRIALS: tuple[dict[str, Any], ...] = tuple(
    combo for _, space in SEARCH_SPACE for combo in _grid(space)
)
#: What each objective measures: (protocol, metric, tie-break metric).
OBJECTIVES = {
    "similar": ("R2", "hit@10", "recall@10"),
    "for_you": ("R1", "ndcg@20", "recall@20"),
    "discovery": ("R1-new", "recall@20", "ndcg@20"),
}
_VARIANT_PARAMS = {
    "rp3beta:0.2": ("rp3beta", {"alpha": 1.0, "beta": 0.2}),
    "rp3beta:0.35": ("rp3beta", {"alpha": 1.0, "beta": 0.35}),
    "cosine": ("cosine", {"alpha": 0.5, "beta": 0.5}),
    "count": ("count", {}),
    "ease": ("ease", {"lambda": 200.0}),
}


@dataclass(frozen=True)
class ValidationSet:
    """Training events before the validation period and its protocol queries."""

    events: Interactions
    r1: list[ForYouQuery]
    r1_new: list[ForYouQuery]
    r2: list[SimilarQuery]
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class TuningResult:
    """The chosen config, its validation metrics, every trial (for the card), and the
    chosen config's models fitted on the validation training events (``bundle``: what
    the for-you ranker is fitted on, so it is not fitted twice)."""

    config: RecommenderConfig
    metrics: dict[str, dict[str, float]]
    trials: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    bundle: RecommenderBundle | None = None


def validation_set(
    frame: pd.DataFrame, to_arrays: Callable[[pd.DataFrame], Interactions], days: float
) -> ValidationSet:
    """The last ``days`` of ``frame`` (interactions shape) as validation."""
    end = frame["ts"].max()
    start = end - pd.Timedelta(days=days)
    train = frame[frame["ts"] < start]
    val = frame[frame["ts"] >= start]
    histories = customer_histories(train)
    return ValidationSet(
        to_arrays(train),
        r1_queries(histories, val, new=False),
        r1_queries(histories, val, new=True),
        r2_queries(val, seed=0),
        start,
        end,
    )


def _apply(config: RecommenderConfig, key: str, value: Any) -> RecommenderConfig:
    if key == "similar_variant":
        variant, params = _VARIANT_PARAMS[value]
        return dataclasses.replace(config, similar_variant=variant, similar_params=dict(params))
    if "." in key:
        group, name = key.split(".")
        changes: dict[str, Any] = {group: {**getattr(config, group), name: value}}
        return dataclasses.replace(config, **changes)
    changes = {key: value}
    return dataclasses.replace(config, **changes)


def measure(bundle: RecommenderBundle, val: ValidationSet, which: str) -> dict[str, float]:
    """The objective's protocol metrics of ``bundle`` on ``val``."""
    protocol = OBJECTIVES[which][0]
    if protocol == "R2":
        run = {q.qid: bundle.similar_chain.similar(q.item, DEPTH) for q in val.r2}
        means, _ = evaluate_run({q.qid: q.relevant for q in val.r2}, run)
        return means
    queries = val.r1 if protocol == "R1" else val.r1_new
    run = {q.qid: bundle.for_you.for_history(q.history, DEPTH, q.exclude) for q in queries}
    means, _ = evaluate_run({q.qid: q.relevant for q in queries}, run)
    return means


def tune(
    val: ValidationSet,
    vocab: ItemVocab,
    embeddings: npt.NDArray[np.float32],
    *,
    deadline: float,
    start: RecommenderConfig | None = None,
    on_trial: Callable[[int, int], None] | None = None,
) -> TuningResult:
    """Coordinate search over :data:`SEARCH_SPACE` until done or ``time.monotonic() >=
    deadline`` (then the best config so far is kept). ``on_trial(done, total)`` reports."""
    best = start or RecommenderConfig()
    cache: dict[tuple[Any, ...], Any] = {}
    trials: list[dict[str, Any]] = []
    steps = [(w, _grid(space)) for w, space in SEARCH_SPACE]
    total = sum(len(g) for _, g in steps)
    done = 0
    stopped = False
    for which, grid in steps:
        protocol, metric, tie = OBJECTIVES[which]
        scored: list[tuple[tuple[float, float], RecommenderConfig]] = []
        for combo in grid:
            if time.monotonic() >= deadline:
                stopped = True
                break
            config = best
            for key, value in combo.items():
                config = _apply(config, key, value)
            bundle = fit_bundle(val.events, vocab, embeddings, config, cache=cache)
            means = measure(bundle, val, which)
            scored.append(((means[metric], means[tie]), config))
            trials.append({"objective": which, "protocol": protocol, **_jsonable(combo), **means})
            done += 1
            if on_trial is not None:
                on_trial(done, total)
            log.info("tuning %s %s: %s=%.4f", which, combo, metric, means[metric])
        if scored:
            best = max(scored, key=lambda s: s[0])[1]
        if stopped:
            break
    bundle = fit_bundle(val.events, vocab, embeddings, best, cache=cache)
    metrics = {
        OBJECTIVES[w][0]: measure(bundle, val, w) for w in ("for_you", "discovery", "similar")
    }
    return TuningResult(best, metrics, trials, stopped, bundle)


def _jsonable(combo: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in combo.items()}
