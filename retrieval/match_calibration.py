"""The dense-match threshold of an item model, measured on the catalog it indexes.

Similarities of two-tower models have no common scale: the bundled MiniLM puts a good
match near 0.6 and an unrelated product near 0.2, a fine-tuned tower moves both. The
threshold above which a dense neighbour counts as a match (:mod:`retrieval.match_set`)
is therefore measured per model and catalog, without judged queries (a new shop has
none):

1. Sample products and take a two-word phrase of each title as a pseudo-query (a
   product type, a brand and a noun, the way shoppers type).
2. Its lexical matches (every term present, :meth:`LexicalIndex.match_set`) are products
   a shopper would accept for it; their similarities to the encoded pseudo-query are the
   positives.
3. The threshold is a low percentile (:data:`POSITIVE_PERCENTILE`) of the positives: a
   dense neighbour at least as close as most products that hold the words matches too.

On the Home Depot dev split the judged-relevant products' 25th percentile is 0.50 for
the base MiniLM and 0.45 for the fine-tuned towers, and those thresholds are the best
of a sweep (README, "Honest totals and facets"); this procedure measures 0.50 and 0.45
from the catalog alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.types import Product

__all__ = ["MATCH_SET_KEY", "POSITIVE_PERCENTILE", "calibrate_dense_threshold"]

#: The snapshot manifest's key of the calibration (see ``indexer/match_threshold.py``).
MATCH_SET_KEY = "match_set"

log = logging.getLogger(__name__)

#: Percentile of the positives' similarities taken as the threshold.
POSITIVE_PERCENTILE = 50.0
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")


def _pseudo_query(title: str, rng: np.random.Generator) -> str | None:
    """Two consecutive words (3+ letters each) of ``title``, or None when it has none."""
    words = _WORD.findall(title)
    if len(words) < 2:
        return None
    start = int(rng.integers(0, len(words) - 1))
    return f"{words[start]} {words[start + 1]}"


def calibrate_dense_threshold(
    products: Sequence[Product],
    row_of: dict[str, int],
    encode: Callable[[list[str]], npt.NDArray[np.float32]],
    vectors_of: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]],
    lexical: LexicalIndex,
    *,
    samples: int = 256,
    per_query: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the dense-match threshold (see the module docstring).

    ``encode`` turns texts into query vectors (one row each, the query tower);
    ``vectors_of`` gives the stored item vectors of rows; ``row_of`` maps product ids to
    rows. Returns the manifest's ``match_set`` entry: ``dense_threshold`` (None when the
    catalog gave no positives, e.g. titles of one word: then only lexical matches count)
    and how it was measured. Deterministic for a catalog, model and ``seed``.
    """
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(products), size=min(samples, len(products)), replace=False)
    queries: list[tuple[str, str]] = []  # (pseudo-query, source product id)
    for i in picks.tolist():
        text = _pseudo_query(products[i].title, rng)
        if text is not None:
            queries.append((text, products[i].id))
    positives: list[float] = []
    if queries:
        qvecs = encode([q for q, _ in queries])
        for (text, source), qvec in zip(queries, qvecs, strict=True):
            hits = lexical.search(text, per_query)
            found = lexical.match_set(text, [h.id for h in hits]).ids - {source}
            rows = np.array(sorted(row_of[p] for p in found if p in row_of), dtype=np.int64)
            if len(rows):
                positives.extend((vectors_of(rows) @ qvec.reshape(-1)).tolist())
    threshold = (
        round(float(np.percentile(positives, POSITIVE_PERCENTILE)), 4) if positives else None
    )
    log.info(
        "dense-match threshold %s from %d positives of %d pseudo-queries",
        threshold,
        len(positives),
        len(queries),
    )
    return {
        "dense_threshold": threshold,
        "method": f"p{POSITIVE_PERCENTILE:g} of lexical matches' similarity to title phrases",
        "pseudo_queries": len(queries),
        "positives": len(positives),
        "seed": seed,
    }
