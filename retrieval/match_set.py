"""Which products *match* a query: the result set that ``total`` and the facets count.

The dense leg always returns its k nearest products, however far they are, and BM25
matches any product that shares one word with the query. Counting every candidate of
both legs made ``cordless drill`` answer ``total: 103`` with faucets and toys in its
facets. A hybrid query's result set is therefore defined as

* the **lexical matches**: products whose title, brand, category or description hold
  at least :func:`min_should_match` of the query's distinct analysed terms (all of them
  for one- and two-term queries, half of them, rounded up, for longer ones), and
* the **dense matches**: retrieved products whose similarity to the query is at least
  the item model's threshold (:mod:`retrieval.match_calibration`, measured per model
  at build and recorded in the snapshot's manifest under ``match_set``).

The ranked list keeps the fused order; only candidates outside the set are dropped.
Measured on the Home Depot dev split (``shopsearch eval facets``), the set is less
than half the candidate list while nDCG@10 rises slightly (the dropped candidates were
mostly noise ranked below the matches).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "MATCH_RULE",
    "MATCH_RULE_VERSION",
    "MAX_MATCH_TERMS",
    "MatchSet",
    "analyze",
    "min_should_match",
    "stem_analyzer",
    "term_combinations",
]

#: How many of a query's terms a lexical match must hold, in words (for manifests/docs).
MATCH_RULE = "all terms of 1-2-term queries; half of the terms (rounded up) of longer ones"
#: Changes whenever the rule (or the dense-threshold method) changes what a query's
#: result set holds: stored evaluations made under another version are redone.
MATCH_RULE_VERSION = "match-v1"
#: Terms of one query that the lexical match rule looks at (the first ones typed): the
#: rule becomes a disjunction of conjunctions, C(n, ceil(n/2)) of them, 20 at six terms.
MAX_MATCH_TERMS = 6


@dataclass(frozen=True, slots=True)
class MatchSet:
    """A lexical backend's answer to "which of these products match, and how many do".

    ``ids``: the asked-for products that match the query (and the filters); ``total``:
    how many products of the whole index match, filters included.
    """

    ids: frozenset[str]
    total: int


def min_should_match(n_terms: int) -> int:
    """How many of ``n_terms`` distinct query terms a product must hold to match.

    Two words are usually a product type ("cordless drill"): both must be there. A
    longer query is mostly attributes and sizes ("1/2 in. drive torque wrench 250 ft"),
    where asking for every one would leave out products described otherwise.
    """
    if n_terms <= 2:
        return n_terms
    return math.ceil(n_terms / 2)


@lru_cache(maxsize=1)
def stem_analyzer() -> Any:
    """tantivy's ``en_stem`` pipeline (the text fields' analyser), built once."""
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def analyze(text: str) -> list[str]:
    """The distinct terms of ``text`` as the embedded lexical index stores them
    (split on non-alphanumerics, lower-cased, Porter-stemmed), in first-seen order,
    at most :data:`MAX_MATCH_TERMS`."""
    seen: dict[str, None] = {}
    for token in stem_analyzer().analyze(text):
        seen.setdefault(token, None)
    return list(seen)[:MAX_MATCH_TERMS]


def term_combinations(terms: Sequence[str]) -> list[tuple[str, ...]]:
    """The groups of terms of which a match must hold at least one whole group: every
    ``min_should_match(len(terms))``-subset of ``terms`` (one group: all of them, for
    one or two terms). Empty when there are no terms (nothing matches)."""
    if not terms:
        return []
    return list(itertools.combinations(terms, min_should_match(len(terms))))
