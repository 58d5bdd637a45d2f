"""The trained recommender as one unit: its settings, fitting, and files.

A :class:`RecommenderConfig` names every choice (variants, half-lives, blend weights);
:func:`fit_bundle` fits all models of one config on interaction arrays; the resulting
:class:`RecommenderBundle` serves ``for_you`` (the blend) and ``similar`` (hybrid
item-to-item -> text neighbours -> popularity), and :func:`save_bundle` /
:func:`load_bundle` write and read it as ``recommender.npz`` + ``config.json`` (the
registry's model card is written beside them by :func:`retrieval.model_registry.register`).

The similar model is a hybrid row-normalised sum: co-purchase in one basket (the main
signal), co-purchase by one shopper (weight ``user_weight``) and description
similarity (``text_weight``; helps rare items and product families such as "RED
RETROSPOT"), plus ``pop_weight`` x trending popularity.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from shopsearch.retrieval.recommend.blend import Chain, ForYou
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.item2item import ItemToItem, fit_similarity
from shopsearch.retrieval.recommend.popularity import Popularity, popularity_scores
from shopsearch.retrieval.recommend.ranker import (
    ITEM_STATS,
    LinearRanker,
    RankedForYou,
    item_statistics,
)
from shopsearch.retrieval.recommend.repurchase import Repurchase
from shopsearch.retrieval.recommend.scoring import FloatArray, Interactions, prune_rows
from shopsearch.retrieval.recommend.text import TextNeighbours

__all__ = [
    "ARRAYS_FILE",
    "CONFIG_FILE",
    "RecommenderBundle",
    "RecommenderConfig",
    "fit_bundle",
    "load_bundle",
    "save_bundle",
]

ARRAYS_FILE = "recommender.npz"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
#: Recency half-life of the learned ranker's shopper-level neighbour feature (days).
RANKER_NEIGHBOUR_HALF_LIFE_DAYS = 90.0
#: Text neighbours below this cosine are not "similar" enough to add to co-purchase.
TEXT_MIN_COSINE = 0.3


@dataclass(frozen=True)
class RecommenderConfig:
    """Every choice of a trained recommender (the trainer tunes these on validation).

    The defaults are what tuning chose on the online-retail history before 2011-09-01
    with September 2011 as validation; they are the starting point of every tuning run
    and what a history too short to validate on gets.
    """

    popularity_half_life_days: float = 7.0
    similar_variant: str = "rp3beta"
    similar_params: dict[str, float] = field(default_factory=lambda: {"alpha": 1.0, "beta": 0.2})
    similar_half_life_days: float = 120.0
    user_weight: float = 0.3
    text_weight: float = 0.15
    pop_weight: float = 0.1
    neighbours: int = 200
    repurchase_half_life_days: float = 180.0
    #: The shopper-level neighbours the blend scores histories with (``unit="user"``).
    history_variant: str = "ease"
    history_params: dict[str, float] = field(default_factory=lambda: {"lambda": 1000.0})
    history_half_life_days: float = 90.0
    blend: dict[str, float] = field(
        default_factory=lambda: {"repurchase": 1.0, "neighbours": 0.6, "popularity": 0.15}
    )
    blend_discovery: dict[str, float] = field(
        default_factory=lambda: {"repurchase": 0.0, "neighbours": 1.0, "popularity": 0.0}
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecommenderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown recommender config keys {sorted(unknown)}")
        fixed: dict[str, Any] = {k: (math.inf if v is None else v) for k, v in data.items()}
        return cls(**fixed)


def _row_unit(m: sp.csr_matrix) -> sp.csr_matrix:
    top = np.asarray(m.max(axis=1).todense()).ravel()
    top[top <= 0] = 1.0
    return (sp.diags(1.0 / top) @ m).tocsr()


def text_similarity(embeddings: npt.NDArray[np.float32], neighbours: int) -> sp.csr_matrix:
    """Each item's ``neighbours`` nearest items by description (cosine >= 0.3)."""
    cos = embeddings @ embeddings.T
    np.fill_diagonal(cos, 0.0)
    cos[cos < TEXT_MIN_COSINE] = 0.0
    return prune_rows(cos, neighbours)


@dataclass
class RecommenderBundle:
    """Fitted models of one config over one vocabulary.

    ``similar_matrix`` is the hybrid item-to-item similarity (rows unit-max);
    ``history_matrix`` the shopper-level neighbours the blend scores histories with.
    ``stats`` are the item statistics of the learned ranker and ``as_of`` the newest
    training event; with ``rankers`` (usual, discovery) set, ``for_you`` is the learned
    :class:`RankedForYou`, otherwise the blend (``blend`` is kept either way).
    """

    config: RecommenderConfig
    vocab: ItemVocab
    popularity: FloatArray
    similar_matrix: sp.csr_matrix
    history_matrix: sp.csr_matrix
    embeddings: npt.NDArray[np.float32]
    version: str = "unversioned"
    stats: dict[str, FloatArray] = field(default_factory=dict)
    as_of: float = 0.0
    rankers: tuple[LinearRanker, LinearRanker] | None = None

    def __post_init__(self) -> None:
        c, v = self.config, self.version
        self.popular = Popularity(self.vocab, self.popularity, version=v)
        self.text = TextNeighbours(self.vocab, self.embeddings, c.history_half_life_days, version=v)
        self.item2item = ItemToItem(
            self.vocab, self.similar_matrix, c.history_half_life_days, "item2item", v
        )
        self.similar_chain = Chain([self.item2item, self.text, self.popular], "similar", v)
        self.repurchase = Repurchase(
            self.vocab, self.popularity, c.repurchase_half_life_days, version=v
        )
        self.neighbours = ItemToItem(
            self.vocab, self.history_matrix, c.history_half_life_days, "neighbours", v
        )
        blend = ForYou(
            self.vocab,
            self.repurchase,
            self.neighbours,
            self.popularity,
            c.blend,
            self.similar_chain,
            c.blend_discovery,
            version=v,
        )
        self.blend = blend
        self.ranked: RankedForYou | None = None
        first: ForYou | RankedForYou = blend
        if self.rankers is not None:
            self.ranked = first = self.ranked_with(*self.rankers)
        self.for_you = Chain([first, self.text, self.popular], "for-you", v)

    def ranked_with(self, ranker: LinearRanker, discovery: LinearRanker) -> RankedForYou:
        """The learned for-you model of this bundle's models with these rankers.

        Raises:
            ValueError: the bundle has no item statistics (written by an older version).
        """
        if not self.stats:
            raise ValueError("this recommender bundle has no item statistics; retrain it")
        # The ranker's neighbour feature decays with its own fixed half-life, not the
        # blend's tuned one: it has recency features of its own, and on October 2011 a
        # 14-day neighbour half-life (tuned for the blend) cost it R1-new recall@20
        # 0.100 -> 0.095.
        return RankedForYou(
            self.vocab,
            self.history_matrix,
            RANKER_NEIGHBOUR_HALF_LIFE_DAYS,
            self.similar_matrix,
            self.embeddings,
            self.stats,
            self.as_of,
            ranker,
            discovery,
            self.similar_chain,
            version=self.version,
        )


def fit_bundle(
    events: Interactions,
    vocab: ItemVocab,
    embeddings: npt.NDArray[np.float32],
    config: RecommenderConfig,
    *,
    version: str = "unversioned",
    cache: dict[tuple[Any, ...], Any] | None = None,
    rankers: tuple[LinearRanker, LinearRanker] | None = None,
) -> RecommenderBundle:
    """Fit every model of ``config`` on ``events``. ``embeddings`` are the vocabulary's
    unit-length description vectors (zero rows: no text). ``cache`` (optional) keeps
    similarity matrices between fits that share their settings (tuning). ``rankers``
    (fitted by :mod:`indexer.training.recommender_ranker`) make ``for_you`` the learned ranker."""
    if embeddings.shape[0] != len(vocab):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(vocab)} items")
    memo = cache if cache is not None else {}
    as_of = float(events.ts.max()) if len(events) else 0.0
    c = config

    def sim(unit: str, variant: str, params: dict[str, float], half_life: float) -> sp.csr_matrix:
        key = (unit, variant, tuple(sorted(params.items())), half_life, c.neighbours)
        if key not in memo:
            memo[key] = _row_unit(
                fit_similarity(
                    events,
                    vocab,
                    variant=variant,
                    unit=unit,
                    params=params,
                    neighbours=c.neighbours,
                    half_life_days=half_life,
                )
            )
        return memo[key]

    text_key = ("text", c.neighbours)
    if text_key not in memo:
        memo[text_key] = text_similarity(embeddings, c.neighbours)
    like = (c.similar_variant, c.similar_params, c.similar_half_life_days)
    basket, user, text = sim("basket", *like), sim("user", *like), memo[text_key]
    # Shopper rows are not decayed: recency enters through the history weights.
    history = sim("user", c.history_variant, c.history_params, math.inf)
    popularity = popularity_scores(
        events, vocab, as_of=as_of, half_life_days=c.popularity_half_life_days
    )
    similar = basket + c.user_weight * user + c.text_weight * text
    if c.pop_weight > 0:
        # Trending items join every row that has co-purchases (not rows of unknown items:
        # those fall through to text neighbours).
        top = float(popularity.max()) or 1.0
        n_top = min(c.neighbours, len(vocab))
        best = np.argsort(-popularity, kind="stable")[:n_top]
        has_row = np.diff(similar.indptr) > 0
        rows = np.repeat(np.nonzero(has_row)[0], n_top)
        cols = np.tile(best, int(has_row.sum()))
        vals = np.tile(c.pop_weight * popularity[best] / top, int(has_row.sum()))
        similar = similar + sp.csr_matrix((vals, (rows, cols)), shape=similar.shape)
    similar = similar.tocsr()
    similar.setdiag(0)
    similar = prune_rows(similar, c.neighbours)
    if ("stats",) not in memo:
        memo[("stats",)] = item_statistics(events, vocab)
    return RecommenderBundle(
        c,
        vocab,
        popularity,
        similar,
        history,
        embeddings,
        version,
        memo[("stats",)],
        as_of,
        rankers,
    )


def save_bundle(bundle: RecommenderBundle, directory: Path) -> None:
    """Write ``recommender.npz`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"items": np.array(bundle.vocab.items, dtype=str)}
    arrays["popularity"] = bundle.popularity
    arrays["embeddings"] = bundle.embeddings
    for name, m in (("similar", bundle.similar_matrix), ("history", bundle.history_matrix)):
        m = sp.csr_matrix(m)
        arrays[f"{name}_data"] = m.data.astype(np.float32)
        arrays[f"{name}_indices"] = m.indices.astype(np.int32)
        arrays[f"{name}_indptr"] = m.indptr.astype(np.int64)
    for name in ITEM_STATS:
        if name in bundle.stats:
            arrays[f"stat_{name}"] = bundle.stats[name]
    arrays["as_of"] = np.array([bundle.as_of])
    np.savez(directory / ARRAYS_FILE, **arrays)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": bundle.config.to_dict()}
    if bundle.rankers is not None:
        meta["rankers"] = {
            "usual": bundle.rankers[0].to_dict(),
            "discovery": bundle.rankers[1].to_dict(),
        }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def load_bundle(directory: Path, version: str = "unversioned") -> RecommenderBundle:
    """Read a bundle written by :func:`save_bundle`.

    Raises:
        ValueError: a file is missing, or of another format version.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        npz = np.load(directory / ARRAYS_FILE)
    except FileNotFoundError as exc:
        raise ValueError(
            f"{directory} is not a recommender bundle ({exc.filename} missing); "
            "train one with `shopsearch train recommender`"
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}: recommender format {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; retrain with `shopsearch train recommender`"
        )
    vocab = ItemVocab.of(npz["items"].tolist())
    n = len(vocab)

    def matrix(name: str) -> sp.csr_matrix:
        return sp.csr_matrix(
            (npz[f"{name}_data"], npz[f"{name}_indices"], npz[f"{name}_indptr"]), shape=(n, n)
        )

    # Bundles written before the learned ranker have no statistics: they serve the blend.
    stats = {s: npz[f"stat_{s}"].astype(np.float64) for s in ITEM_STATS if f"stat_{s}" in npz}
    rankers = None
    if "rankers" in meta and len(stats) == len(ITEM_STATS):
        try:
            rankers = (
                LinearRanker.from_dict(meta["rankers"]["usual"]),
                LinearRanker.from_dict(meta["rankers"]["discovery"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{directory}: unreadable for-you ranker ({exc}); retrain") from None
    return RecommenderBundle(
        RecommenderConfig.from_dict(meta["config"]),
        vocab,
        npz["popularity"].astype(np.float64),
        matrix("similar"),
        matrix("history"),
        npz["embeddings"].astype(np.float32),
        version,
        stats,
        float(npz["as_of"][0]) if "as_of" in npz else 0.0,
        rankers,
    )
