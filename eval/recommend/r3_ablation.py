"""Which extra features would lift R3? One at a time, on September and October.

The shopper-aware re-scorer (:mod:`rerank.personal`) is trained as ``eval recommend``
trains it: statistics before the history's last month, validation queries of that month
(:func:`indexer.training.personal.prepare_personal_training`). Each variant adds columns
to its six features, refits the listwise blend (:func:`rerank.personal_fit.fit_weights`)
and reports:

- ``held_out``: MRR@10 on the validation shoppers the trainer holds out (weights fitted on
  the others);
- ``test``: MRR@10 on the test period's R3 queries (weights fitted on every validation
  query; statistics of the whole history), scored as :func:`eval.recommend.r3.run_r3`
  scores the attention blend. The ``shipped`` row is the re-scorer itself through
  :meth:`PersonalRescorer.rescore`, the served path; ``blend`` must equal it.

The base relevance of both periods is the re-scorer's training base
(:func:`indexer.training.personal.search_relevance`: recent popularity and the query
similarity, its weight fitted without history), so ``query_similarity`` here asks whether
the query should weigh more once the history is known.

Nothing here is picked on the test period: it is the README's evidence for which of these
features is worth shipping. Run:
``python -m shopsearch.eval.recommend.r3_ablation --history .../transactions.csv.gz``
(the dev split: history before 2011-10-01, test October 2011); ``--foryou`` fits the two
recommenders whose for-you rankers give the shipped ``foryou`` feature (minutes; without
it that feature is 0, the blend's other six are what is left); ``--holdout-days 30``
tests on the history's own last month instead (October is then not read).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from shopsearch.eval.recommend.r3 import R3Data
from shopsearch.indexer.training.personal import (
    HISTORY_LIMIT,
    month_start,
    prepare_personal_training,
    search_relevance,
    word_queries,
)
from shopsearch.rerank.personal import (
    FEATURES,
    PersonalRescorer,
    cosine_copurchase,
    default_weights,
)
from shopsearch.rerank.personal_fit import fit_weights, is_held_out, mrr_at_10, train_rescorer
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.ranker import RankedForYou

__all__ = [
    "EXTRA",
    "AblationRow",
    "extra_features",
    "fit_foryou_rankers",
    "rebuy_rates",
    "run_r3_ablation",
]

FloatArray = npt.NDArray[np.float64]

#: The extra columns, in order, appended after :data:`rerank.personal.FEATURES`.
EXTRA: tuple[str, ...] = (
    "query_similarity",  # c . q
    "rebuy_if_bought",  # the item's re-buy rate, for an item the shopper bought
    "rebuy_rate_log",  # log of the item's re-buy rate, for every candidate
    "bought_last_30d",  # exp(-days since the shopper last bought it / 30)
    "nearest_newest_10",  # max c . h over the newest 10 distinct items
    "attention_tau_0.03",
    "attention_tau_0.3",
    "copurchase_newest_basket",  # co-purchase cosine with the newest invoice's items
)
_VARIANTS: dict[str, tuple[str, ...]] = {
    "blend": (),
    **{f"+{name}": (name,) for name in EXTRA},
    "+query_similarity +rebuy_if_bought": ("query_similarity", "rebuy_if_bought"),
}


@dataclass(frozen=True)
class AblationRow:
    """One variant: the extra features it adds and its MRR@10 on both periods."""

    variant: str
    added: list[str]
    held_out: float | None
    test: float


def rebuy_rates(lines: pd.DataFrame) -> dict[str, float]:
    """Per item, the smoothed share of its (known) buyers who bought it on 2+ days."""
    known = lines[lines["customer"] != ""]
    days = (
        known.assign(day=known["ts"].dt.floor("D"))
        .groupby(["stock_code", "customer"])["day"]
        .nunique()
    )
    buyers = days.groupby(level=0).size()
    rebuyers = (days >= 2).groupby(level=0).sum()
    return {str(k): float(v) for k, v in ((rebuyers + 0.5) / (buyers + 2.0)).items()}


def extra_features(
    scorer: PersonalRescorer,
    cosine: sp.csr_matrix,
    query_vec: npt.NDArray[np.float32],
    candidate_ids: Sequence[str],
    candidate_vecs: npt.NDArray[np.float32],
    history: Sequence[HistoryItem],
    now: datetime,
    rates: Mapping[str, float],
) -> FloatArray:
    """The ``(len(candidate_ids), len(EXTRA))`` columns of :data:`EXTRA`; ``cosine`` is
    :func:`rerank.personal.cosine_copurchase` of the scorer's counts (computed once)."""
    n = len(candidate_ids)
    out = np.zeros((n, len(EXTRA)))
    q = np.asarray(query_vec, dtype=np.float32).ravel()
    out[:, 0] = candidate_vecs @ q
    last: dict[str, datetime] = {}
    for event in history:  # newest first
        last.setdefault(event.item, event.ts)
    for k, item in enumerate(candidate_ids):
        rate = rates.get(item, 0.25)
        out[k, 2] = np.log(rate)
        if item in last:
            out[k, 1] = rate
            out[k, 3] = np.exp(-max((now - last[item]).total_seconds(), 0.0) / 86_400 / 30)
    idx = scorer.vocab.indices(list(last))
    hist_vecs = scorer.item_vectors[idx[idx >= 0]].astype(np.float32)
    if len(hist_vecs):
        sims = candidate_vecs @ hist_vecs.T
        out[:, 4] = sims[:, :10].max(axis=1)
        affinity = hist_vecs @ q
        for column, tau in ((5, 0.03), (6, 0.3)):
            attn = np.exp((affinity - affinity.max()) / tau)
            out[:, column] = sims @ (attn / attn.sum())
    newest = [e.item for e in history if e.ts == history[0].ts] if history else []
    basket = scorer.vocab.indices(newest)
    basket = basket[basket >= 0]
    cand = scorer.vocab.indices(list(candidate_ids))
    if len(basket) and (cand >= 0).any():
        row = np.asarray(cosine[basket].sum(axis=0)).ravel() / len(basket)
        out[cand >= 0, 7] = row[cand[cand >= 0]]
    return out


def _row(
    variant: str,
    added: Sequence[str],
    held_out: Sequence[float],
    test: Sequence[float],
    progress: Callable[[str], None],
) -> AblationRow:
    """A variant's row from its per-query reciprocal ranks (reported as it is made)."""
    row = AblationRow(
        variant, list(added), float(np.mean(held_out)) if held_out else None, float(np.mean(test))
    )
    progress(f"{variant}: test MRR@10 {row.test:.4f}")
    return row


def _columns(added: Sequence[str]) -> list[int]:
    return list(range(len(FEATURES))) + [len(FEATURES) + EXTRA.index(a) for a in added]


def run_r3_ablation(
    history_lines: pd.DataFrame,
    test_lines: pd.DataFrame,
    *,
    encoder: Encoder,
    seed: int = 0,
    max_test_queries: int | None = None,
    foryou: tuple[RankedForYou, RankedForYou] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[AblationRow]:
    """The ``shipped`` row, then every variant (see the module doc). ``max_test_queries``
    keeps the first N test queries (for a quick look; the README's rows use them all).
    ``foryou``: for-you rankers fitted on the history before its last month and on all
    of it (:func:`fit_foryou_rankers`), for the re-scorer's ``foryou`` feature; without
    them that feature is 0 in every row."""
    data = R3Data.build(history_lines, test_lines, HISTORY_LIMIT)
    prepared = prepare_personal_training(
        history_lines, data.descriptions, encoder.encode_document, encoder.encode_query, seed=seed
    )
    before, full = foryou if foryou else (None, None)
    shipped, _ = train_rescorer(prepared, foryou_train=before, foryou_full=full)
    progress(f"re-scorer trained on {len(prepared.examples)} validation queries")
    stats = prepared.train_stats
    features_of = PersonalRescorer(
        stats.items,
        stats.item_vectors,
        stats.copurchase,
        stats.baskets,
        default_weights(),
        foryou=before,
    )
    cosine_before = cosine_copurchase(stats.copurchase, stats.baskets)
    cosine_all = cosine_copurchase(shipped.copurchase, shipped.baskets)
    rates_before = rebuy_rates(history_lines[history_lines["ts"] < month_start(history_lines)])
    xs, ys, ids, held = [], [], [], []
    for ex in prepared.examples:
        if not ex.history or not ex.relevant.any():
            continue
        base = features_of.features(
            ex.query_vec,
            ex.candidate_ids,
            ex.candidate_vecs,
            ex.base_scores,
            ex.history,
            now=ex.now,
        )
        more = extra_features(
            features_of,
            cosine_before,
            ex.query_vec,
            ex.candidate_ids,
            ex.candidate_vecs,
            ex.history,
            ex.now,
            rates_before,
        )
        xs.append(np.hstack([base, more]))
        ys.append(ex.relevant)
        ids.append(ex.candidate_ids)
        held.append(is_held_out(ex.customer))

    queries = word_queries(history_lines, test_lines, data.descriptions, seed=seed)
    queries = queries[:max_test_queries] if max_test_queries else queries
    words = sorted({q.word for q in queries})
    word_vecs = dict(zip(words, encoder.encode_query([w.lower() for w in words]), strict=True))
    rates_all = rebuy_rates(history_lines)
    test_rows: list[tuple[FloatArray | None, FloatArray, npt.NDArray[np.bool_], Sequence[str]]] = []
    shipped_mrr = []
    for q in queries:
        history = data.timelines.history_at(q.customer, q.ts, data.history_limit)
        idx = shipped.vocab.indices(q.candidates)
        vecs = np.zeros((len(idx), shipped.item_vectors.shape[1]), dtype=np.float32)
        vecs[idx >= 0] = shipped.item_vectors[idx[idx >= 0]]
        base_scores = search_relevance(
            data.popularity_log(q), vecs @ word_vecs[q.word], prepared.query_weight
        )
        relevant = np.array([c in q.relevant for c in q.candidates])
        served = shipped.rescore(
            word_vecs[q.word], q.candidates, vecs, base_scores, history, now=q.ts
        ).scores
        shipped_mrr.append(mrr_at_10(served, relevant, q.candidates))
        x = None
        if history:
            x = np.hstack(
                [
                    shipped.features(
                        word_vecs[q.word], q.candidates, vecs, base_scores, history, now=q.ts
                    ),
                    extra_features(
                        shipped,
                        cosine_all,
                        word_vecs[q.word],
                        q.candidates,
                        vecs,
                        history,
                        q.ts,
                        rates_all,
                    ),
                ]
            )
        test_rows.append((x, base_scores, relevant, q.candidates))
    progress(f"{len(queries)} test queries described")

    rows = [AblationRow("shipped", [], None, float(np.mean(shipped_mrr)))]
    fit = [k for k, h in enumerate(held) if not h]
    out = [k for k, h in enumerate(held) if h]
    for variant, added in _VARIANTS.items():
        cols = _columns(added)
        w_fit = fit_weights([xs[k] for k in fit], [ys[k] for k in fit], cols)
        held_out = [mrr_at_10(xs[k][:, cols] @ w_fit, ys[k], ids[k]) for k in out]
        w_all = fit_weights(xs, ys, cols)
        test = [
            mrr_at_10(base if x is None else x[:, cols] @ w_all, rel, cands)
            for x, base, rel, cands in test_rows
        ]
        rows.append(_row(variant, added, held_out, test, progress))
    rows.extend(_tree_rows(xs, ys, ids, held, test_rows, progress))
    return rows


#: Tree variants: the added features, as for the linear rows.
_TREE_VARIANTS: dict[str, tuple[str, ...]] = {
    "trees: blend's 6": (),
    "trees: +query_similarity": ("query_similarity",),
    f"trees: all {len(FEATURES) + len(EXTRA)}": EXTRA,
}


def _tree_rows(
    xs: Sequence[FloatArray],
    ys: Sequence[npt.NDArray[np.bool_]],
    ids: Sequence[Sequence[str]],
    held: Sequence[bool],
    test_rows: Sequence[tuple[FloatArray | None, FloatArray, npt.NDArray[np.bool_], Sequence[str]]],
    progress: Callable[[str], None],
) -> list[AblationRow]:
    """Gradient-boosted trees (pointwise, "is it bought?") in place of the linear blend:
    interactions the blend cannot express; the for-you ranker's trees overfit its month."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fitted(keys: Sequence[int], cols: list[int]) -> HistGradientBoostingClassifier:
        model = HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=200,
            l2_regularization=1.0,
            random_state=0,
        )
        x = np.vstack([xs[k][:, cols] for k in keys])
        return model.fit(x, np.concatenate([ys[k] for k in keys]))

    rows = []
    fit = [k for k, h in enumerate(held) if not h]
    out = [k for k, h in enumerate(held) if h]
    for variant, added in _TREE_VARIANTS.items():
        cols = _columns(added)
        model = fitted(fit, cols)
        held_out = [
            mrr_at_10(model.predict_proba(xs[k][:, cols])[:, 1], ys[k], ids[k]) for k in out
        ]
        model = fitted(range(len(xs)), cols)
        test = [
            mrr_at_10(base if x is None else model.predict_proba(x[:, cols])[:, 1], rel, cands)
            for x, base, rel, cands in test_rows
        ]
        rows.append(_row(variant, added, held_out, test, progress))
    return rows


def fit_foryou_rankers(
    history_lines: pd.DataFrame,
    texts: Mapping[str, str],
    encoder: Encoder,
    max_minutes: float = 8.0,
) -> tuple[RankedForYou, RankedForYou]:
    """For-you rankers as ``eval recommend`` fits them (``texts``: every product's
    description, new ones too), on the history before its last month (the validation
    queries' statistics) and on all of it (the test queries')."""
    from shopsearch.indexer.training.personal_model import fit_foryou_before
    from shopsearch.indexer.training.recommender import fit_recommender, retail_interactions

    before = fit_foryou_before(history_lines, texts, encoder, max_minutes=max_minutes)
    full = fit_recommender(
        retail_interactions(history_lines), texts, encoder=encoder, max_minutes=max_minutes
    ).bundle.ranked
    if before is None or full is None:
        raise ValueError("the recommender fitted no for-you ranker (too little history)")
    return before, full


def main() -> None:  # pragma: no cover - a thin command line
    from shopsearch.indexer.retail import dev_split, item_descriptions, load_lines
    from shopsearch.retrieval.encoders import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=Path, required=True, help="online-retail lines")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--foryou",
        action="store_true",
        help="also fit two recommenders (1-3 minutes each) for the re-scorer's foryou feature",
    )
    parser.add_argument(
        "--holdout-days",
        type=float,
        help="test on the history's last N days instead of the dev month (which is not read)",
    )
    args = parser.parse_args()
    split = dev_split(load_lines(args.history))
    history, test = split.history, split.test
    if args.holdout_days is not None:
        from shopsearch.eval.recommend.cli import holdout_split

        history, test = holdout_split(history, args.holdout_days)
    encoder = Encoder(default_model_path())
    texts = item_descriptions(history, test)
    foryou = fit_foryou_rankers(history, texts, encoder) if args.foryou else None
    rows = run_r3_ablation(history, test, encoder=encoder, foryou=foryou, progress=print)
    for row in rows:
        held = "" if row.held_out is None else f"{row.held_out:.4f}"
        print(f"{row.variant:40s} held out {held:>6s}  test {row.test:.4f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
