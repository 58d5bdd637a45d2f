"""Shopper-aware re-scoring of a short candidate list (the search's head).

The shopper's recent items change the order of the candidates the search already found;
they never add one (so filters cannot leak) and, with an empty history, change nothing
(the scores returned are the base scores themselves).

Per candidate ``c`` seven features, each from the history alone (newest first, events of
the same item summed, each event weighted by recency ``r = 0.5 ** (age_days /
half_life_days)``, age measured from ``now``, by default the newest event):

- ``base``: the search's relevance, min-max scaled within the list (0..1);
- ``bought``: ``log1p`` of the recency-weighted count of the shopper's own events of ``c``;
- ``bought_before``: 1 when the history holds ``c`` at all (re-buying is the strongest
  signal of this data; the step and the count both matter);
- ``copurchase``: the recency-weighted mean, over the history's items ``h``, of the
  co-purchase cosine ``baskets(h, c) / sqrt(baskets(h) * baskets(c))``;
- ``attention``: the query attends over the history's item embeddings,
  ``a = softmax(q . h_i / tau + log r_i)``, giving a context vector ``sum a_i h_i``; the
  feature is ``c . context`` (so "bag" for a shopper of retro-spot items favours the
  retro-spot bag, and the same shopper's "candle" query is not pulled towards bags);
- ``nearest``: the largest ``c . h`` over the history's items (the same design in another
  colour or size);
- ``foryou``: the log of the for-you ranker's probability that the shopper buys ``c`` next
  (:meth:`retrieval.recommend.ranker.RankedForYou.score_items`, floored at 1e-6): the 26
  features of the recommender (own frequency, recency, re-buy rates, co-purchase, trends)
  condensed into one column. It needs a for-you ranker attached (``foryou``, from the
  recommender bundle fitted on the same period as the statistics); without one it is 0.

A strategy is a linear blend ``z = w . features`` learned on past purchases
(:mod:`rerank.personal_fit`): ``"blend"`` uses all seven, ``"copurchase"`` (the simpler
comparison) only ``base`` and ``copurchase``. The score handed back stays in the base
score's units: ``score = base + personal`` with ``personal = range(base) * (z -
w_base * base_scaled) / w_base``, which orders the candidates exactly as ``z`` does
(``w_base > 0`` is enforced) and is 0 for a candidate without personal evidence, so
``explain`` can show ``personal`` as "what the shopper's history added".

A model is a directory: ``blend.json`` (format, parameters, weights per strategy),
``model_card.json`` (version, trained range, metrics; the registry's card),
``items.json``, ``item_vectors.npy`` (item tower embeddings of the items' texts) and
``copurchase.npz`` (item x item basket counts), ``baskets.npy`` (baskets per item). The
for-you ranker is not part of it: it belongs to the recommender bundle and is attached by
whoever builds the re-scorer. A model of the previous format (six features) loads with a
``foryou`` weight of 0, so it scores as it did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from shopsearch.retrieval.model_registry import CARD_FILE
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import csr_rows_sum
from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "FEATURES",
    "FORMAT",
    "FORYOU_FLOOR",
    "NEIGHBOURS",
    "STRATEGIES",
    "STRATEGY_FEATURES",
    "Blend",
    "ForYouScorer",
    "PersonalError",
    "PersonalParams",
    "PersonalRescorer",
    "PersonalScores",
    "Strategy",
    "cosine_copurchase",
    "default_weights",
    "load_blend",
]

FORMAT = "shopsearch-personal-2"
#: Formats this code reads; the older one lacks ``foryou`` (read with weight 0).
_READABLE = ("shopsearch-personal-1", FORMAT)
#: Floor of the for-you probability before its log (an item the ranker cannot score).
FORYOU_FLOOR = 1e-6
FEATURES: tuple[str, ...] = (
    "base",
    "bought",
    "bought_before",
    "copurchase",
    "attention",
    "nearest",
    "foryou",
)
Strategy = Literal["blend", "copurchase"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
STRATEGY_FEATURES: dict[str, tuple[str, ...]] = {
    "blend": FEATURES,
    "copurchase": ("base", "copurchase"),
}
_SECONDS_PER_DAY = 86_400.0
#: Co-purchase neighbours kept per item (the strongest by cosine).
NEIGHBOURS = 200

FloatArray = npt.NDArray[np.float64]
Vectors = npt.NDArray[np.float32]


class PersonalError(ShopsearchError):
    """A personal model directory is missing, inconsistent, or an input has a bad shape."""


class ForYouScorer(Protocol):
    """What the ``foryou`` feature reads (:class:`retrieval.recommend.ranker.RankedForYou`)."""

    def score_items(self, history: Sequence[HistoryItem], items: Sequence[str]) -> FloatArray:
        """Probability that the shopper with ``history`` (newest first) buys each item."""
        ...


@dataclass(frozen=True)
class PersonalParams:
    """Fixed (not learned) settings: attention temperature, recency half-life in days,
    and how many of the newest history events are read."""

    tau: float = 0.1
    half_life_days: float = 365.0  # chosen on September 2011 (30, 90, 365 tried)
    max_history: int = 200

    def __post_init__(self) -> None:
        if not (self.tau > 0 and self.half_life_days > 0 and self.max_history >= 1):
            raise PersonalError(
                f"PersonalParams needs tau > 0, half_life_days > 0 and max_history >= 1, got {self}"
            )


@dataclass(frozen=True)
class PersonalScores:
    """Scores of the candidates in the order given: ``scores = base + personal``."""

    scores: FloatArray
    personal: FloatArray


@dataclass
class _History:
    """A history folded per distinct item: recency weights and model indices."""

    items: list[str]
    weight: FloatArray
    index: npt.NDArray[np.int64]


def cosine_copurchase(
    counts: sp.csr_matrix, baskets: FloatArray, neighbours: int = NEIGHBOURS
) -> sp.csr_matrix:
    """``counts[i, j] / sqrt(baskets[i] * baskets[j])`` (float32), each row cut to its
    ``neighbours`` largest entries: best-sellers no longer co-occur with everything, and
    a history's rows stay small enough to sum in well under a millisecond."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    size = np.asarray(baskets, dtype=np.float64)
    inv = np.zeros_like(size)
    inv[size > 0] = 1.0 / np.sqrt(size[size > 0])
    scaled = sp.csr_matrix(sp.diags(inv) @ counts @ sp.diags(inv))
    scaled.sort_indices()
    rows, cols, vals = [], [], []
    for i in range(scaled.shape[0]):
        lo, hi = scaled.indptr[i], scaled.indptr[i + 1]
        data = scaled.data[lo:hi]
        keep = (
            np.argpartition(-data, neighbours)[:neighbours]
            if len(data) > neighbours
            else slice(None)
        )
        cols.append(scaled.indices[lo:hi][keep])
        vals.append(data[keep])
        rows.append(np.full(len(vals[-1]), i))
    if not rows:
        return sp.csr_matrix(scaled.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=scaled.shape,
        dtype=np.float32,
    )


@dataclass
class PersonalRescorer:
    """The shopper-aware re-scorer. ``items`` index the rows of ``item_vectors`` and of
    ``copurchase`` (raw basket co-counts; normalised here); ``weights`` maps each
    strategy to one weight per feature of :data:`STRATEGY_FEATURES`; ``foryou`` (optional)
    gives the ``foryou`` feature and must be fitted on the same period as the counts."""

    items: Sequence[str]
    item_vectors: Vectors
    copurchase: sp.csr_matrix
    baskets: FloatArray
    weights: dict[str, dict[str, float]]
    params: PersonalParams = field(default_factory=PersonalParams)
    card: dict[str, Any] = field(default_factory=dict)
    foryou: ForYouScorer | None = None

    def __post_init__(self) -> None:
        n = len(self.items)
        if self.item_vectors.ndim != 2 or self.item_vectors.shape[0] != n:
            raise PersonalError(
                f"item_vectors must be ({n}, dim) for {n} items, got {self.item_vectors.shape}"
            )
        if self.copurchase.shape != (n, n):
            raise PersonalError(f"copurchase must be ({n}, {n}), got {self.copurchase.shape}")
        if np.shape(self.baskets) != (n,):
            raise PersonalError(f"baskets must be ({n},), got {np.shape(self.baskets)}")
        for strategy, w in self.weights.items():
            if strategy not in STRATEGY_FEATURES:
                raise PersonalError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
            expected = set(STRATEGY_FEATURES[strategy])
            if set(w) != expected:
                raise PersonalError(
                    f"weights of {strategy!r} must name {sorted(expected)}, got {sorted(w)}"
                )
            if not w["base"] > 0:
                raise PersonalError(f"weights of {strategy!r}: base must be > 0, got {w['base']}")
        self.vocab = ItemVocab.of(self.items)
        self._cosine = cosine_copurchase(self.copurchase, self.baskets)
        self._vectors = np.ascontiguousarray(self.item_vectors, dtype=np.float32)

    # ---- features -------------------------------------------------------------------

    def _fold(self, history: Sequence[HistoryItem], now: datetime | None) -> _History:
        events = history[: self.params.max_history]
        ref = (now or events[0].ts).timestamp()
        stamps = np.fromiter((e.ts.timestamp() for e in events), np.float64, len(events))
        decay = math.log(2) / (self.params.half_life_days * _SECONDS_PER_DAY)
        recency = np.exp(-decay * np.maximum(ref - stamps, 0.0))
        folded: dict[str, float] = {}
        for event, r in zip(events, recency.tolist(), strict=True):
            folded[event.item] = folded.get(event.item, 0.0) + r
        items = list(folded)
        weight = np.fromiter(folded.values(), np.float64, len(items))
        return _History(items, weight, self.vocab.indices(items))

    def features(
        self,
        query_vec: Vectors,
        candidate_ids: Sequence[str],
        candidate_vecs: Vectors,
        base_scores: FloatArray,
        history: Sequence[HistoryItem],
        *,
        now: datetime | None = None,
        with_foryou: bool = True,
    ) -> FloatArray:
        """The ``(len(candidate_ids), len(FEATURES))`` feature matrix (columns in
        :data:`FEATURES` order). ``history`` must not be empty. ``with_foryou=False``
        leaves the ``foryou`` column 0 (the costliest one, for a strategy that does not
        weigh it)."""
        n = len(candidate_ids)
        base = np.asarray(base_scores, dtype=np.float64)
        out = np.zeros((n, len(FEATURES)), dtype=np.float64)
        if n == 0:
            return out
        low, span = base.min(), np.ptp(base)
        out[:, 0] = (base - low) / span if span > 0 else 0.0
        folded = self._fold(history, now)
        weight = dict(zip(folded.items, folded.weight.tolist(), strict=True))
        own = np.fromiter((weight.get(c, 0.0) for c in candidate_ids), np.float64, n)
        out[:, 1] = np.log1p(own)
        out[:, 2] = own > 0
        known = folded.index >= 0
        if self.foryou is not None and with_foryou:
            chance = self.foryou.score_items(history[: self.params.max_history], candidate_ids)
            out[:, 6] = np.log(np.maximum(chance, FORYOU_FLOOR))
        if not known.any():
            return out
        h_idx, h_w = folded.index[known], folded.weight[known]
        h_w = h_w / h_w.sum()
        cand_idx = self.vocab.indices(candidate_ids)
        in_vocab = cand_idx >= 0
        if in_vocab.any():
            out[in_vocab, 3] = csr_rows_sum(self._cosine, h_idx, h_w)[cand_idx[in_vocab]]
        hist_vecs = self._vectors[h_idx]
        query = np.asarray(query_vec, dtype=np.float32).ravel()
        logits = (hist_vecs @ query) / self.params.tau + np.log(h_w)
        attn = np.exp(logits - logits.max())
        attn = (attn / attn.sum()).astype(np.float32)
        # c . context = c . sum_i a_i h_i = sum_i a_i (c . h_i): one product serves both
        # the attention and the nearest-item features.
        sims = np.asarray(candidate_vecs, dtype=np.float32) @ hist_vecs.T
        out[:, 4] = sims @ attn
        out[:, 5] = sims.max(axis=1)
        return out

    # ---- scoring --------------------------------------------------------------------

    def rescore(
        self,
        query_vec: Vectors,
        candidate_ids: Sequence[str],
        candidate_vecs: Vectors,
        base_scores: FloatArray,
        history: Sequence[HistoryItem],
        *,
        strategy: Strategy = "blend",
        now: datetime | None = None,
    ) -> PersonalScores:
        """Scores of the candidates (same order as given) for a shopper with ``history``
        (newest first). An empty history returns ``base_scores`` unchanged and a zero
        personal component.

        Raises:
            PersonalError: unknown strategy, or inputs of mismatched lengths.
        """
        if strategy not in self.weights:
            raise PersonalError(
                f"strategy {strategy!r} is not in this model; it has {sorted(self.weights)}"
            )
        base = np.asarray(base_scores, dtype=np.float64)
        n = len(candidate_ids)
        if base.shape != (n,) or (n and np.shape(candidate_vecs)[0] != n):
            raise PersonalError(
                f"candidate_ids ({n}), candidate_vecs ({np.shape(candidate_vecs)[0]}) and "
                f"base_scores ({base.shape}) must have the same length"
            )
        if not history or n == 0:
            return PersonalScores(base.copy(), np.zeros(n))
        weighs_foryou = self.weights[strategy].get("foryou", 0.0) != 0.0
        x = self.features(
            query_vec,
            candidate_ids,
            candidate_vecs,
            base,
            history,
            now=now,
            with_foryou=weighs_foryou,
        )
        return self.combine(x, base, strategy)

    def combine(self, x: FloatArray, base_scores: FloatArray, strategy: Strategy) -> PersonalScores:
        """Blend a feature matrix of :meth:`features` with ``strategy``'s weights."""
        w = self.weights[strategy]
        personal_z = np.zeros(len(base_scores))
        for name in STRATEGY_FEATURES[strategy]:
            if name != "base":
                personal_z += w[name] * x[:, FEATURES.index(name)]
        span = float(np.ptp(base_scores)) if len(base_scores) else 0.0
        personal = personal_z * ((span if span > 0 else 1.0) / w["base"])
        return PersonalScores(base_scores + personal, personal)

    # ---- persistence ----------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the model into ``directory`` (created; existing files replaced)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "item_vectors.npy", self._vectors)
        np.save(directory / "baskets.npy", np.asarray(self.baskets, dtype=np.float64))
        sp.save_npz(directory / "copurchase.npz", sp.csr_matrix(self.copurchase, dtype=np.float32))
        (directory / "items.json").write_text(json.dumps(list(self.items)))
        blend = {"format": FORMAT, "params": asdict(self.params), "weights": self.weights}
        (directory / "blend.json").write_text(json.dumps(blend, indent=2))
        (directory / CARD_FILE).write_text(json.dumps(self.card, indent=2, default=str))

    @classmethod
    def load(cls, directory: Path) -> PersonalRescorer:
        """Read a model written by :meth:`save`.

        Raises:
            PersonalError: a file is missing, of another format, or shapes disagree.
        """
        directory = Path(directory)
        blend = load_blend(directory)
        try:
            items = json.loads((directory / "items.json").read_text())
            vectors = np.load(directory / "item_vectors.npy")
            copurchase = sp.load_npz(directory / "copurchase.npz").tocsr()
            baskets = np.load(directory / "baskets.npy")
        except (OSError, ValueError) as exc:
            raise PersonalError(
                f"{directory}: not a personal re-scoring model ({exc}); train one with "
                "`shopsearch train recommender`"
            ) from exc
        return cls(
            items=items,
            item_vectors=vectors,
            copurchase=copurchase,
            baskets=baskets,
            weights=blend.weights,
            params=blend.params,
            card=blend.card,
        )


@dataclass(frozen=True)
class Blend:
    """What a model directory holds beyond its statistics: the weights per strategy, the
    fixed parameters and the model card."""

    weights: dict[str, dict[str, float]]
    params: PersonalParams
    card: dict[str, Any]


def load_blend(directory: Path) -> Blend:
    """The blend of a model written by :meth:`PersonalRescorer.save`, without its
    statistics: what serving needs, as its items, vectors and co-purchase counts come
    from the snapshot and the event store (reading them too costs a second per start).

    Raises:
        PersonalError: ``blend.json`` is missing, unreadable or of another format.
    """
    directory = Path(directory)
    try:
        blend = json.loads((directory / "blend.json").read_text())
        card_path = directory / CARD_FILE
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise PersonalError(
            f"{directory}: not a personal re-scoring model ({exc}); train one with "
            "`shopsearch train recommender`"
        ) from exc
    if blend.get("format") not in _READABLE:
        raise PersonalError(
            f"{directory}: format {blend.get('format')!r}, this code reads {_READABLE}; retrain it"
        )
    weights = {k: {f: float(v) for f, v in w.items()} for k, w in blend["weights"].items()}
    if blend["format"] != FORMAT:  # six features: foryou did not exist, it weighs 0
        for strategy, w in weights.items():
            if "foryou" in STRATEGY_FEATURES.get(strategy, ()):
                w.setdefault("foryou", 0.0)
    return Blend(weights, PersonalParams(**blend["params"]), card)


def default_weights(values: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Untrained starting weights (base 1, the rest ``values`` or 0) for every strategy."""
    values = values or {}
    return {
        s: {f: (1.0 if f == "base" else float(values.get(f, 0.0))) for f in feats}
        for s, feats in STRATEGY_FEATURES.items()
    }
