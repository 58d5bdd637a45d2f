"""Training the recommender: interactions in, a registered ``recommender/<version>`` out.

:func:`train_recommender` takes the event store's interactions table (or retail lines
converted by :func:`retail_interactions`) and the catalog's item texts, then:

1. embeds every item's text with the item tower (cached by text under
   ``<models-dir>/.cache/embeddings``), for cold-start neighbours;
2. tunes :class:`retrieval.recommend.bundle.RecommenderConfig` on the last
   ``validation_days`` of the history (:mod:`indexer.training.recommender_tuning`), within
   ``max_minutes`` (the best settings found so far are kept at the deadline);
3. fits the learned for-you ranker on the same validation month
   (:mod:`indexer.training.recommender_ranker`; the blend stays the answer when there is too
   little data to fit it);
4. refits the chosen config on the whole history, measures scoring latency, and
   registers the bundle with its model card (date range, counts, chosen variant and
   weights, validation metrics, trials, ranker weights, latency).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from shopsearch.indexer.embedding_cache import EmbeddingCache
from shopsearch.indexer.events.types import INTERACTION_COLUMNS
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.recommend_protocols import DEPTH, customer_histories
from shopsearch.indexer.training.recommender_ranker import RankerFit, fit_rankers
from shopsearch.indexer.training.recommender_tuning import (
    SEARCH_SPACE_TRIALS,
    TuningResult,
    tune,
    validation_set,
)
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import RegisteredModel, new_version, register, staging_dir
from shopsearch.retrieval.recommend.bundle import (
    RecommenderBundle,
    RecommenderConfig,
    fit_bundle,
    save_bundle,
)
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import Interactions
from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "DEFAULT_VALIDATION_DAYS",
    "FittedRecommender",
    "RecommenderTrainingError",
    "TrainedRecommender",
    "embed_items",
    "fit_recommender",
    "interaction_arrays",
    "load_recommender",
    "measure_latency",
    "register_fitted",
    "retail_interactions",
    "train_recommender",
]

log = logging.getLogger(__name__)

DEFAULT_VALIDATION_DAYS = 30.0
#: Fewer purchases than this and tuning would fit noise: the defaults are used instead.
MIN_VALIDATION_QUERIES = 20


class RecommenderTrainingError(ShopsearchError):
    """The interactions or item texts cannot train a recommender (says which and why)."""


@dataclass(frozen=True)
class TrainedRecommender:
    """The registered model, the fitted bundle and how tuning went."""

    model: RegisteredModel
    bundle: RecommenderBundle
    tuning: TuningResult | None


def retail_interactions(lines: pd.DataFrame) -> pd.DataFrame:
    """Online-retail lines (:func:`indexer.retail.load_lines`) in the interactions-table
    shape: user = customer, item = stock code, basket = invoice, kind = purchase."""
    return pd.DataFrame(
        {
            "user": lines["customer"].astype(str),
            "item": lines["stock_code"].astype(str),
            "ts": lines["ts"],
            "basket": lines["invoice"].astype(str),
            "kind": "purchase",
            "quantity": lines["quantity"].astype(float),
        },
        columns=list(INTERACTION_COLUMNS),
    )


def interaction_arrays(frame: pd.DataFrame) -> Interactions:
    """The interactions table as :class:`Interactions` (``ts`` in epoch seconds).

    Raises:
        RecommenderTrainingError: a column of :data:`INTERACTION_COLUMNS` is missing.
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise RecommenderTrainingError(
            f"interactions lack column(s) {', '.join(missing)}; expected "
            f"{', '.join(INTERACTION_COLUMNS)} (EventStore.interactions() or retail_interactions())"
        )
    ts = pd.to_datetime(frame["ts"], utc=True)
    seconds = (ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return Interactions(
        frame["user"].fillna("").astype(str).to_numpy(str),
        frame["item"].astype(str).to_numpy(str),
        seconds.to_numpy(np.float64),
        frame["basket"].fillna("").astype(str).to_numpy(str),
        frame["kind"].astype(str).to_numpy(str),
        frame["quantity"].astype(float).to_numpy(np.float64),
    )


def embed_items(
    vocab: ItemVocab, texts: Mapping[str, str], encoder: Encoder, cache_dir: Path | None
) -> npt.NDArray[np.float32]:
    """Unit-length item-tower vectors of the vocabulary's texts (zero rows: no text).

    With ``cache_dir`` vectors are cached by text (and model checksum), so a retrain
    re-encodes only new or changed descriptions."""
    out = np.zeros((len(vocab), encoder.dim), np.float32)
    have = [i for i, item in enumerate(vocab.items) if texts.get(item, "").strip()]
    if not have:
        return out
    strings = [texts[vocab.items[i]] for i in have]

    def encode(batch: Sequence[str]) -> npt.NDArray[np.float32]:
        return encoder.encode_document(list(batch))

    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, encoder.info.sha256, encoder.dim)
        vectors, hits = cache.encode(strings, encode)
        log.info("item texts: %d embedded, %d from the cache", len(strings) - hits, hits)
    else:
        vectors = encode(strings)
    out[have] = vectors
    return out


def measure_latency(
    bundle: RecommenderBundle, frame: pd.DataFrame, n: int = 200
) -> dict[str, float]:
    """p50/p95 ms of one for-you and one similar request (recent shoppers and items)."""
    histories = list(customer_histories(frame).values())[-n:]
    items = frame["item"].drop_duplicates().tolist()[-n:]
    out: dict[str, float] = {}
    for name, calls in (
        ("for_you", [lambda h=h: bundle.for_you.for_history(h, DEPTH) for h in histories]),
        ("similar", [lambda i=i: bundle.similar_chain.similar(i, DEPTH) for i in items]),
    ):
        times = []
        for call in calls:
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1000)
        if times:
            out[f"{name}_p50_ms"] = float(np.percentile(times, 50))
            out[f"{name}_p95_ms"] = float(np.percentile(times, 95))
    return out


@dataclass(frozen=True)
class FittedRecommender:
    """A bundle fitted on the whole history, with its tuning and card fields."""

    bundle: RecommenderBundle
    tuning: TuningResult | None
    card: dict[str, Any]


def fit_recommender(
    interactions: pd.DataFrame,
    item_texts: Mapping[str, str],
    *,
    encoder: Encoder,
    max_minutes: float = 10.0,
    validation_days: float = DEFAULT_VALIDATION_DAYS,
    cache_dir: Path | None = None,
    progress: ProgressFactory = no_progress,
    version: str = "unversioned",
) -> FittedRecommender:
    """Embed item texts, tune on the last ``validation_days``, fit the ranker and fit on
    everything (steps 1-4 of the module docstring, without registering).

    Raises:
        RecommenderTrainingError: no purchases, a column missing, or a bad budget.
    """
    if max_minutes <= 0 or not math.isfinite(max_minutes):
        raise RecommenderTrainingError(f"max_minutes must be a positive number, got {max_minutes}")
    started = time.monotonic()
    deadline = started + max_minutes * 60
    frame = interactions.sort_values("ts", kind="stable").reset_index(drop=True)
    events = interaction_arrays(frame)
    if not (events.kind == "purchase").any():
        raise RecommenderTrainingError(
            "the interactions hold no purchase; import a history first "
            "(`shopsearch events import FILE`) or pass --history"
        )
    vocab = ItemVocab.of([*frame["item"].tolist(), *sorted(item_texts)])
    with progress("embedding item texts", 1) as advance:
        embeddings = embed_items(vocab, item_texts, encoder, cache_dir)
        advance(1)
    tuning: TuningResult | None = None
    config = RecommenderConfig()
    val = validation_set(frame, interaction_arrays, validation_days)
    if len(val.r1) >= MIN_VALIDATION_QUERIES and len(val.r2) >= MIN_VALIDATION_QUERIES:
        with progress("tuning on validation", len(SEARCH_SPACE_TRIALS)) as advance:
            tuning = tune(
                val,
                vocab,
                embeddings,
                deadline=deadline - 0.1 * max_minutes * 60,
                on_trial=lambda done, total: advance(1),
            )
        config = tuning.config
    else:
        log.warning(
            "validation has %d R1 and %d R2 queries (< %d): keeping the default settings",
            len(val.r1),
            len(val.r2),
            MIN_VALIDATION_QUERIES,
        )
    ranking: RankerFit | None = None
    if tuning is not None and tuning.bundle is not None:
        with progress("fitting the for-you ranker", 1) as advance:
            ranking = fit_rankers(tuning.bundle, val)
            advance(1)
    rankers = (ranking.ranker, ranking.ranker_discovery) if ranking else None
    with progress("fitting on the whole history", 1) as advance:
        bundle = fit_bundle(events, vocab, embeddings, config, version=version, rankers=rankers)
        advance(1)
    latency = measure_latency(bundle, frame.tail(20_000))
    card: dict[str, Any] = {
        "trained_on": {
            "from": str(frame["ts"].min()),
            "until": str(frame["ts"].max()),
            "events": len(frame),
            "purchases": int((events.kind == "purchase").sum()),
            "shoppers": int(frame.loc[frame["user"] != "", "user"].nunique()),
            "baskets": int(frame["basket"].nunique()),
            "items": len(vocab),
            "items_with_text": int((np.linalg.norm(embeddings, axis=1) > 0).sum()),
        },
        "text_encoder": encoder.info.to_dict(),
        "config": config.to_dict(),
        "validation": {
            "from": str(val.start),
            "until": str(val.end),
            "queries": {"R1": len(val.r1), "R1-new": len(val.r1_new), "R2": len(val.r2)},
            "metrics": tuning.metrics if tuning else {},
            "trials": tuning.trials if tuning else [],
            "stopped_at_deadline": bool(tuning and tuning.stopped_early),
        },
        "for_you": {
            "model": "learned ranker" if ranking else "blend",
            "ranker_rows": ranking.rows if ranking else {},
            "ranker_validation_in_sample": ranking.metrics if ranking else {},
            "ranker_weights": (
                {
                    "usual": dict(
                        zip(ranking.ranker.features, ranking.ranker.weights, strict=True)
                    ),
                    "discovery": dict(
                        zip(
                            ranking.ranker_discovery.features,
                            ranking.ranker_discovery.weights,
                            strict=True,
                        )
                    ),
                }
                if ranking
                else {}
            ),
        },
        "budget": {
            "max_minutes": max_minutes,
            "minutes_used": round((time.monotonic() - started) / 60, 2),
        },
        "latency_ms": latency,
    }
    return FittedRecommender(bundle, tuning, card)


def train_recommender(
    interactions: pd.DataFrame,
    item_texts: Mapping[str, str],
    models_dir: Path,
    *,
    encoder: Encoder,
    max_minutes: float = 10.0,
    validation_days: float = DEFAULT_VALIDATION_DAYS,
    progress: ProgressFactory = no_progress,
    sources: Mapping[str, str] | None = None,
) -> TrainedRecommender:
    """:func:`fit_recommender`, then register the bundle as ``recommender/<version>`` in
    ``models_dir`` with its model card (item vectors cached under ``.cache/embeddings``).

    Raises:
        RecommenderTrainingError: see :func:`fit_recommender`.
    """
    models_dir = Path(models_dir)
    version = new_version(models_dir, "recommender")
    fitted = fit_recommender(
        interactions,
        item_texts,
        encoder=encoder,
        max_minutes=max_minutes,
        validation_days=validation_days,
        cache_dir=models_dir / ".cache" / "embeddings",
        progress=progress,
        version=version,
    )
    return register_fitted(models_dir, version, fitted, sources)


def register_fitted(
    models_dir: Path,
    version: str,
    fitted: FittedRecommender,
    sources: Mapping[str, str] | None = None,
) -> TrainedRecommender:
    """Save ``fitted`` (fitted with ``version``, from :func:`new_version`) and register it
    as ``recommender/<version>``: from then on it is ``recommender/latest``."""
    staged = staging_dir(models_dir, "recommender", version)
    save_bundle(fitted.bundle, staged)
    card = {**fitted.card}
    card["trained_on"] = {**card["trained_on"], "sources": dict(sources or {})}
    model = register(models_dir, "recommender", version, card)
    return TrainedRecommender(model, fitted.bundle, fitted.tuning)


def load_recommender(path: Path) -> RecommenderBundle:
    """The bundle of a registered recommender directory (version from its card)."""
    from shopsearch.retrieval.model_registry import load_card
    from shopsearch.retrieval.recommend.bundle import load_bundle

    card = load_card(path)
    return load_bundle(path, str(card.get("version", "unversioned")))
